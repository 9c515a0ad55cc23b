"""Run outputs: the progress bar, `metrics.jsonl`, `results.json` and the printed table.

All metric values are fractions (not percent); a NaN metric (e.g. Corr of
constant predictions) is written as null. Means and standard deviations run
over seeds (and folds, where there are folds); std is the sample std
(ddof = 1), 0 for a single run.
"""

import json
import math
import os
import sys

import numpy as np

from mcur_jax import combos
from mcur_jax import metrics


def _clean(x):
  """JSON-safe copy: NaN/inf -> None, NumPy scalars -> Python numbers."""
  if isinstance(x, dict):
    return {k: _clean(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_clean(v) for v in x]
  if isinstance(x, (np.floating, float)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


class MetricsLog:
  """`metrics.jsonl`: one line per (epoch, seed). On resume after epoch
  `start`, later lines (from an interrupted run) are dropped first, so the
  file equals that of an uninterrupted run."""

  def __init__(self, path: str, start: int, enabled: bool = True):
    self.path, self.enabled = path, enabled
    if not enabled:
      return
    kept = []
    if start and os.path.exists(path):
      with open(path) as f:
        kept = [line for line in f if json.loads(line)["epoch"] <= start]
    with open(path, "w") as f:
      f.writelines(kept)

  def write(self, epoch, seeds, stats, valid, score, task):
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      for i, seed in enumerate(seeds):
        f.write(json.dumps(_clean({
            "epoch": epoch, "seed": seed,
            "train": {k: v[i] for k, v in stats.items()},
            "valid": valid[i],
            f"valid_avg_{metrics.HEADLINE[task]}": score[i]})) + "\n")


class Progress:
  """A one-line progress bar over epochs (a line per epoch when not a TTY)."""

  def __init__(self, total: int, start: int, enabled: bool = True,
               stream=None):
    self.total, self.enabled = total, enabled
    self.stream = stream or sys.stdout  # sys.stdout as it is now.
    self.tty = self.stream.isatty()
    self.best = -math.inf
    if enabled and start:
      self.stream.write(f"resumed at epoch {start}/{total}\n")

  def update(self, epoch, stats, score, name):
    if not self.enabled:
      return
    self.best = max(self.best, float(np.max(score)))
    width = 20
    done = width * epoch // self.total
    line = (f"[{'#' * done}{'.' * (width - done)}] epoch {epoch}/{self.total}"
            f" loss {np.mean(stats['loss']):.4f} valid avg {name} "
            f"{np.mean(score):.4f} (best seed {self.best:.4f})")
    self.stream.write(("\r" + line) if self.tty else line + "\n")
    self.stream.flush()

  def close(self):
    if self.enabled and self.tty:
      self.stream.write("\n")


def summarize(per_run: list[dict]) -> dict:
  """[{combo: {metric: value}}] per run -> {combo or "avg": {metric:
  {"mean", "std", "per_run"}}}, "avg" being each run's mean over the 7."""
  names = list(combos.NAMES)
  metric_names = list(per_run[0][names[0]])
  with_avg = [{**run, "avg": {k: float(np.mean([run[c][k] for c in names]))
                              for k in metric_names}} for run in per_run]
  out = {}
  for c in names + ["avg"]:
    out[c] = {}
    for k in metric_names:
      values = np.array([np.nan if run[c][k] is None else run[c][k]
                         for run in with_avg], np.float64)
      out[c][k] = {"mean": float(np.mean(values)),
                   "std": float(np.std(values, ddof=1)) if len(values) > 1
                   else 0.0,
                   "per_run": values.tolist()}
  return out


def results(*, config, manifest, task, test, valid, selected_epoch,
            no_modality, compiles, seconds) -> dict:
  """The results.json dict of one run (one fold)."""
  return _clean({
      "dataset": manifest.dataset,
      "task": task,
      "data": {"dir": config.data_dir, "format": manifest.format,
               "synthetic": manifest.format == "synthetic"},
      "fold": config.fold or None,
      "selected_on": "valid",
      "headline": metrics.HEADLINE[task],
      "seeds": list(config.seeds),
      "selected_epoch": selected_epoch,
      "test": summarize(test),
      "valid": summarize(valid),
      "test_samples_without_modality": no_modality,
      "compiles": compiles,
      "seconds": round(seconds, 1),
  })


def combine_folds(runs: list[dict]) -> dict:
  """Pools the results of every fold: statistics over all (fold, seed) runs."""
  def pool(split):
    per_run = []
    for r in runs:
      part = r[split]
      for i in range(len(part["avg"][r["headline"]]["per_run"])):
        per_run.append({c: {k: v["per_run"][i] for k, v in part[c].items()}
                        for c in combos.NAMES})
    return summarize(per_run)
  first = runs[0]
  return _clean({
      **{k: first[k] for k in ("dataset", "task", "data", "selected_on",
                               "headline", "seeds")},
      "fold": None, "folds": [r["fold"] for r in runs],
      "selected_epoch": [r["selected_epoch"] for r in runs],
      "test": pool("test"), "valid": pool("valid"),
      "test_samples_without_modality": {
          c: sum(r["test_samples_without_modality"][c] for r in runs)
          for c in combos.NAMES},
      "compiles": [r["compiles"] for r in runs],
      "seconds": round(sum(r["seconds"] for r in runs), 1),
  })


def write_results(workdir: str, results_dict: dict) -> None:
  """Writes results.json atomically: its presence means the run finished."""
  path = os.path.join(workdir, "results.json")
  with open(path + ".tmp", "w") as f:
    json.dump(results_dict, f, indent=1)
    f.write("\n")
  os.replace(path + ".tmp", path)


_SHOWN = {"regression": ("f1_non0", "acc2_non0", "mae", "corr", "acc7"),
          "classification": ("wf1", "wa", "ua", "mf1")}


def table(results_dict: dict, split: str = "test") -> str:
  """A Markdown table, rows = metrics, columns = combinations and Avg."""
  cols = list(combos.NAMES) + ["avg"]
  part = results_dict[split]
  lines = [f"{results_dict['dataset']} {split}, mean ± std over "
           f"{len(part['avg'][results_dict['headline']]['per_run'])} run(s), "
           f"selected on {results_dict['selected_on']}"
           + (" [SYNTHETIC DATA]" if results_dict["data"]["synthetic"] else ""),
           "| metric | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
  for k in _SHOWN[results_dict["task"]]:
    cells = []
    for c in cols:
      m = part[c][k]
      cells.append("n/a" if m["mean"] is None else
                   f"{m['mean']:.3f} ± {m['std'] or 0:.3f}")
    lines.append(f"| {k} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
