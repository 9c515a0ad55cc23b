"""One table over a sweep's points, sorted by VALIDATION metric, and a plot.

For a sweep workdir (see `mcur_jax.sweep`) this reads `sweep.json` and each
point's `results.json` and writes:

* `sweep_report.md` and `sweep_report.csv`: per point, its name (its
  directory under the sweep), the swept fields,
  the validation headline metric averaged over the realisable combinations
  (mean and std over seeds and folds) of the selected models, then the test
  metrics (Avg and each combination). Rows are sorted by the validation
  metric, never by test; unfinished points are listed last, failed ones
  with their error.
* `sweep_report.png`: the validation (and, for information, test) metric
  against each swept field, with error bars over seeds.
* `results.md`: the paper-style tables of `report.markdown` with a row per
  point, in sweep order (e.g. the ablation table of
  `experiments/sweeps/ablation.py`).
"""

import csv
import json
import math
import os

import matplotlib

matplotlib.use("Agg")  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from mcur_jax import combos  # pylint: disable=wrong-import-position
from mcur_jax import report  # pylint: disable=wrong-import-position
from mcur_jax import sweep  # pylint: disable=wrong-import-position
from mcur_jax import workdir as workdir_lib  # pylint: disable=wrong-import-position


def collect(workdir: str) -> tuple[list[str], list[dict]]:
  """(swept fields, rows): one row per point, finished ones first, sorted
  by the validation headline metric (best first). A point that does not
  override a swept field (the ablation's `base`) shows the base config's
  value."""
  with open(os.path.join(workdir, sweep.SWEEP_FILE)) as f:
    spec = json.load(f)
  fields = sorted({k for p in spec["points"] for k in p["overrides"]})
  rows = []
  for point in spec["points"]:
    values = {**{f: spec["base"].get(f) for f in fields},
              **point["overrides"]}
    row = {"name": point["name"],
           **{f: _hashable(v) for f, v in values.items()}}
    failed = _failure(workdir, point["name"])
    path = os.path.join(workdir, point["name"], workdir_lib.RESULTS_FILE)
    if failed is not None:
      row["failed"] = failed
    elif os.path.exists(path):
      with open(path) as f:
        results = json.load(f)
      key = results["headline"]
      row.update(
          headline=key,
          valid=results["valid"]["avg"][key]["mean"],
          valid_std=results["valid"]["avg"][key]["std"],
          test=results["test"]["avg"][key]["mean"],
          test_std=results["test"]["avg"][key]["std"],
          runs=len(results["test"]["avg"][key]["per_run"]),
          **{f"test_{c}": results["test"][c][key]["mean"]
             for c in report.names(results)})
    rows.append(row)
  finished = [r for r in rows if "valid" in r]
  finished.sort(key=lambda r: -(r["valid"] if r["valid"] is not None
                                else -math.inf))
  return fields, finished + [r for r in rows if "valid" not in r]


def _failure(workdir: str, name: str) -> str | None:
  """The error of the point's last attempt (`sweep.FAILED_FILE`), or None.
  It outranks the point's results.json: a finished point whose evaluation
  ran again and failed has results that no longer stand (`sweep.run`
  removes the file once the point runs again)."""
  path = os.path.join(workdir, name, sweep.FAILED_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["error"]


def _hashable(value):
  """A config value as the sweep gave it (JSON lists back to tuples), so
  tuple-valued fields print alike and group in the plot."""
  return tuple(value) if isinstance(value, list) else value


def _fmt(x, std=None) -> str:
  if x is None:
    return "n/a"
  return f"{x:.4f}" if std is None else f"{x:.4f} ± {std:.4f}"


def _combinations(rows: list[dict]) -> list[str]:
  """The combinations any finished point was evaluated on, in table order."""
  return [c for c in combos.NAMES if any(f"test_{c}" in r for r in rows)]


def markdown(fields: list[str], rows: list[dict]) -> str:
  key = next((r["headline"] for r in rows if "headline" in r), "metric")
  names = _combinations(rows)
  head = (["rank", "point", *fields, f"valid {key} (avg)",
           f"test {key} (avg)"] +
          [f"test {c}" for c in names])
  lines = [f"Sorted by validation {key} (average over the combinations of"
           " each seed's selected model; mean ± std over runs). Test is "
           "shown, never used to rank.", "",
           "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
  for rank, r in enumerate(rows, 1):
    if "valid" not in r:
      state = (f"FAILED: {r['failed']}".replace("|", "/") if "failed" in r
               else "unfinished")
      cells = ["-", r["name"], *(str(r[f]) for f in fields), state, "",
               *[""] * len(names)]
    else:
      cells = [str(rank), r["name"], *(str(r[f]) for f in fields),
               _fmt(r["valid"], r["valid_std"]), _fmt(r["test"], r["test_std"]),
               *(_fmt(r.get(f"test_{c}")) for c in names)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_csv(path: str, fields: list[str], rows: list[dict]) -> None:
  columns = ["name", *fields, "valid", "valid_std", "test", "test_std",
             "runs", *(f"test_{c}" for c in _combinations(rows)), "failed"]
  with workdir_lib.replacing(path) as tmp, open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)


def plot(path: str, fields: list[str], rows: list[dict]) -> bool:
  """Metric vs each swept field that a finished point sets (the other
  fields' points share an x); False, writing nothing, without one."""
  done = [r for r in rows if r.get("valid") is not None]
  fields = [f for f in fields if any(r[f] is not None for r in done)]
  if not fields or not done:
    return False
  key = done[0]["headline"]
  fig, axes = plt.subplots(1, len(fields), figsize=(4.2 * len(fields), 3.6),
                           squeeze=False)
  for ax, field in zip(axes[0], fields):
    values = sorted({r[field] for r in done}, key=str)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  for v in values)
    position = ({v: v for v in values} if numeric
                else {v: i for i, v in enumerate(values)})
    for split, marker, style in (("valid", "o", "-"), ("test", "s", ":")):
      x = np.array([position[r[field]] for r in done], float)
      y = np.array([r[split] for r in done], float)
      err = np.array([r[f"{split}_std"] for r in done], float)
      ax.errorbar(x, y, yerr=err, fmt=marker, alpha=0.5, capsize=2,
                  label=f"{split} (each point)")
      means = [np.mean(y[x == position[v]]) for v in values]
      ax.plot([position[v] for v in values], means, style, color="k",
              linewidth=1, label=f"{split} (mean over other fields)")
    if numeric and min(values) > 0 and max(values) / min(values) > 9:
      ax.set_xscale("log")
    if not numeric:
      ax.set_xticks(range(len(values)), [str(v) for v in values])
    ax.set_xlabel(field)
    ax.set_ylabel(f"{key} (Avg over the realisable combinations)")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.suptitle("Sweep: selection uses validation only", fontsize=10)
  fig.tight_layout()
  with workdir_lib.replacing(path) as tmp:
    fig.savefig(tmp, dpi=110, format="png")
  plt.close(fig)
  return True


def paper_table(workdir: str) -> str | None:
  """`report.markdown` over the finished points in sweep order (not those
  whose last attempt failed: `_failure`): rows =
  methods (the point name added where two points share a method label, as
  in a hyperparameter sweep); None before any point finished."""
  with open(os.path.join(workdir, sweep.SWEEP_FILE)) as f:
    points = json.load(f)["points"]
  found = []
  for point in points:
    path = os.path.join(workdir, point["name"], workdir_lib.RESULTS_FILE)
    if os.path.exists(path) and _failure(workdir, point["name"]) is None:
      with open(path) as f:
        found.append((point["name"], json.load(f)))
  if not found:
    return None
  labels = [r["method"] for _, r in found]
  return report.markdown([
      (r["method"] if labels.count(r["method"]) == 1
       else f"{r['method']} [{name}]", r) for name, r in found])


def write(workdir: str) -> tuple[str, list[str]]:
  """Writes the Markdown and CSV reports and, once a point finished, the
  PNG and the paper-style results.md, each file whole or not at all (a PNG
  or results.md of an earlier report that no finished point backs now is
  removed, not left to look current); returns the sweep Markdown and the
  paths written."""
  fields, rows = collect(workdir)
  text = markdown(fields, rows)
  md, csv_path, png, results = (os.path.join(workdir, name) for name in (
      "sweep_report.md", "sweep_report.csv", "sweep_report.png",
      "results.md"))
  workdir_lib.write_text(md, text)
  write_csv(csv_path, fields, rows)
  paths = [md, csv_path]
  if plot(png, fields, rows):
    paths.append(png)
  elif os.path.exists(png):
    os.remove(png)
  table = paper_table(workdir)
  if table:
    workdir_lib.write_text(results, table)
    paths.append(results)
  elif os.path.exists(results):
    os.remove(results)
  return text, paths
