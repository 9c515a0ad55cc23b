"""`fit(run)`: the epochs of one run, and how a run stops early.

Each epoch is one compiled call (`epoch.py`). After it every member is
evaluated on validation under the combinations it serves (all the
dataset can realise in the mixed regime), and its best parameters by
their average headline metric are kept in the state (with `ema_decay`,
those of the moving average); the epoch is logged to metrics.jsonl, the
progress line and, with `config.tensorboard`, TensorBoard. The state is
checkpointed with orbax; a run started on a workdir with checkpoints
resumes from the latest intact one (`checkpoint.resume`), if its config
and data are those the checkpoints were made with
(`workdir.check_resume`), and ends with exactly the parameters of an
uninterrupted run.

A run stops early in two ways, each keeping its last good checkpoint and
its logs: a loss gone NaN/inf (`TrainingDiverged`), or a stop requested
(`STOP_REQUESTED`, set on Ctrl-C: the epoch finishes and is saved, then
`Interrupted`).
"""

import os
import threading
import time

import jax
import numpy as np

from mcur_jax import checkpoint
from mcur_jax import epoch as epoch_lib
from mcur_jax import evaluation
from mcur_jax import metrics
from mcur_jax import progress
from mcur_jax import report
from mcur_jax import run as run_lib
from mcur_jax import tensorboard
from mcur_jax import timing
from mcur_jax import transfer
from mcur_jax import workdir as workdir_lib


class TrainingDiverged(RuntimeError):
  """A training loss became NaN or inf; the last good checkpoint is kept."""


class Interrupted(KeyboardInterrupt):
  """A run stopped because a stop was requested (`STOP_REQUESTED`): at the
  end of an epoch, with a checkpoint of it, or before its first epoch, its
  next fold or the sweep's next point, with what was saved before. A
  KeyboardInterrupt, so that a sweep stops too instead of recording a
  failed point."""


# Set to stop the run at the end of its current epoch, after saving it
# (or before its next fold or sweep point); `launch.execute` sets it on
# Ctrl-C. Process 0's flag decides for all (`stop_requested`).
STOP_REQUESTED = threading.Event()


def stop_requested() -> bool:
  """`STOP_REQUESTED` of process 0, on every process (a collective with
  several processes: all of them call it at the same points)."""
  return workdir_lib.agree(STOP_REQUESTED.is_set())


def _finite(stats) -> bool:
  return all(np.isfinite(v).all() for v in stats.values())


def _fold_label(config, manifest) -> str:
  """The run header's fold, e.g. ' fold 2/5 (test: session 2)'; '' for a
  dataset without folds."""
  if not manifest.folds or not config.fold:
    return ""
  values = manifest.folds["values"]
  return (f" fold {values.index(config.fold) + 1}/{len(values)} (test: "
          f"{manifest.folds['key']} {config.fold})")


def _header(run: run_lib.Run, start: int) -> str:
  """The line a run (or fold) starts with: its data, models and devices,
  and where it starts from."""
  config, dataset = run.config, run.dataset
  models = len(run.members)
  return (
      f"{dataset.manifest.dataset}{_fold_label(config, dataset.manifest)}: "
      f"train {len(dataset.train)}, valid {len(dataset.valid)}, test "
      f"{len(dataset.test)} utterances from {config.data_dir} "
      f"({dataset.manifest.format}); seeds {list(config.seeds)}, "
      f"{config.regime} regime ({models} model{'s' if models > 1 else ''}); "
      f"{run.mesh.devices.size} device(s)"
      + (f" in {jax.process_count()} processes"
         if jax.process_count() > 1 else "") + "; "
      + ("from scratch" if not start else f"resuming after epoch {start}"
         if start < config.num_epochs else
         f"its {start} epoch{'s' * (start > 1)} done, evaluating"))


def _diverged(run: run_lib.Run, stats: dict, epoch: int,
              last: int | None) -> TrainingDiverged:
  """The error of a loss gone NaN/inf in `epoch` (0-based): which members,
  and what is kept (the checkpoint after epoch `last`, if any, and the
  logs)."""
  bad = ", ".join(
      " ".join(f"{k} {v}" for k, v in run.members.describe(i).items())
      for i in np.flatnonzero(~np.isfinite(stats["loss"])))
  kept = (f"the last good checkpoint (after epoch {last}) in "
          f"{checkpoint.directory(run.workdir)} and " if last else
          "no checkpoint yet (see checkpoint_every and checkpoint_seconds); ")
  return TrainingDiverged(f"epoch {epoch + 1}: training loss is NaN/inf for "
                          f"{bad}; stopped. Kept: {kept}the logs in "
                          f"{run.workdir}.")


def fit(run: run_lib.Run, phases: timing.Phases | None = None) -> dict:
  """Trains from the latest checkpoint (or from scratch) to the last epoch;
  selects each member's best epoch on validation; returns the final
  state. Checkpoints every `checkpoint_every` epochs once
  `checkpoint_seconds` have passed since the last save (process 0's clock
  decides for all), and after the last epoch; with `STOP_REQUESTED` set,
  saves at the end of the epoch and raises `Interrupted` (before the first
  epoch: raises at once; in the last: finishes). `phases` gets
  the parts of training (`train/epochs`, `train/validate`, `train/log`,
  `train/checkpoint`; `timing.summary`)."""
  phases = phases or timing.Phases()
  config, workdir, state = run.config, run.workdir, run.state
  dataset, members = run.dataset, run.members
  say = print if run.main_process else lambda *_: None
  if run.main_process:
    checkpoint.remove_partial_deletions(workdir)
  mngr = checkpoint.manager(workdir, config)
  try:
    if mngr.all_steps():
      workdir_lib.check_resume(workdir, config)
    start, state = checkpoint.resume(mngr, state, log=say)
  except BaseException:
    mngr.close()
    raise
  if start:
    note = workdir_lib.check_devices(workdir, run.mesh.devices.size)
    if note:
      say(note)
  workdir_lib.record_start(workdir, config, run.mesh.devices.size,
                          dataset.stats)
  log = report.MetricsLog(os.path.join(workdir, workdir_lib.METRICS_FILE),
                          start, enabled=run.main_process)
  learning_rates = epoch_lib.epoch_learning_rates(config, run.steps)
  say(_header(run, start))
  valid_masks = evaluation.fixed_masks(dataset.valid.available,
                                       members.combos)
  # The members' best validation scores so far, kept on the host beside
  # state["best_metric"] and updated as it is, so that choosing the improved
  # members costs no transfer per epoch: a resumed run's from its
  # checkpoint, a new run's -inf as `epoch_lib.init_state` sets them.
  best = (transfer.to_host(state["best_metric"]) if start else
          np.full(state["best_metric"].shape, -np.inf, np.float32))
  bar = progress.Progress(config.num_epochs, enabled=run.main_process,
                          best=float(np.max(best)))
  # No event file for a run whose epochs are all done (a rerun to finish).
  board = tensorboard.EpochLog(workdir, start, metrics.HEADLINE[run.task],
                               enabled=run.main_process and config.tensorboard
                               and start < config.num_epochs)
  saved = time.monotonic()
  try:
    if start < config.num_epochs and stop_requested():  # During setup.
      raise Interrupted(f"stopped before epoch {start + 1}: {workdir} keeps "
                        "its checkpoints and logs, and the same command "
                        "resumes from them")
    for epoch in range(start, config.num_epochs):
      with phases.phase("train/epochs"):
        state, stats = run.train_epoch(state, run.train, run.tables,
                                       run.member_data, epoch)
        stats = transfer.to_host(stats)
      if not _finite(stats):
        raise _diverged(run, stats, epoch, mngr.latest_step())
      with phases.phase("train/validate"):
        pred = run.predict(epoch_lib.selected_params(state),
                           run.inputs["valid"], valid_masks,
                           keys=("pred",))["pred"]
        valid, score = evaluation.member_scores(run.task, pred, dataset.valid,
                                                members)
        improved = epoch_lib.improved_members(score, best, config.selection)
        kept = score.astype(np.float32)  # The precision of best_metric.
        state = run.update_best(state, improved, kept, epoch)
        best = np.where(improved, kept, best)
      with phases.phase("train/log"):
        board.write(log.write(epoch + 1, members, stats, valid, score,
                              run.task, learning_rates[epoch]))
        bar.update(epoch + 1, stats, score, metrics.HEADLINE[run.task])
      due = (epoch + 1) % config.checkpoint_every == 0 and workdir_lib.agree(
          time.monotonic() - saved >= config.checkpoint_seconds)
      stop = stop_requested()
      if due or stop or epoch + 1 == config.num_epochs:
        with phases.phase("train/checkpoint"):
          checkpoint.save(mngr, epoch + 1, state)
        saved = time.monotonic()
      if stop and epoch + 1 < config.num_epochs:
        raise Interrupted(f"stopped after epoch {epoch + 1}: {workdir} "
                          "keeps its checkpoint and its logs, and the same "
                          "command resumes from them")
  finally:
    bar.close()
    board.close()
    mngr.close()
  return state
