"""Evaluation of a finished run's selected models, restored with orbax.

`evaluate_workdir` is what `python -m experiments.evaluate` runs. It builds
the mesh, data arrays and compiled prediction function exactly as training
does (`evaluation.py`), so its numbers equal those that training wrote to
results.json, bit for bit, on the same devices.
"""

import glob
import os

from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcur_jax import checkpoint
from mcur_jax import data as data_lib
from mcur_jax import evaluation
from mcur_jax import regime
from mcur_jax import report
from mcur_jax import train


def fold_workdirs(workdir: str) -> list[str]:
  """The per-fold workdirs of a cross-validated run ([] for a single run)."""
  if os.path.exists(os.path.join(workdir, "config.json")):
    return []
  return sorted(glob.glob(os.path.join(workdir, "fold[0-9]*")),
                key=lambda d: int(os.path.basename(d)[4:]))


def evaluate_workdir(workdir: str, split: str = "test",
                     protocol: str = "all") -> dict:
  """Evaluates a run's selected models on `split` under `protocol` (fixed |
  missing_rate | all); returns results.json's fields for them. A
  cross-validated workdir (fold<k>/ subdirectories) is evaluated fold by
  fold and pooled over folds and seeds, as training does."""
  if split not in ("valid", "test"):
    raise ValueError(f"split {split!r}: valid or test")
  if protocol not in evaluation.PROTOCOLS:
    raise ValueError(f"protocol {protocol!r} not in {evaluation.PROTOCOLS}")
  folds = fold_workdirs(workdir)
  if folds:
    return report.combine_folds([evaluate_workdir(d, split, protocol)
                                 for d in folds])
  config = checkpoint.load_config(workdir)
  mesh = train.make_mesh(config.num_devices)
  repl = NamedSharding(mesh, P())
  graphdef, params, config, manifest = checkpoint.restore_for_inference(
      workdir, repl)
  dataset = data_lib.load(config.data_dir, fold=config.fold or None)
  part = getattr(dataset, split)
  arrays = evaluation.device_arrays(
      part, repl, evaluation.chunk_size(config.eval_batch_size, mesh))
  predict = evaluation.make_predict(config, graphdef, mesh)
  found = evaluation.run(config, predict, params, part, arrays,
                         regime.members(config), manifest.task, protocol)
  return report.evaluation_results(
      config, manifest, manifest.task, split, found,
      source=os.path.abspath(checkpoint.directory(workdir)))
