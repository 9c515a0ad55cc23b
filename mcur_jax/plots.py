"""PNG figures of a training run: results per combination, the missing-rate
curve, training curves, representation maps, SUGR uncertainty and the
post-hoc calibration.

Each function writes one PNG and closes its figure, so a long run can render
many figures without holding them in memory. The inputs are the run's own
outputs (the results.json dict, `metrics.jsonl`) or evaluation arrays, and
the uncertainty panels use the helpers behind `metrics.uncertainty`. The
bars and curves show results.json's numbers; the uncertainty and
calibration figures pool a seed's combinations, so their ECE and selective
accuracy rank the pooled decisions (across combinations too: a deployment
that meets them mixed), which results.json, scoring each combination and
averaging, does not hold. Every title says what is averaged over how many
runs, and results from synthetic data say so in the title.
"""

import json
import math

import matplotlib

matplotlib.use("Agg")  # Files only; no display needed.
from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib.ticker import MaxNLocator  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mcur_jax import calibration  # pylint: disable=wrong-import-position
from mcur_jax import combos  # pylint: disable=wrong-import-position
from mcur_jax import metrics  # pylint: disable=wrong-import-position
from mcur_jax import report  # pylint: disable=wrong-import-position
from mcur_jax import workdir  # pylint: disable=wrong-import-position

# The accuracy shown beside the headline metric of each task.
ACCURACY = {"regression": "acc2_non0", "classification": "wa"}
# Samples per combination drawn in a representation map; more only hides
# the structure under overplotting and slows the rendering.
MAX_POINTS = 1500
_SUBSAMPLE_SEED = 0
# One colour per combination (NAMES order), shared by every figure.
COMBO_COLORS = dict(zip(combos.NAMES, plt.get_cmap("tab10").colors))
_DPI = 110


def _mean_std(entries: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(means, stds) of metric `key` over {metric: {"mean", "std"}} entries."""
  return (np.array([report.number(e[key]["mean"]) for e in entries]),
          np.array([report.number(e[key]["std"]) for e in entries]))


def _runs(n: int) -> str:
  return f"{n} run" if n == 1 else f"{n} runs"


def _save(fig, path: str) -> None:
  """Writes the PNG whole or not at all (a killed run leaves no half file)."""
  with workdir.replacing(path) as tmp:
    fig.savefig(tmp, dpi=_DPI, format="png")
  plt.close(fig)


def _bar_labels(ax, xs, mean, std) -> float:
  """Writes each value above its error bar ("n/a" at the base where there is
  no bar); returns the highest label position (0 without any)."""
  tops = mean + np.nan_to_num(std)
  for x, m, y in zip(xs, mean, tops):
    if np.isfinite(m):
      ax.text(x, y + 0.01, f"{m:.3f}", ha="center", va="bottom", fontsize=7)
    else:
      ax.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=7)
  return float(np.nanmax(tops, initial=0.0))


def combination_bars(results: dict, path: str, split: str = "test") -> None:
  """Grouped bars of the headline metric and the accuracy per combination.

  One group per combination of the run in report order, then Avg (each
  run's mean over them). Bars are means over runs with std error bars and value labels; a
  metric that is n/a (None) gets no bar, only an "n/a" mark.

  Args:
    results: a results.json dict (`report.results`, `report.combine_folds`).
    path: the PNG to write.
    split: "test" or "valid".
  """
  part = results[split]
  keys = (results["headline"], ACCURACY[results["task"]])
  names = report.names(results)
  groups = names + ["avg"]
  runs = len(part["avg"][keys[0]]["per_run"])
  x = np.arange(len(groups))
  width = 0.4
  fig, ax = plt.subplots(figsize=(10, 4.6), layout="constrained")
  top = 1.0
  for i, key in enumerate(keys):
    mean, std = _mean_std([part[g] for g in groups], key)
    xs = x + (i - 0.5) * width
    ok = np.isfinite(mean)
    ax.bar(xs[ok], mean[ok], width, yerr=std[ok], capsize=3, color=f"C{i}",
           label=key)
    top = max(top, _bar_labels(ax, xs, mean, std))
  ax.axvline(len(names) - 0.5, color="grey", linestyle=":", lw=1)
  ax.set_xticks(x, names + ["Avg"])
  ax.set_ylim(0, top + 0.08)
  ax.set_xlabel("modality combination at evaluation (a = audio, t = text, "
                f"v = video; Avg = mean over the {len(names)} the data "
                "has)")
  ax.set_ylabel("metric value (fraction)")
  ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
  ax.grid(axis="y", alpha=0.3)
  ax.set_title(f"{results['dataset']} {split}: {keys[0]} and {keys[1]} per "
               f"modality combination\nmean ± std over {_runs(runs)}"
               f"{report.synthetic_mark(results)}")
  _save(fig, path)


def missing_rate_curve(results: dict, path: str) -> None:
  """The headline metric and the accuracy against the missing rate.

  Args:
    results: a results.json dict with a "missing_rate" entry: {"split",
      "draws": K, "rates": {rate string: {metric: {"mean", "std",
      "per_run"}}}}.
    path: the PNG to write.

  Raises:
    KeyError: `results` has no "missing_rate" entry.
  """
  if "missing_rate" not in results:
    raise KeyError("results has no 'missing_rate' entry: the run was not "
                   "evaluated at missing rates, so there is no curve to plot")
  curve = results["missing_rate"]
  rates = sorted(curve["rates"], key=float)
  keys = (results["headline"], ACCURACY[results["task"]])
  runs = len(curve["rates"][rates[0]][keys[0]]["per_run"])
  r = np.array([float(k) for k in rates])
  fig, ax = plt.subplots(figsize=(7, 4.6), layout="constrained")
  for i, key in enumerate(keys):
    mean, std = _mean_std([curve["rates"][k] for k in rates], key)
    dodge = (i - 0.5) * 0.008  # Keeps the two metrics' error bars apart.
    ax.errorbar(r + dodge, mean, yerr=std, fmt="o-", capsize=3, color=f"C{i}",
                label=key)
  ax.set_xticks(r, rates)
  ax.set_xlabel(f"missing rate r (GCNet semantics, {curve['draws']} draws)")
  ax.set_ylabel("metric value (fraction)")
  ax.legend()
  ax.grid(alpha=0.3)
  ax.set_title(f"{results['dataset']} {curve['split']}: {keys[0]} and "
               f"{keys[1]} vs missing rate\nmean ± std over {_runs(runs)}"
               f"{report.synthetic_mark(results)}")
  _save(fig, path)


def _read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _finite_stats(values: list) -> tuple[float, float, float]:
  """(mean, min, max) of the finite values; NaNs when there are none."""
  v = np.array([report.number(x) for x in values])
  v = v[np.isfinite(v)]
  return (v.mean(), v.min(), v.max()) if v.size else (math.nan,) * 3


def _field(line: dict, keys: tuple):
  """line[k0][k1]..., None where a key is missing (a combination that a
  per-condition run does not evaluate)."""
  for k in keys:
    line = line.get(k) if isinstance(line, dict) else None
  return line


def _per_epoch(lines: list[dict], epochs: np.ndarray, *keys) -> np.ndarray:
  """[3, E]: mean, min and max of line[k0][k1]... over each epoch's lines."""
  return np.array([_finite_stats([_field(line, keys) for line in lines
                                  if line["epoch"] == e])
                   for e in epochs]).T


def _band(ax, epochs, stats, label, color, lw=1.8) -> None:
  """A mean line with its min-max band; nothing for a never-logged value."""
  if np.isnan(stats[0]).all():
    return
  ax.fill_between(epochs, stats[1], stats[2], color=color, alpha=0.2, lw=0)
  ax.plot(epochs, stats[0], color=color, lw=lw, label=label)


def _mark_selected(ax, selected_epoch: list[int]) -> None:
  """Dotted lines and top markers at the selected epochs, "×k" where k runs
  selected the same epoch."""
  chosen, counts = np.unique(selected_epoch, return_counts=True)
  for e, k in zip(chosen, counts):
    ax.axvline(e, color="k", linestyle=":", lw=0.8)
    if k > 1:
      ax.text(e, 0.97, f" ×{k}", transform=ax.get_xaxis_transform(),
              ha="left", va="top", fontsize=7)
  ax.plot(chosen, np.full(len(chosen), 0.985), "kv", markersize=6,
          transform=ax.get_xaxis_transform(), clip_on=False,
          label="selected epoch (per run)")


def training_curves(metrics_jsonl: str, headline: str, path: str,
                    selected_epoch: list[int] | None = None) -> None:
  """Training losses, the SUGR weight and validation metrics per epoch.

  A run is a (condition, seed) pair (the condition absent outside
  per-condition runs). Each curve is the mean over the runs' lines of that
  epoch, with a min-max band; nulls are skipped.

  Args:
    metrics_jsonl: the run's `metrics.jsonl` (`report.MetricsLog`).
    headline: the headline metric name (`metrics.HEADLINE[task]`).
    path: the PNG to write.
    selected_epoch: the 1-based selected epoch of each run, marked on the
      validation panel.
  """
  lines = _read_jsonl(metrics_jsonl)
  epochs = np.array(sorted({line["epoch"] for line in lines}))
  runs = {(line.get("condition"), line["seed"]) for line in lines}
  conditions = {c for c, _ in runs if c is not None}
  fig, (loss_ax, sugr_ax, valid_ax) = plt.subplots(
      1, 3, figsize=(16, 4.6), layout="constrained")

  for i, key in enumerate(("loss", "task_loss", "mcb_loss")):
    _band(loss_ax, epochs, _per_epoch(lines, epochs, "train", key), key,
          f"C{i}")
  loss_ax.set(title="training losses (train split)", xlabel="epoch",
              ylabel="loss (mean over the epoch's steps)")
  loss_ax.legend(fontsize=8)

  _band(sugr_ax, epochs, _per_epoch(lines, epochs, "train", "sugr_weight"),
        "sugr_weight", "C3")
  sugr_ax.set(title="SUGR sample weight (train split)", xlabel="epoch",
              ylabel="mean weight exp(−s) (1 in warm-up)")

  _band(valid_ax, epochs, _per_epoch(lines, epochs, f"valid_avg_{headline}"),
        f"Avg {headline}", "k", lw=2.2)
  present = [c for c in combos.NAMES
             if any(c in line["valid"] for line in lines)]
  for c in present:
    stats = _per_epoch(lines, epochs, "valid", c, headline)
    valid_ax.plot(epochs, stats[0], color=COMBO_COLORS[c], lw=0.9, label=c)
  if selected_epoch:
    _mark_selected(valid_ax, selected_epoch)
  valid_ax.set(title=f"validation {headline} (Avg: band = min–max)",
               xlabel="epoch", ylabel=f"validation {headline}")
  valid_ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)

  for ax in (loss_ax, sugr_ax, valid_ax):
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  what = (f"{_runs(len(runs))} ({len(conditions)} conditions × seeds, one "
          "model per condition)" if conditions else _runs(len(runs)))
  fig.suptitle(f"Training curves: mean over {what}, shaded band = min–max "
               "over runs")
  _save(fig, path)


def pca_2d(x: np.ndarray) -> np.ndarray:
  """[N, D] -> [N, 2]: the coordinates on the top-2 principal components.

  Each component's sign makes its largest-magnitude loading positive (the
  first such loading on ties), so the same data always give the same
  picture. With fewer than 2 components (N or D below 2) the missing
  coordinate is 0.
  """
  centred = np.asarray(x, np.float64) - np.mean(x, axis=0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  components = vt[:2]
  largest = components[np.arange(len(components)),
                       np.abs(components).argmax(1)]
  components = components * np.where(largest < 0, -1.0, 1.0)[:, None]
  proj = centred @ components.T
  return np.pad(proj, ((0, 0), (0, 2 - proj.shape[1])))


def _subsample(n: int) -> np.ndarray:
  """Sorted indices of at most MAX_POINTS of n samples, fixed seed."""
  if n <= MAX_POINTS:
    return np.arange(n)
  rng = np.random.default_rng(_SUBSAMPLE_SEED)
  return np.sort(rng.choice(n, MAX_POINTS, replace=False))


def _scatter(ax, xy: np.ndarray, colors: np.ndarray, handles: list) -> None:
  """All points in one shuffled draw (no group painted over the others),
  with a legend of `handles`."""
  order = np.random.default_rng(_SUBSAMPLE_SEED).permutation(len(xy))
  ax.scatter(xy[order, 0], xy[order, 1], c=colors[order], s=4, alpha=0.5,
             linewidths=0)
  ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1),
            fontsize=8, markerscale=1.5)


def _handle(color, label: str) -> Line2D:
  return Line2D([], [], marker="o", linestyle="", color=color, label=label)


def representation_map(reps: dict[str, np.ndarray], names: list[str],
                       category: np.ndarray, category_names: list[str],
                       path: str, title: str) -> None:
  """PCA maps of representations of the same samples under the run's
  combinations, coloured by category (left) and by combination (right).

  Coloured by category, the classes should separate; coloured by
  combination, the combinations should mix if the representation is
  robust to missing modalities.

  Args:
    reps: label -> [C, N, D], the representation of N test samples under
      each of the C combinations `names`; one row of panels each.
    names: the combinations, in the order of the reps' first axis.
    category: [N] ints indexing `category_names`.
    category_names: the category of each int.
    path: the PNG to write.
    title: the figure's title (say the dataset, split and model).
  """
  n = next(iter(reps.values())).shape[1]
  keep = _subsample(n)
  # Set1 (red, blue, ...) keeps categories apart from the tab10 combinations.
  cmap = plt.get_cmap("Set1" if len(category_names) <= 9 else "tab20")
  cat_colors = np.array([cmap(i) for i in range(len(category_names))])
  combo_colors = np.array([COMBO_COLORS[c] for c in names])
  point_cat = np.tile(np.asarray(category)[keep], len(names))
  point_combo = np.repeat(np.arange(len(names)), len(keep))
  fig, axes = plt.subplots(len(reps), 2, figsize=(12, 4.6 * len(reps)),
                           layout="constrained", squeeze=False)
  for (label, rep), (left, right) in zip(reps.items(), axes):
    rep = np.asarray(rep)
    flat = rep.reshape(-1, rep.shape[-1])
    xy = pca_2d(flat).reshape(len(names), n, 2)[:, keep].reshape(-1, 2)
    share = xy.var(0) / max(flat.var(0).sum(), 1e-12)
    _scatter(left, xy, cat_colors[point_cat],
             [_handle(cat_colors[i], name)
              for i, name in enumerate(category_names)])
    _scatter(right, xy, combo_colors[point_combo],
             [_handle(combo_colors[i], name)
              for i, name in enumerate(names)])
    left.set_title(f"{label}: coloured by category")
    right.set_title(f"{label}: coloured by combination")
    for ax in (left, right):
      ax.set_xlabel(f"PC1 ({share[0]:.0%} of variance)")
      ax.set_ylabel(f"PC2 ({share[1]:.0%} of variance)")
  shown = (f"{len(keep)} of {n} samples drawn at random (seed "
           f"{_SUBSAMPLE_SEED})" if len(keep) < n else f"{n} samples")
  fig.suptitle(f"{title}\nPCA fit on all {len(names)} × {n} points, one per "
               f"(sample, combination); shown: {shown} × {len(names)} "
               "combinations")
  _save(fig, path)


def _binned_error(s: np.ndarray, error: np.ndarray, bins: int = 10):
  """(mean s, mean error) in `bins` quantile bins of s."""
  edges = np.quantile(s, np.linspace(0, 1, bins + 1))
  which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
  used = np.unique(which)
  return (np.array([s[which == b].mean() for b in used]),
          np.array([error[which == b].mean() for b in used]))


def _error_panel(ax, task, s, error, spearman) -> None:
  ax.scatter(s, error, s=5, alpha=0.3, color="C0", linewidths=0,
             label="one sample")
  centre, mean_error = _binned_error(s, error)
  ax.plot(centre, mean_error, "o-", color="C3",
          label="mean error in 10 quantile bins of s")
  ax.set(title=f"(a) s vs error, Spearman ρ = {spearman:.3f}",
         xlabel="SUGR log-variance s",
         ylabel=("|prediction − label|" if task == "regression"
                 else "cross-entropy of the true class"))
  ax.legend(fontsize=8)


def _reliability_panel(ax, task, correct, confidence, ece,
                       title: str = "(b) reliability") -> None:
  bins = 10
  used, counts, accuracy, mean_conf = metrics.reliability_bins(
      correct, confidence, bins)
  ax.bar((used + 0.5) / bins, accuracy, 1 / bins, color="C0", alpha=0.35,
         edgecolor="C0", label="accuracy per confidence bin")
  ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
  ax.scatter(mean_conf, accuracy, s=20 + 180 * counts / counts.max(),
             color="C3", zorder=3, label="(mean confidence, accuracy)")
  for b, k in zip(used, counts):
    ax.text((b + 0.5) / bins, 0.02, f"n={k}", ha="center", fontsize=7)
  ax.set(xlim=(0, 1), ylim=(0, 1.05),
         title=f"{title}, ECE = {ece:.3f}",
         xlabel=("confidence: P(label has the predicted sign)"
                 if task == "regression" else "confidence: max softmax "
                 "probability"),
         ylabel="accuracy in bin")
  ax.legend(fontsize=8, loc="upper left")


def _coverage_panel(ax, correct, curves, title: str) -> None:
  """Accuracy against coverage: one line per (uncertainty, format, label)
  of `curves`, the least uncertain kept first, and the accuracy on all."""
  coverages = np.linspace(0.1, 1.0, 10)
  for uncertainty, fmt, label in curves:
    ax.plot(coverages, metrics.coverage_curve(correct, uncertainty,
                                              coverages), fmt, label=label)
  ax.axhline(correct.mean(), color="grey", lw=1, label="all samples")
  ax.margins(y=0.08)
  ax.set(title=title, xlabel="coverage (fraction of samples kept)",
         ylabel="accuracy on the kept samples")
  ax.legend(fontsize=8)


def uncertainty_plot(task: str, outputs: np.ndarray, label: np.ndarray,
                     s: np.ndarray, path: str, task_loss: str,
                     title: str = "") -> None:
  """How well SUGR's log-variance s tracks the errors of a seed's model(s).

  Panels: (a) s against the per-sample error; (b) the reliability diagram
  of the decision's confidence; (c) accuracy against coverage when the
  least uncertain samples are kept first. The samples, decisions and
  confidences are those of `metrics.uncertainty` (`metrics.decisions`).

  Args:
    task: "regression" or "classification".
    outputs: [N, K] raw model outputs (K = 1: regression scores).
    label: [N] labels.
    s: [N] SUGR log-variances.
    path: the PNG to write.
    task_loss: the run's `config.task_loss`; for regression "l1" or "mse",
      which sets the predictive distribution behind the confidence.
    title: leads the figure's title (say the dataset, split and model).

  Raises:
    ValueError: no sample is scored (regression labels all 0).
  """
  correct, confidence, error, s_kept = metrics.decisions(
      task, outputs, label, s, task_loss)
  if not len(correct):
    raise ValueError("no scored sample: the decision is undefined on every "
                     "sample (regression labels all 0)")
  scores = metrics.uncertainty_of(correct, confidence, error, s_kept)
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
  _error_panel(axes[0], task, s_kept, error, scores["s_err_spearman"])
  _reliability_panel(axes[1], task, correct, confidence, scores["ece"])
  _coverage_panel(axes[2], correct, [
      (s_kept, "o-C3", "least uncertain first by s (SUGR)"),
      (1 - confidence, "s--C0", "most confident first (by 1 − confidence)")],
                  "(c) selective accuracy")
  scored = ("samples with a non-zero label" if task == "regression"
            else "samples")
  fig.suptitle(f"{title}{': ' if title else ''}SUGR uncertainty over "
               f"{len(correct)} {scored}")
  _save(fig, path)


def calibration_plot(task: str, task_loss: str, outputs: np.ndarray,
                     label: np.ndarray, s: np.ndarray, calibrators: list,
                     path: str, title: str = "") -> None:
  """The post-hoc calibration of a seed's model(s) (`calibration.py`) on a
  split.

  Panels: (a) the reliability diagram of the uncalibrated confidence and
  (b) of the calibrated one, each combination's decisions pooled; (c)
  accuracy against coverage, the most confident kept first by each
  confidence, and the least uncertain first by SUGR's s.

  Args:
    task, task_loss: the run's task and `config.task_loss`.
    outputs: [C, N, K] raw model outputs under each of C combinations.
    label: [N] labels.
    s: [C, N] SUGR log-variances.
    calibrators: the model's calibrator of each combination, in order.
    path: the PNG to write.
    title: leads the figure's title.
  """
  correct, raw, after, s_kept = [], [], [], []
  for c, cal in enumerate(calibrators):
    hit, conf, _, kept_s, keep = calibration.decisions(
        task, task_loss, outputs[c], s[c], label)
    correct.append(hit)
    raw.append(conf)
    after.append(calibration.confidence(cal, task, task_loss,
                                        outputs[c][keep], s[c][keep])[0])
    s_kept.append(kept_s)
  correct, raw, after, s_kept = map(np.concatenate,
                                    (correct, raw, after, s_kept))
  if not len(correct):
    raise ValueError("no scored sample: the decision is undefined on every "
                     "sample (regression labels all 0)")
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
  _reliability_panel(axes[0], task, correct, raw, metrics.ece(correct, raw),
                     "(a) before calibration")
  _reliability_panel(axes[1], task, correct, after,
                     metrics.ece(correct, after),
                     "(b) after calibration (fitted on valid)")
  _coverage_panel(axes[2], correct, [
      (-after, "o-C0", "most confident first, by calibrated confidence"),
      (-raw, "s--C1", "most confident first, by uncalibrated confidence"),
      (s_kept, "^:C2", "least uncertain first, by SUGR's s")],
                  "(c) accuracy against coverage")
  fig.suptitle(f"{title}{': ' if title else ''}calibration of "
               f"{len(correct)} decisions, {len(calibrators)} combinations "
               "pooled")
  _save(fig, path)
