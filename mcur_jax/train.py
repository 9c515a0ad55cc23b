"""`train_and_evaluate(config, workdir)`: the one MCUR training loop.

Three stages: `Run.setup` (data on device, config checks, members, model,
optimizer: one state per member, stacked and trained with `jax.vmap`; a
member is a seed, or a (seed, combination) pair in the per-condition
regime, see `regime.py`) -> `fit` (resume, epochs, selection,
checkpoints) -> `finish` (evaluation of the selected models under every
protocol, `evaluation.py`; results.json, results.md and figures). Every
epoch is logged to metrics.jsonl and, with `config.tensorboard`, to
TensorBoard (`tensorboard.py`).

* An epoch (`epoch.py`) is one compiled `lax.scan` over batches of
  windows drawn on device from (seed, epoch) (`groups.train_plan`: groups
  cut into windows of at most `context_window` utterances at moving cut
  points, shuffled, laid end to end into steps); each step draws every
  utterance's modality combination (or one per window, `combo_draw`) from
  a key of (seed, epoch, step). Masks and epochs are data, so the epoch
  and evaluation functions compile once per run (`COMPILES` counts
  traces).
* Data parallel: a ("data",) mesh, the data and parameters replicated, each
  batch sharded over "data"; XLA adds the gradient all-reduce, and MCB-CL
  sees the global batch (the context reads across the devices' shards of
  a window).
* Model selection: after every epoch each member is evaluated on validation
  under the combinations it serves (all the dataset can realise in the
  mixed regime); its best
  parameters by their average headline metric are kept in the state. With
  `ema_decay` the evaluated and kept parameters are the moving average.
  Test is evaluated once, at the end, with the kept parameters.
* The state is checkpointed with orbax every `checkpoint_every` epochs
  once `checkpoint_seconds` have passed since the last save, and after the
  last epoch; a run started on a workdir with checkpoints resumes from the
  latest intact one (`checkpoint.resume`), if its config and data are
  those the checkpoints were made with (`workdir.check_resume`), and ends
  with exactly the parameters of an uninterrupted run. One run at a time
  holds a workdir (`workdir.lock`).
"""

import collections
import dataclasses
import json
import os
import threading
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcur_jax import calibration
from mcur_jax import checkpoint
from mcur_jax import combos
from mcur_jax import data as data_lib
from mcur_jax import epoch as epoch_lib
from mcur_jax import evaluation
from mcur_jax import figures
from mcur_jax import groups
from mcur_jax import metrics
from mcur_jax import model as model_lib
from mcur_jax import progress
from mcur_jax import regime
from mcur_jax import report
from mcur_jax import schema
from mcur_jax import tensorboard
from mcur_jax import tfrecord
from mcur_jax import timing
from mcur_jax import transfer
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib

# Trace counts of the compiled functions ("train_epoch", "evaluate"): each
# must be 1 per run whatever the combinations, epochs or seeds.
COMPILES = collections.Counter()


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


# Bad input (config, data, workdir): the entry points report it in one
# `error:` line with exit status 2, no traceback.
INPUT_ERRORS = (validate.ConfigError, schema.DataError,
                tfrecord.CorruptRecordError)
# The failures of one run that are its own, as opposed to bugs: bad input
# and divergence (exit status 3). A sweep records them and goes on to its
# next point.
RUN_FAILURES = INPUT_ERRORS + (TrainingDiverged,)


def load_data(config, data_dir: str | None = None) -> data_lib.Dataset:
  """The data of a run as its config prepares it (fold, validation part,
  per-speaker normalisation); `data_dir` instead of the config's own
  directory."""
  return data_lib.load(data_dir or config.data_dir, fold=config.fold or None,
                       speaker_norm=validate.modalities(config, "speaker_norm"),
                       validation=config.validation)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D ("data",) mesh over the first `num_devices` devices (0 = all)."""
  devices = jax.devices()
  if num_devices:
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.array(devices), ("data",))


def check_config(config, manifest) -> jax.sharding.Mesh:
  """Raises validate.ConfigError for the first field of `config` that cannot
  run on the data of `manifest` with the devices here (what a run checks
  before it builds anything); returns the run's mesh."""
  validate.check_devices(config, jax.device_count(), jax.process_count())
  mesh = make_mesh(config.num_devices)
  validate.check(config, manifest, mesh.devices.size)
  return mesh


def _finite(stats) -> bool:
  return all(np.isfinite(v).all() for v in stats.values())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains every seed of `config` on `config.data_dir` (made absolute);
  writes `WORKDIR/{config.json, data.json, metrics.jsonl, checkpoints/,
  model_inputs/, calibration.json, results.json, results.md}`, `tb/` and
  the figures when the config asks (docs/evaluation.md lists them), and
  returns the results dict. The entry points add what a call from Python
  does not: the dataset taken from the data's manifest, prepared/<dataset>
  or synthetic data when no data_dir is given, and JAX's persistent
  compilation cache (`compile_cache.configure`, which a call from Python
  can make too).

  For a dataset with folds (IEMOCAP) and `config.fold` 0, every fold is
  trained in `WORKDIR/fold<k>/` and `WORKDIR/results.json` pools them (mean
  and std over folds and seeds).

  Raises:
    TrainingDiverged: a loss became NaN/inf (the last good checkpoint and
      the logs stay).
    validate.ConfigError: a config value that cannot run, a config or data
      that differ from those of the checkpoints it would resume
      (`workdir.check_resume`), a workdir another run holds
      (`workdir.WorkdirBusy`), checkpoints that are all damaged or a disk
      too full to save one (`checkpoint.CheckpointError`).
    schema.DataError, tfrecord.CorruptRecordError: bad prepared data.
  """
  if not config.data_dir:
    raise validate.ConfigError(
        "config.data_dir", "empty: name a prepared directory (python -m "
        "data_prep.convert makes one; the entry points find "
        "prepared/<dataset>, else generate synthetic data)")
  # Absolute, so that the run's config.json finds its data from anywhere.
  config.data_dir = os.path.abspath(config.data_dir)
  with workdir_lib.lock(workdir):
    manifest = schema.Manifest.load(config.data_dir)
    all_folds = bool(manifest.folds) and not config.fold
    _check_kind(workdir, all_folds)
    if not all_folds:
      return _train_fold(config, workdir)
    runs = []
    for fold in manifest.folds["values"]:
      if runs and stop_requested():
        raise Interrupted(f"stopped before fold {fold}: {workdir} keeps the "
                          "folds done, and the same command resumes")
      fold_config = of_fold(config, fold)
      fold_dir = os.path.join(workdir, schema.fold_name(fold))
      runs.append(_finished_fold(fold_config, fold_dir) or
                  _train_fold(fold_config, fold_dir))
    results = report.combine_folds(runs)
    publish(workdir, config, results,
            lambda: figures.write_summary_figures(workdir, results))
    return results


def of_fold(config, fold: int) -> ml_collections.ConfigDict:
  """A copy of a cross-validated run's config for one of its folds."""
  fold_config = ml_collections.ConfigDict(config.to_dict())
  fold_config.fold = fold
  return fold_config


def _check_kind(workdir: str, all_folds: bool) -> None:
  """Refuses a workdir that holds the other kind of run: a single run (or
  fold) writes WORKDIR/config.json, a cross-validated one WORKDIR/fold<k>/,
  and the two in one workdir would overwrite each other's results."""
  single = os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE))
  folds = workdir_lib.started_folds(workdir)
  if all_folds and single:
    raise validate.ConfigError(
        "--workdir", f"{workdir} holds a single run (its config.json), not "
        "the folds of fold=0: use a new --workdir")
  if not all_folds and folds:
    raise validate.ConfigError(
        "--workdir", f"{workdir} holds a cross-validated run ("
        f"{', '.join(os.path.basename(d) for d in folds)}): train "
        "one fold in a new --workdir, or rerun fold=0 to resume all")


def _finished_fold(config, workdir: str) -> dict | None:
  """The results of a fold that finished before with this config (checked
  as a resume is, `workdir.check_resume`, and no outputs asked for that it
  lacks, `workdir.new_outputs`), read instead of restoring and evaluating
  it again (the same numbers); None to run it. A job of several processes
  runs it (its other processes need not see the files). Results written
  by an earlier version of this code are read as they are, as a resume
  continues its checkpoints: remove a fold's results.json to evaluate it
  with this one."""
  path = os.path.join(workdir, workdir_lib.RESULTS_FILE)
  if jax.process_count() > 1 or not os.path.exists(path):
    return None
  if workdir_lib.new_outputs(workdir_lib.check_resume(workdir, config),
                             config):
    return None
  with open(path) as f:
    results = json.load(f)
  print(f"{workdir}: finished before with this config; its results read")
  return results


def _train_fold(config, workdir: str) -> dict:
  """train_and_evaluate for one fold (or a dataset with fixed splits)."""
  phases = timing.Phases()
  with timing.CompileSeconds().active() as compiled:
    with phases.phase("setup"):
      run = Run.setup(config, workdir)
    with phases.phase("train"):
      state = fit(run, phases)
    return finish(run, state, phases, compiled)


@dataclasses.dataclass
class Run:
  """Everything one run (one fold) trains and evaluates with."""

  config: ml_collections.ConfigDict
  workdir: str
  dataset: data_lib.Dataset
  mesh: jax.sharding.Mesh
  members: regime.Members
  # The modalities the dataset has ([3] bool).
  present: list
  # Device data: the training table and its window tables, the members,
  # and the validation and test splits in their evaluation windows.
  train: dict
  tables: dict
  member_data: dict
  inputs: dict
  # Compiled functions.
  train_epoch: object
  predict: object
  update_best: object
  state: dict
  started: float

  @property
  def task(self) -> str:
    return self.dataset.manifest.task

  @property
  def main_process(self) -> bool:
    return jax.process_index() == 0

  @property
  def steps(self) -> int:
    """Training steps per epoch."""
    return groups.train_steps(len(self.dataset.train), self.config.batch_size)

  @classmethod
  def setup(cls, config, workdir: str) -> "Run":
    """Data, checks, members, model, optimizer and the initial state."""
    started = time.time()
    COMPILES.clear()
    dataset = load_data(config)
    manifest = dataset.manifest
    mesh = check_config(config, manifest)
    # After the checks: a refused fold=0 run leaves no empty fold folder.
    os.makedirs(workdir, exist_ok=True)
    repl = NamedSharding(mesh, P())
    present = validate.present_modalities(manifest)
    members = regime.members(config, combos.realisable(present))
    train, tables = epoch_lib.training_inputs(dataset.train, config, repl)
    inputs = {s: evaluation.Inputs.of(getattr(dataset, s), config, mesh)
              for s in ("valid", "test")}
    graphdef, init_params = model_lib.create(config, manifest.dims,
                                             manifest.num_classes)
    tx = epoch_lib.make_optimizer(
        config, groups.train_steps(len(dataset.train), config.batch_size))
    member_data = transfer.to_device(
        {"seeds": members.seeds, "draw_weights": members.draw_weights}, repl)
    state = epoch_lib.init_state(init_params, tx, members.seeds, repl,
                                 ema=bool(config.ema_decay))
    return cls(
        config=config, workdir=workdir, dataset=dataset, mesh=mesh,
        members=members, present=present, train=train,
        tables=tables, member_data=member_data, inputs=inputs,
        train_epoch=epoch_lib.make_train_epoch(
            config, graphdef, tx, manifest.task, mesh, len(dataset.train),
            COMPILES),
        predict=evaluation.make_predict(graphdef, mesh, len(members.combos),
                                        config.compute_dtype, COMPILES),
        update_best=epoch_lib.make_update_best(mesh), state=state,
        started=started)


def _fold_label(config, manifest) -> str:
  """The run header's fold, e.g. ' fold 2/5 (test: session 2)'; '' for a
  dataset without folds."""
  if not manifest.folds or not config.fold:
    return ""
  values = manifest.folds["values"]
  return (f" fold {values.index(config.fold) + 1}/{len(values)} (test: "
          f"{manifest.folds['key']} {config.fold})")


def _header(run: Run, start: int) -> str:
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


def _diverged(run: Run, stats: dict, epoch: int,
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


def fit(run: Run, phases: timing.Phases | None = None) -> dict:
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


def finish(run: Run, state: dict, phases: timing.Phases,
           compiled: timing.CompileSeconds) -> dict:
  """Evaluates the selected models on valid (fixed protocol) and test (all
  protocols), fits their calibration on valid (`calibration.py`); writes
  calibration.json, the figures, results.md and, last, results.json (with
  the run's `timing.summary`)."""
  config = run.config
  best = state["best_params"]
  found = {}
  with phases.phase("evaluate"):
    for split in ("valid", "test"):
      with phases.phase(f"evaluate/{split}"):
        found[split] = evaluation.run(
            config, run.predict, best, run.inputs[split], run.members,
            run.task, run.present, "all" if split == "test" else "fixed")
  names = [combos.NAMES[c] for c in run.members.combos]
  with phases.phase("calibrate"):
    fitted = calibration.fit_run(run.task, config.task_loss,
                                 found["valid"]["outputs"],
                                 run.dataset.valid.label, names)
    for split in ("valid", "test"):
      calibration.add_scores(found[split]["fixed"], fitted,
                             found[split]["outputs"],
                             getattr(run.dataset, split).label, names)
  results = report.results(
      config=config, manifest=run.dataset.manifest, task=run.task,
      found=found,
      selected_epoch=report.selected_epochs(
          run.members, transfer.to_host(state["best_epoch"]) + 1),
      compiles=dict(COMPILES), padding=padding(run),
      seconds=time.time() - run.started,
      timing=timing.summary(phases, compiled))
  if run.main_process:
    calibration.write(run.workdir, fitted)
  publish(run.workdir, config, results, lambda: figures.write_figures(
      run.workdir, results, config, found["test"], run.dataset.test, fitted,
      run.dataset.manifest.classes))
  return results


def publish(workdir: str, config, results: dict, draw_figures) -> None:
  """Process 0 writes a finished run's (or fold=0 run's pooled) outputs:
  TensorBoard's hparams row, the figures (`draw_figures()`, with
  config.plots), then results.json and results.md, which mark the run
  finished (a sweep skips it), and prints its table."""
  if jax.process_index() != 0:
    return
  if config.tensorboard:
    tensorboard.write_hparams(workdir, config, results)
  if config.plots:
    draw_figures()
  report.write_results(workdir, results)
  print(report.table(results))


def padding(run: Run) -> dict[str, float]:
  """The fraction of batch positions that hold no utterance: per training
  epoch, and in the valid and test evaluation chunks."""
  n = len(run.dataset.train)
  return {"train": round(1 - n / (run.steps * run.config.batch_size), 4),
          **{s: round(run.inputs[s].layout.padding(), 4)
             for s in ("valid", "test")}}


