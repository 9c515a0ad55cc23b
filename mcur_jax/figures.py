"""The figures a run writes to WORKDIR/figures/ (drawn by `mcur_jax.plots`):
from results.json alone (`write_summary_figures`, also for pooled folds)
and from a run's test outputs (`write_figures`)."""

import functools
import os

import jax
import numpy as np

from mcur_jax import losses
from mcur_jax import report
from mcur_jax import transfer
from mcur_jax import workdir as workdir_lib


def categories(task: str, label: np.ndarray, rule: str, classes=None):
  """(index per sample, names) of MCB-CL's categories (`losses.category`);
  classes by their names where `classes` gives them."""
  with transfer.on_host():
    category = np.asarray(jax.jit(functools.partial(
        losses.category, task=task, rule=rule))(label))
  values, index = np.unique(category, return_inverse=True)
  if task == "regression" and rule == "sign":
    return index, [("negative (< 0)", "non-negative (>= 0)")[v]
                   for v in values]
  return index, [classes[v] if task == "classification" and classes else
                 str(v) for v in values]


def _figure(workdir: str, name: str) -> str:
  """WORKDIR/figures/NAME.png, the folder made if needed."""
  os.makedirs(os.path.join(workdir, "figures"), exist_ok=True)
  return os.path.join(workdir, "figures", name + ".png")


def _plots():
  """`mcur_jax.plots`, imported on first use: matplotlib is about 0.4 s of
  every command's start, and a run without figures never needs it."""
  from mcur_jax import plots  # pylint: disable=g-import-not-at-top
  return plots


def write_summary_figures(workdir: str, results_dict: dict) -> None:
  """The figures made from results.json alone (also for pooled folds):
  per-combination bars and the missing-rate curve."""
  plots = _plots()
  plots.combination_bars(results_dict, _figure(workdir, "combinations"))
  if "missing_rate" in results_dict:
    plots.missing_rate_curve(results_dict, _figure(workdir, "missing_rate"))


def write_figures(workdir: str, results_dict: dict, config, test_found: dict,
                  test_split, fitted: dict, classes=None) -> None:
  """The PNG figures of a run in WORKDIR/figures/ (see plots.py), from the
  fixed-protocol test outputs of `evaluation.run` (`test_found`) and the
  run's calibration (`fitted`, `calibration.fit_run`); `classes` names the
  classes of a classification dataset (its manifest's)."""
  plots = _plots()
  write_summary_figures(workdir, results_dict)
  task, seed = results_dict["task"], results_dict["seeds"][0]
  source = (f"{results_dict['dataset']} test"
            + report.synthetic_mark(results_dict))
  selected = results_dict["selected_epoch"]
  plots.training_curves(
      os.path.join(workdir, workdir_lib.METRICS_FILE),
      results_dict["headline"], _figure(workdir, "training"),
      sum(selected.values(), []) if isinstance(selected, dict) else selected)
  # Seed 0's model, or in the per-condition regime its model per
  # combination (`evaluation.route`): one PCA over separate models' spaces.
  model = (f"seed {seed}'s {len(report.names(results_dict))} models" if
           config.regime == "per_condition" else f"seed {seed}")
  category, category_names = categories(task, test_split.label,
                                         config.regression_categories,
                                         classes)
  out = test_found["outputs"]
  plots.representation_map(
      {"h (after context)": out["h"][:, 0],
       "z (MCB-CL projection)": out["z"][:, 0]},
      report.names(results_dict), category, category_names,
      _figure(workdir, "representation"),
      f"{source}, {model}: PCA of the representation under each "
      "combination")
  pred, s = out["pred"], out["s"]
  pooled = ("ranked across combinations; results.json ranks within each "
            "and averages")
  plots.uncertainty_plot(
      task, pred[:, 0].reshape(-1, pred.shape[-1]),
      np.tile(test_split.label, pred.shape[0]), s[:, 0].reshape(-1),
      _figure(workdir, "uncertainty"), config.task_loss,
      f"{source}, {model}, all {len(pred)} combinations pooled\n({pooled})")
  plots.calibration_plot(
      task, config.task_loss, pred[:, 0], test_split.label, s[:, 0],
      [fitted["seeds"][0][c] for c in report.names(results_dict)],
      _figure(workdir, "calibration"), f"{source}, {model}\n({pooled})")
