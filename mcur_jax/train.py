"""`train_and_evaluate(config, workdir)`: the one MCUR training loop.

Three stages: `run.Run.setup` (data on device, config checks, members,
model, optimizer: one state per member, stacked and trained with
`jax.vmap`; a member is a seed, or a (seed, combination) pair in the
per-condition regime, see `regime.py`) -> `fit.fit` (resume, epochs,
selection of each member's best epoch on validation, checkpoints, a stop
on request) -> `finish` (evaluation of the selected models under every
protocol, `evaluation.py`, test once and at the end; calibration,
results.json, results.md and figures). A dataset with folds runs the
three once per fold. One run at a time holds a workdir (`workdir_lock.py`).

* An epoch (`epoch.py`) is one compiled `lax.scan` over batches of
  windows drawn on device from (seed, epoch) (`groups.train_plan`: groups
  cut into windows of at most `context_window` utterances at moving cut
  points, shuffled, laid end to end into steps); each step draws every
  utterance's modality combination (or one per window, `combo_draw`) from
  a key of (seed, epoch, step). Masks and epochs are data, so the epoch
  and evaluation functions compile once per run (`run.COMPILES` counts
  traces).
* Data parallel: a ("data",) mesh, the data and parameters replicated, each
  batch sharded over "data"; XLA adds the gradient all-reduce, and MCB-CL
  sees the global batch (the context reads across the devices' shards of
  a window).
"""

import json
import os
import time

import jax
import ml_collections

from mcur_jax import calibration
from mcur_jax import combos
from mcur_jax import evaluation
from mcur_jax import figures
from mcur_jax import fit as fit_lib
from mcur_jax import report
from mcur_jax import run as run_lib
from mcur_jax import schema
from mcur_jax import tensorboard
from mcur_jax import tfrecord
from mcur_jax import timing
from mcur_jax import transfer
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib
from mcur_jax import workdir_lock

# Bad input (config, data, workdir): the entry points report it in one
# `error:` line with exit status 2, no traceback.
INPUT_ERRORS = (validate.ConfigError, schema.DataError,
                tfrecord.CorruptRecordError)
# The failures of one run that are its own, as opposed to bugs: bad input
# and divergence (exit status 3). A sweep records them and goes on to its
# next point.
RUN_FAILURES = INPUT_ERRORS + (fit_lib.TrainingDiverged,)


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
    fit.TrainingDiverged: a loss became NaN/inf (the last good checkpoint
      and the logs stay).
    fit.Interrupted: a stop was requested (`fit.STOP_REQUESTED`, Ctrl-C).
    validate.ConfigError: a config value that cannot run, a config or data
      that differ from those of the checkpoints it would resume
      (`workdir.check_resume`), a workdir another run holds
      (`workdir_lock.WorkdirBusy`), checkpoints that are all damaged or a
      disk too full to save one (`checkpoint.CheckpointError`).
    schema.DataError, tfrecord.CorruptRecordError: bad prepared data.
  """
  if not config.data_dir:
    raise validate.ConfigError(
        "config.data_dir", "empty: name a prepared directory (python -m "
        "data_prep.convert makes one; the entry points find "
        "prepared/<dataset>, else generate synthetic data)")
  # Absolute, so that the run's config.json finds its data from anywhere.
  config.data_dir = os.path.abspath(config.data_dir)
  with workdir_lock.lock(workdir):
    manifest = schema.Manifest.load(config.data_dir)
    all_folds = bool(manifest.folds) and not config.fold
    _check_kind(workdir, all_folds)
    if not all_folds:
      return _train_fold(config, workdir)
    runs = []
    for fold in manifest.folds["values"]:
      if runs and fit_lib.stop_requested():
        raise fit_lib.Interrupted(
            f"stopped before fold {fold}: {workdir} keeps the folds done, "
            "and the same command resumes")
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
      run = run_lib.Run.setup(config, workdir)
    with phases.phase("train"):
      state = fit_lib.fit(run, phases)
    return finish(run, state, phases, compiled)


def finish(run: run_lib.Run, state: dict, phases: timing.Phases,
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
      compiles=dict(run_lib.COMPILES), padding=run.padding(),
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

