"""Run outputs: `metrics.jsonl`, `results.json`, results.md and the printed tables.

All metric values are fractions (not percent); a NaN metric (e.g. Corr of
constant predictions) is written as null. Means and standard deviations run
over seeds (and folds, where there are folds); std is the sample std
(ddof = 1), 0 for a single run.
"""

import json
import math
import os

import numpy as np

from mcur_jax import calibration
from mcur_jax import combos
from mcur_jax import metrics
from mcur_jax import schema
from mcur_jax import timing
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib


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
  """`metrics.jsonl`: one line per (epoch, seed). The file is replaced
  whole (atomically) after every epoch, so a killed run leaves it as it was
  after some epoch, never with a part of a line. On resume after epoch
  `start` the lines of later epochs (logged before their checkpoint was
  saved) are dropped, so the file equals that of an uninterrupted run."""

  def __init__(self, path: str, start: int, enabled: bool = True):
    self.path, self.enabled, self.lines = path, enabled, []
    if not enabled:
      return
    if start and os.path.exists(path):
      with open(path) as f:
        self.lines = [line for line in f
                      if json.loads(line)["epoch"] <= start]
    workdir_lib.write_text(path, "".join(self.lines))

  def write(self, epoch, members, stats, valid, score, task,
            learning_rate) -> list[dict]:
    """One line per member: its training stats, the validation metrics of
    the combinations it serves, its selection score and the epoch's
    learning rate. Returns the lines as dicts (JSON-safe)."""
    new = [_clean({
        "epoch": epoch, **members.describe(i),
        "train": {k: v[i] for k, v in stats.items()},
        "valid": valid[i],
        f"valid_avg_{metrics.HEADLINE[task]}": score[i],
        "learning_rate": learning_rate}) for i in range(len(members))]
    if self.enabled:
      self.lines += [json.dumps(line) + "\n" for line in new]
      workdir_lib.write_text(self.path, "".join(self.lines))
    return new


def number(value) -> float:
  """A results.json metric value as a float; null (a NaN written by
  `_clean`) read back as NaN."""
  return math.nan if value is None else float(value)


def synthetic_mark(results_dict: dict) -> str:
  """What titles and tables add for a run on synthetic data."""
  return " [SYNTHETIC DATA]" if results_dict["data"]["synthetic"] else ""


def summarize_flat(per_run: list[dict]) -> dict:
  """[{metric: value}] per run -> {metric: {"mean", "std", "per_run"}}."""
  out = {}
  for k in per_run[0]:
    values = np.array([number(run[k]) for run in per_run], np.float64)
    out[k] = {"mean": float(np.mean(values)),
              "std": float(np.std(values, ddof=1)) if len(values) > 1
              else 0.0,
              "per_run": values.tolist()}
  return out


def summarize(per_run: list[dict]) -> dict:
  """[{combo: {metric: value}}] per run -> {combo or "avg": {metric:
  {"mean", "std", "per_run"}}}, "avg" being each run's mean over its
  combinations (the run's realisable ones)."""
  names = [c for c in combos.NAMES if c in per_run[0]]
  metric_names = list(per_run[0][names[0]])
  with_avg = [{**run, "avg": {k: float(np.mean([number(run[c][k])
                                                for c in names]))
                              for k in metric_names}} for run in per_run]
  return {c: summarize_flat([run[c] for run in with_avg])
          for c in names + ["avg"]}


def method(config) -> str:
  """A row label of the paper-style table for a config: MCUR or the
  ablation it is."""
  off = [name for name, on in (("MCB-CL", config.mcb_weight),
                               ("SUGR", config.sugr),
                               ("context", config.context_layers)) if not on]
  label = "MCUR" + (" w/o " + " & ".join(off) if off else "")
  return label + (" (per-condition)" if config.regime == "per_condition"
                  else "")


def selected_epochs(members, epochs: np.ndarray):
  """The selected (1-based) epoch of each seed, or of each seed per
  combination ({combination: [per seed]}) in the per-condition regime."""
  if not members.per_condition:
    return epochs.tolist()
  return {combos.NAMES[c]: epochs[members.owner[:, c]].tolist()
          for c in members.combos}


def combinations(manifest) -> tuple[list[str], dict[str, str]]:
  """(the dataset's realisable combinations, {left-out combination: why})."""
  present = validate.present_modalities(manifest)
  served = combos.realisable(present)
  missing = [m for m, p in zip(schema.MODALITIES, present) if not p]
  left_out = {combos.NAMES[c]: "needs " + " and ".join(
      m for m, used in zip(schema.MODALITIES, combos.MASKS[c])
      if used and m in missing) + ", which the dataset does not have"
              for c in range(len(combos.NAMES)) if c not in served}
  return [combos.NAMES[c] for c in served], left_out


def names(results_dict: dict) -> list[str]:
  """The combinations of a results dict, in table order."""
  return results_dict.get("combinations", list(combos.NAMES))


def _missing_rate(config, found: dict) -> dict:
  return {"split": "test", "draws": config.missing_rate_draws,
          "seed": config.missing_rate_seed,
          "rates": {r: summarize_flat(v)
                    for r, v in found["missing_rate"].items()},
          "samples_without_modality": found["without_modality"]}


def _header(config, manifest, task) -> dict:
  """The fields that say what was run, shared by results.json and
  `experiments.evaluate`'s output."""
  served, left_out = combinations(manifest)
  return {"dataset": manifest.dataset, "task": task, "method": method(config),
          "regime": config.regime, "combinations": served,
          "left_out": left_out,
          "data": {"dir": config.data_dir, "format": manifest.format,
                   "synthetic": manifest.format == "synthetic"},
          "fold": config.fold or None,
          "selected_on": ("valid" if config.selection == "valid"
                          else "last epoch"),
          "headline": metrics.HEADLINE[task], "seeds": list(config.seeds)}


def results(*, config, manifest, task, found, selected_epoch, compiles,
            seconds, padding, timing) -> dict:
  """The results.json dict of one run (one fold); `found` holds the
  `evaluation.run` outputs of "valid" (fixed) and "test" (all); `timing`
  the run's `timing.summary`."""
  return _clean({
      **_header(config, manifest, task),
      "selected_epoch": selected_epoch,
      "test": summarize(found["test"]["fixed"]),
      "valid": summarize(found["valid"]["fixed"]),
      "missing_rate": _missing_rate(config, found["test"]),
      "test_samples_without_modality": found["test"]["fixed_without_modality"],
      "compiles": compiles,
      "padding": padding,
      "seconds": round(seconds, 1),
      **timing,
  })


def evaluation_results(config, manifest, task, split: str, found: dict,
                       source: str) -> dict:
  """`experiments.evaluate`'s output: results.json's fields for one split
  and the protocols that ran."""
  out = {**_header(config, manifest, task), "evaluated": source}
  if "fixed" in found:
    out[split] = summarize(found["fixed"])
    out[f"{split}_samples_without_modality"] = found["fixed_without_modality"]
  if "missing_rate" in found:
    out["missing_rate"] = {**_missing_rate(config, found), "split": split}
  return _clean(out)


def combine_folds(runs: list[dict]) -> dict:
  """Pools the results of every fold (results.json or
  `evaluation_results` dicts): statistics over all (fold, seed) runs."""
  def per_run(part, names):
    n = len(next(iter(part[names[0]].values()))["per_run"])
    return [{c: {k: v["per_run"][i] for k, v in part[c].items()}
             for c in names} for i in range(n)]
  first = runs[0]
  out = {k: first[k] for k in ("dataset", "task", "method", "regime",
                               "combinations", "left_out", "data",
                               "selected_on", "headline", "seeds",
                               "evaluated") if k in first}
  served = names(first)
  out.update(fold=None, folds=[r["fold"] for r in runs])
  for split in ("test", "valid"):
    if split in first:
      out[split] = summarize([r for run in runs
                              for r in per_run(run[split], served)])
    count = f"{split}_samples_without_modality"
    if count in first:
      out[count] = {c: sum(r[count][c] for r in runs) for c in served}
  if "missing_rate" in first:
    rates = first["missing_rate"]["rates"]
    out["missing_rate"] = {
        **{k: first["missing_rate"][k] for k in ("split", "draws", "seed")},
        "rates": {rate: summarize_flat([
            r[rate] for run in runs
            for r in per_run(run["missing_rate"]["rates"], [rate])])
                  for rate in rates},
        "samples_without_modality": {
            rate: sum(r["missing_rate"]["samples_without_modality"][rate]
                      for r in runs) for rate in rates}}
  for k in ("selected_epoch", "compiles", "padding", *timing.FIELDS):
    if k in first:
      out[k] = [r[k] for r in runs]
  if "seconds" in first:
    out["seconds"] = round(sum(r["seconds"] for r in runs), 1)
  return _clean(out)


def write_results(workdir: str, results_dict: dict) -> None:
  """Writes results.md, then results.json, each atomically: the presence of
  results.json means the run finished."""
  workdir_lib.write_text(os.path.join(workdir, "results.md"),
                         markdown([(results_dict["method"], results_dict)]))
  workdir_lib.write_text(os.path.join(workdir, workdir_lib.RESULTS_FILE),
                         json.dumps(results_dict, indent=1) + "\n")


_SHOWN = {"regression": ("f1_non0", "acc2_non0", "mae", "corr", "acc7"),
          "classification": ("wf1", "wa", "ua", "mf1")}
_UNCERTAINTY = ("ece", "sel_acc_80", "sel_acc_50", "s_err_spearman",
                *calibration.SCORES)


def _cell(m: dict) -> str:
  return ("n/a" if m["mean"] is None else
          f"{m['mean']:.3f} ± {m['std'] or 0:.3f}")


def markdown(rows: list[tuple[str, dict]], split: str = "test") -> str:
  """Paper-style Markdown tables over runs (rows = methods or ablations).

  One table per main metric (columns `a t v at av tv atv Avg`), one of the
  headline metric against the missing rate, and one of the uncertainty
  metrics averaged over the combinations; cells are mean ± std over seeds
  (and folds). `rows` pairs a label with a results.json dict; rows may
  differ in their combinations or missing rates (a sweep over them): the
  columns are all of them, "n/a" where a row has none.
  """
  first = rows[0][1]
  cols = [c for c in combos.NAMES
          if any(c in names(r) for _, r in rows)] + ["avg"]
  runs = len(first[split]["avg"][first["headline"]]["per_run"])
  out = [f"# {first['dataset']}: {split} metrics of the models selected on "
         f"{first['selected_on']}",
         "",
         f"Mean ± std over {runs} run(s) (seeds, and folds where there are).",
         "**SYNTHETIC DATA: these numbers say nothing about MCUR.**"
         if first["data"]["synthetic"] else
         f"Data: {first['data']['format']} features in {first['data']['dir']}."]
  for k in (k for k in _SHOWN[first["task"]] if k in first[split]["avg"]):
    out += ["", f"## {k}", "", "| method | " + " | ".join(
        "Avg" if c == "avg" else c for c in cols) + " |",
            "|---" * (len(cols) + 1) + "|"]
    out += [f"| {name} | " + " | ".join(
        _cell(r[split][c][k]) if c in r[split] else "n/a" for c in cols)
            + " |" for name, r in rows]
  with_rates = [(name, r) for name, r in rows if "missing_rate" in r]
  if with_rates:
    mr = with_rates[0][1]["missing_rate"]
    rates = sorted({rate for _, r in with_rates
                    for rate in r["missing_rate"]["rates"]}, key=float)
    out += ["", f"## {first['headline']} against the missing rate "
            f"({mr['split']}, GCNet semantics, mean of {mr['draws']} draws "
            "per run)", "", "| method | " + " | ".join(rates) + " |",
            "|---" * (len(rates) + 1) + "|"]
    out += [f"| {name} | " + " | ".join(
        _cell(r["missing_rate"]["rates"][rate][first["headline"]])
        if rate in r["missing_rate"]["rates"] else "n/a"
        for rate in rates) + " |" for name, r in with_rates]
    # With k modalities every rate from (k - 1) / k keeps exactly one.
    k = max(len(c) for _, r in with_rates for c in names(r))
    same = [rate for rate in rates if float(rate) >= (k - 1) / k - 1e-9]
    if len(same) > 1:
      out += ["", f"With {k} modalit{'ies' if k > 1 else 'y'}, rates "
              f"{', '.join(same)} all keep exactly one per utterance: one "
              "condition, whose columns differ only by their draws."]
  if _UNCERTAINTY[0] in first[split]["avg"]:
    shown = [k for k in _UNCERTAINTY if k in first[split]["avg"]]
    out += ["", "## uncertainty (SUGR score, then the confidence calibrated "
            "on valid; Avg over the combinations)",
            "", "| method | " + " | ".join(shown) + " |",
            "|---" * (len(shown) + 1) + "|"]
    out += [f"| {name} | " + " | ".join(
        _cell(r[split]["avg"][k]) if k in r[split]["avg"] else "n/a"
        for k in shown) + " |" for name, r in rows]
  return "\n".join(out) + "\n"


def table(results_dict: dict, split: str = "test") -> str:
  """A Markdown table, rows = metrics, columns = combinations and Avg."""
  cols = names(results_dict) + ["avg"]
  part = results_dict[split]
  runs = len(part["avg"][results_dict["headline"]]["per_run"])
  folds = len(results_dict.get("folds") or ())
  lines = [f"{results_dict['dataset']} {split}, mean ± std over "
           + (f"{folds} folds x {runs // folds} seed(s)" if folds else
              f"{runs} run(s)")
           + f", selected on {results_dict['selected_on']}"
           + synthetic_mark(results_dict),
           "| metric | " + " | ".join(cols) + " |",
           "|---" * (len(cols) + 1) + "|"]
  for k in _SHOWN[results_dict["task"]]:
    lines.append(f"| {k} | " + " | ".join(_cell(part[c][k]) for c in cols)
                 + " |")
  return "\n".join(lines)
