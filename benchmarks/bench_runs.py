"""Whole runs, timed: the README's training commands end to end, per
compute dtype, within a deadline (a lease of an accelerator is short).

    python benchmarks/bench_runs.py [--mosi DIR] [--iemocap DIR]
        [--dtypes float32,bfloat16] [--deadline 540] [--workdir DIR]
        [--compilation_cache DIR] [--json FILE] [--short]

Runs, one at a time and each in a process of its own (a user's cold
start: Python, JAX's backend, compiling), `python -m experiments.mosi
--data_dir MOSI` and then `python -m experiments.iemocap --data_dir
IEMOCAP` (5 folds x 5 seeds) with each of `--dtypes`
(`--config.compute_dtype`); a dataset whose directory is absent is
skipped. Each run gets what is left of `--deadline` seconds and is stopped
when it is spent (the figures of its finished folds are still reported).
Prints per run the wall seconds, and from its results.json (a stopped
run: each finished fold's) the seconds it recorded, `seconds_by_phase`,
training's parts (`seconds_within_phase`), the largest
`compile_seconds` and the test Avg of the headline metric; `--json` is
rewritten after every run. The runs share a persistent compilation cache
that starts empty (a first run of each program compiles it), unless
`--compilation_cache DIR` names one: the same command run twice with it
measures, the second time, runs that load their programs. `--short`:
the tiny config on a small synthetic MOSI with each dtype (seconds; for
CI).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from data_prep import synthetic
from data_prep import writer
from mcur_jax import timing
from mcur_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_one(name: str, module: str, data_dir: str, dtype: str, out: str,
            limit: float, extra=(), cache: str = "off") -> dict:
  """One run of `experiments.<module>`, stopped after `limit` seconds; its
  figures (results.json's, or the finished folds' when stopped).
  `cache`: its --compilation_cache."""
  command = [sys.executable, "-m", f"experiments.{module}", "--data_dir",
             os.path.abspath(data_dir), "--workdir", out, *extra,
             f"--compilation_cache={cache}",
             f"--config.compute_dtype={dtype}"]
  start = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=limit)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    status = ("finished" if done.returncode == 0 else
              f"exit {done.returncode}: {last}")
  except subprocess.TimeoutExpired:
    status = f"stopped at the deadline ({limit:.0f} s)"
  found = {"run": name, "dtype": dtype, "status": status,
           "wall_s": round(time.perf_counter() - start, 1)}
  if os.path.exists(os.path.join(out, workdir_lib.RESULTS_FILE)):
    found.update(figures(out))
  else:
    found["folds_finished"] = {
        os.path.basename(d): figures(d) for d in workdir_lib.started_folds(out)
        if os.path.exists(os.path.join(d, workdir_lib.RESULTS_FILE))}
  return found


def figures(workdir: str) -> dict:
  """The timing and test Avg of a finished run (or fold) in `workdir`."""
  with open(os.path.join(workdir, workdir_lib.RESULTS_FILE)) as f:
    results = json.load(f)
  headline = results["headline"]
  return {"seconds": results["seconds"],
          "test_avg": round(results["test"]["avg"][headline]["mean"], 4),
          "headline": headline,
          **{k: results[k] for k in timing.FIELDS if k in results}}


def describe(r: dict) -> str:
  """A run's figures: one line, the first fold's phases for folds; a
  stopped run, a line per finished fold."""
  line = f"{r['run']} {r['dtype']}: {r['status']}, {r['wall_s']} s wall"
  if "seconds" in r:
    line += _timing(r)
  folds = r.get("folds_finished")
  if folds is not None:
    line += "; folds finished: " + (", ".join(folds) or "none")
    line += "".join(f"\n  {name}:{_timing(f)}" for name, f in folds.items())
  return line


def _timing(r: dict) -> str:
  """Recorded seconds, test Avg, phases and the 3 largest compiles."""
  line = (f" {r['seconds']} s recorded, test Avg {r['headline']} "
          f"{r['test_avg']}")
  if isinstance(r.get("seconds_by_phase"), list):
    line += "; fold 1"
  # A cross-validated run's results.json lists each field per fold.
  phases, within, compiled = (
      v[0] if isinstance(v, list) else v
      for v in (r.get(k) for k in ("seconds_by_phase", "seconds_within_phase",
                                   "compile_seconds")))
  if phases:
    line += "; phases (s) " + ", ".join(f"{k} {v}" for k, v in phases.items())
  if within and "train" in within:
    line += "; train = " + " + ".join(
        f"{k} {v}" for k, v in within["train"].items())
  if compiled:
    line += "; compile (s: trace, lower and XLA, within the phases) " + (
        ", ".join(f"{k} {v}" for k, v in list(compiled.items())[:3]))
  return line


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--mosi", default=os.path.join("prepared", "mosi"))
  parser.add_argument("--iemocap", default=os.path.join("prepared",
                                                        "iemocap4"))
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--deadline", type=float, default=540.0,
                      help="seconds for all runs together")
  parser.add_argument("--workdir", help="where the runs write (default: a "
                      "temporary directory, removed after)")
  parser.add_argument("--compilation_cache", help="JAX's persistent "
                      "compilation cache of the runs, or off (default: a "
                      "new, empty one in the temporary directory)")
  parser.add_argument("--json", help="also write the figures to this file")
  parser.add_argument("--short", action="store_true",
                      help="the tiny config on a small synthetic MOSI")
  args = parser.parse_args()
  end = time.perf_counter() + args.deadline
  found = []
  with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
    cache = args.compilation_cache or os.path.join(tmp, "compilation_cache")
    if cache != "off" and "://" not in cache:
      cache = os.path.abspath(cache)  # The runs start elsewhere.
    if args.short:
      data = os.path.join(tmp, "synthetic-mosi")
      writer.write(synthetic.generate("mosi", seed=0, scale=0.05), data)
      plan = [("synthetic MOSI (tiny)", "mosi", data,
               ("--config", "experiments/configs/mosi.py:tiny"))]
    else:
      plan = [("MOSI", "mosi", args.mosi, ()),
              ("IEMOCAP-4 5 folds", "iemocap", args.iemocap, ())]
    for name, module, data_dir, extra in plan:
      if not os.path.isdir(data_dir):
        print(f"{name}: skipped, no prepared data in {data_dir}")
        continue
      for dtype in args.dtypes.split(","):
        left = end - time.perf_counter()
        if left < 10:
          print(f"{name} {dtype}: skipped, {left:.0f} s of the deadline left")
          continue
        out = os.path.join(tmp, f"{module}-{dtype}")
        found.append(run_one(name, module, data_dir, dtype, out, left, extra,
                             cache))
        print(describe(found[-1]), flush=True)
        if args.json:  # After every run: a process stopped later keeps it.
          workdir_lib.write_text(args.json, json.dumps(found, indent=1))


if __name__ == "__main__":
  main()
