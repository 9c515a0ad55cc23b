"""Evaluation of a finished run's selected models, restored with orbax.

`evaluate_workdir` is what `python -m experiments.evaluate` runs. It builds
the mesh, data arrays and compiled prediction function exactly as training
does (`evaluation.py`), so its numbers equal those that training wrote to
results.json, bit for bit, on the same devices.
"""

import dataclasses
import os

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcur_jax import calibration
from mcur_jax import checkpoint
from mcur_jax import combos
from mcur_jax import evaluation
from mcur_jax import regime
from mcur_jax import report
from mcur_jax import run as run_lib
from mcur_jax import schema
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib


def fold_workdirs(workdir: str, data_dir: str | None = None) -> list[str]:
  """The per-fold workdirs of a cross-validated run ([] for a single run);
  `data_dir` as for `checkpoint.restore_for_inference`.

  Raises:
    validate.ConfigError: the run is unfinished (a fold of its dataset
      without results.json): pooling some folds, or a fold's model before
      its last epoch, would not be the run's numbers.
  """
  if os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    return []
  started = workdir_lib.started_folds(workdir)
  if not started:
    return []
  manifest = workdir_lib.run_manifest(
      started[0], checkpoint.load_config(started[0]).data_dir, data_dir)
  folds = ([os.path.join(workdir, schema.fold_name(v))
            for v in manifest.folds["values"]] if manifest.folds else started)
  unfinished = [os.path.basename(d) for d in folds if not os.path.exists(
      os.path.join(d, workdir_lib.RESULTS_FILE))]
  if unfinished:
    raise validate.ConfigError(
        workdir, f"an unfinished cross-validated run ({', '.join(unfinished)}"
        " without results.json): rerun its training command to finish it, "
        "or pass a finished fold's workdir")
  return folds


def check_finished(workdir: str) -> None:
  """Raises validate.ConfigError unless `workdir` holds a single run (its
  config.json) that has finished: before its last epoch the checkpoint
  holds the best model so far, not the run's."""
  if not os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_FILE)):
    raise validate.ConfigError("--workdir", f"{workdir}: no "
                               f"{workdir_lib.CONFIG_FILE}, not the workdir "
                               "of a training run")
  if not os.path.exists(os.path.join(workdir, workdir_lib.RESULTS_FILE)):
    raise validate.ConfigError(
        workdir, f"an unfinished run (no {workdir_lib.RESULTS_FILE}): its "
        "checkpoint holds the best model so far, not the run's; rerun its "
        "training command to finish it")


def run_data(workdir: str, config, data_dir: str | None = None):
  """The prepared data the run in `workdir` trained on, as it trained on it
  (`run.load_data`): in config.data_dir, or in `data_dir` (the same data
  moved, or on another machine); checked to be the run's data
  (`workdir.check_data`)."""
  where = data_dir or config.data_dir
  if not os.path.exists(os.path.join(where, schema.MANIFEST)):
    raise validate.ConfigError(
        "--data_dir", f"{where}: not a prepared directory" if data_dir else
        f"the prepared data of the run in {workdir}, {where}, is not there "
        "(moved, or another machine): give --data_dir where it is now")
  workdir_lib.check_data(workdir, where, "give --data_dir with the run's "
                         "data, or train again")
  return run_lib.load_data(config, where)


@dataclasses.dataclass
class Restored:
  """A finished run's selected models, ready to predict."""

  config: object
  # The run's data's manifest (dims, task, classes), from the workdir.
  manifest: schema.Manifest
  mesh: jax.sharding.Mesh
  # Leading axis: the members, as `regime.members` orders them.
  params: object
  members: regime.Members
  # [3] bool: the modalities the data has.
  present: list
  # `evaluation.make_predict` for the members' combinations.
  predict: object

  @classmethod
  def of(cls, workdir: str, data_dir: str | None = None) -> "Restored":
    """Restores the single (or one fold's) finished run in `workdir`;
    `data_dir` as `checkpoint.restore_for_inference` takes it."""
    check_finished(workdir)
    config = checkpoint.load_config(workdir)
    mesh = run_lib.make_mesh(config.num_devices)
    graphdef, params, config, manifest = checkpoint.restore_for_inference(
        workdir, NamedSharding(mesh, P()), data_dir)
    present = validate.present_modalities(manifest)
    members = regime.members(config, combos.realisable(present))
    return cls(config=config, manifest=manifest, mesh=mesh, params=params,
               members=members, present=present,
               predict=evaluation.make_predict(
                   graphdef, mesh, len(members.combos),
                   config.compute_dtype))


def evaluate_workdir(workdir: str, split: str = "test",
                     protocol: str = "all",
                     data_dir: str | None = None) -> dict:
  """Evaluates a run's selected models on `split` under `protocol` (fixed |
  missing_rate | all); returns results.json's fields for them. A
  cross-validated workdir (fold<k>/ subdirectories) is evaluated fold by
  fold and pooled over folds and seeds, as training does. `data_dir`: the
  run's data, where it is now if it moved (`run_data`)."""
  if split not in ("valid", "test"):
    raise validate.ConfigError("--split", f"{split!r}: valid or test")
  if protocol not in evaluation.PROTOCOLS:
    raise validate.ConfigError("--protocol", f"{protocol!r} not in "
                               f"{evaluation.PROTOCOLS}")
  folds = fold_workdirs(workdir, data_dir)
  if folds:
    return report.combine_folds([evaluate_workdir(d, split, protocol,
                                                  data_dir) for d in folds])
  run = Restored.of(workdir, data_dir)
  config, manifest, members = run.config, run.manifest, run.members
  dataset = run_data(workdir, config, data_dir)
  inputs = evaluation.Inputs.of(getattr(dataset, split), config, run.mesh)
  found = evaluation.run(config, run.predict, run.params, inputs, members,
                         manifest.task, run.present, protocol)
  if "fixed" in found:
    names = [combos.NAMES[c] for c in members.combos]
    calibration.add_scores(found["fixed"], run_calibration(
        workdir, config, manifest.task, run.predict, run.params, members,
        lambda: dataset.valid, run.mesh), found["outputs"],
                           inputs.split.label, names)
  return report.evaluation_results(
      config, manifest, manifest.task, split, found,
      source=os.path.abspath(checkpoint.directory(workdir)))


def run_calibration(workdir: str, config, task: str, predict, params,
                    members, valid_split, mesh) -> dict:
  """The run's calibration.json; a run finished before calibration existed
  gets it fitted now on its validation outputs, as training would have
  (`valid_split()` gives the validation split, read only then)."""
  fitted = calibration.load(workdir)
  if fitted is None:
    valid = valid_split()
    _, outputs = evaluation.fixed(predict, params,
                                  evaluation.Inputs.of(valid, config, mesh),
                                  members, task, config.task_loss)
    fitted = calibration.fit_run(task, config.task_loss, outputs, valid.label,
                                 [combos.NAMES[c] for c in members.combos])
  return fitted
