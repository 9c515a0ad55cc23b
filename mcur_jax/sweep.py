"""Sweeps: a list of config points, each trained into `WORKDIR/<point-name>/`.

A point is a dict of config overrides, e.g. `{"learning_rate": 3e-4,
"tau": 0.05}`. Points come from a sweep file (a Python file whose
`get_sweep()` returns a list of such dicts; `product(...)` builds grids) or
from `--grid FIELD=V1,V2,...` flags (their Cartesian product). The seeds of
a point (`config.seeds`) train together in one program with `jax.vmap`.

A point's values are first given its config field's type where that loses
nothing (`normalize`: 1 -> 1.0 for a float field, NumPy scalars -> Python,
lists -> tuples), so the same config always has the same point name. A name
longer than `MAX_NAME` characters is cut and ends in a hash of the whole.

Restartable: a point whose `results.json` exists is skipped, after checking
that it trained with this point's config and data (`workdir.check_resume`);
an unfinished one resumes from its checkpoints (`train.train_and_evaluate`
does that). Finished points that trained with another config or data (a
rerun with another `--data_dir` or `--config.*` value) are an error before
anything is written, so their results are never reported as this sweep's
nor marked failed. So rerunning the same command after
a crash or a preempted VM completes the sweep with the results an
uninterrupted one would have had.

Before any point trains, the config of every point of the shard that
has not finished is checked against its data as a run checks it
(`check_points`): a point that cannot run (a misspelt field, a value out of
range, a base config that cannot run) is an error naming every such point,
and nothing trains, so a typo in the tenth point is not found hours into a
sweep. (An unexpected error while checking, such as an unreadable
manifest, ends the sweep with its traceback.) A point whose run then
fails, for any reason but an interrupt (bad data, divergence, a busy
workdir, out of memory, a bug), is recorded in `WORKDIR/<point>/failed.json`
with its error (and the traceback of an unexpected one) and the sweep goes
on; the report lists it, and a rerun retries it.

Many machines: `shard=(i, n)` makes a process take points i, i+n, i+2n, ...
of the sweep's fixed order, so n machines sharing one workdir (a mounted
bucket or NFS) run disjoint slices without any scheduler.

Compiled programs: the sweep tool keeps every program JAX compiles in a
persistent cache (`compile_cache.configure`; its default for a sweep:
`WORKDIR/compilation_cache`, shared by the shards), so a point loads the
programs an earlier point (or an earlier run of the sweep) compiled
whenever the program is the same: same shapes and same config constants.
Config values are compiled in as constants, so points
that differ in a training field (learning_rate, tau, mcb_weight, ...) share
their evaluation, initialisation and selection programs but each compiles
its own epoch; a rerun, a resumed point and a sweep with other seeds (as
many) load everything.
"""

import hashlib
import itertools
import json
import os
import re
import traceback
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from mcur_jax import fit as fit_lib
from mcur_jax import run as run_lib
from mcur_jax import schema
from mcur_jax import train
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib

SWEEP_FILE = "sweep.json"
# Config fields that change neither a point's training nor its reported
# numbers (logs, figures, checkpoint timing, devices): a sweep that differs
# from the recorded one only in these extends it (`record`).
SAME_SWEEP = ("plots", "tensorboard", "checkpoint_every",
              "checkpoint_seconds", "num_devices", "distributed")
FAILED_FILE = "failed.json"
COMPILATION_CACHE = "compilation_cache"
# Longest point name (a directory name; file systems allow 255 bytes).
MAX_NAME = 120


def product(**fields: Sequence[Any]) -> list[dict[str, Any]]:
  """The Cartesian product of field values, e.g.
  `product(learning_rate=[1e-3, 3e-4], tau=[0.05, 0.1])` -> 4 points."""
  names = list(fields)
  return [dict(zip(names, values))
          for values in itertools.product(*(fields[n] for n in names))]


def parse_value(config: ml_collections.ConfigDict, field: str, text: str):
  """`text` as the type of `config.field`. Grid values are split at commas,
  so a `;` stands for a comma inside one: tuples as `a;b`, and
  comma-separated strings (`speaker_norm=audio;text` is "audio,text")."""
  if field not in config:
    raise validate.ConfigError(f"--grid {field}", "no such config field"
                               + validate.did_you_mean(field, config.keys()))
  current = config[field]
  if isinstance(current, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise validate.ConfigError(f"--grid {field}", f"{text!r} is not a bool")
    return text.lower() in ("true", "1")
  try:
    if isinstance(current, tuple):
      kind = type(current[0]) if current else str
      return tuple(kind(v) for v in text.split(";"))
    if isinstance(current, str):
      return text.replace(";", ",")
    return type(current)(text)
  except ValueError:
    raise validate.ConfigError(
        f"--grid {field}", f"{text!r} is not a {type(current).__name__}"
    ) from None


def grid_points(config, grid: Sequence[str]) -> list[dict[str, Any]]:
  """Points of `--grid FIELD=V1,V2` flags (`;` for a comma inside a value:
  `parse_value`)."""
  fields = {}
  for item in grid:
    field, sep, values = item.partition("=")
    if not sep or not values:
      raise validate.ConfigError("--grid", f"{item!r}: expected "
                                 "FIELD=V1,V2,...")
    if field in fields:
      raise validate.ConfigError(f"--grid {field}", "given twice: list its "
                                 "values in one flag (FIELD=V1,V2,...)")
    fields[field] = [parse_value(config, field, v) for v in values.split(",")]
  return product(**fields)


def _as_type(current, value):
  """`value` as the type of the config's `current` value where that loses
  nothing; otherwise `value` unchanged (`point_config` then reports it)."""
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, list):
    value = tuple(value)
  if isinstance(current, tuple) and isinstance(value, tuple) and current:
    return tuple(_as_type(current[0], v) for v in value)
  if isinstance(value, bool) or isinstance(current, bool):
    return value
  if isinstance(current, float) and isinstance(value, int):
    return float(value)
  if (isinstance(current, int) and isinstance(value, float)
      and value.is_integer()):
    return int(value)
  return value


def normalize(base: ml_collections.ConfigDict,
              point: dict[str, Any]) -> dict[str, Any]:
  """The point's values as the types of `base`'s fields (module
  docstring); unknown fields are left for `point_config` to report."""
  return {k: _as_type(base[k], v) if k in base else v
          for k, v in point.items()}


def point_name(point: dict[str, Any]) -> str:
  """A stable directory name, e.g. `learning_rate=0.0003,tau=0.05` (of a
  `normalize`d point); one over MAX_NAME characters is cut and ends in
  `+` and 16 hex digits of the whole name's sha256."""
  if not point:
    return "base"
  def text(v):
    return ";".join(map(str, v)) if isinstance(v, tuple) else str(v)
  name = ",".join(f"{k}={text(v)}" for k, v in sorted(point.items()))
  name = re.sub(r"[^A-Za-z0-9._=,;+-]", "_", name)
  if len(name) > MAX_NAME:
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    name = f"{name[:MAX_NAME - 17]}+{digest}"
  return name


def point_config(base: ml_collections.ConfigDict, point: dict[str, Any]):
  """A copy of `base` with the point's overrides (unknown fields fail); a
  `data_dir` is made absolute, so that the point's config.json finds its
  data from anywhere."""
  config = ml_collections.ConfigDict(base.to_dict())
  for field, value in point.items():
    if field not in config:
      raise validate.ConfigError(
          f"sweep point {point}", f"no config field {field!r}"
          f"{validate.did_you_mean(field, config.keys())}")
    if field == "seeds":
      raise validate.ConfigError(
          f"sweep point {point}", "may not set seeds: the seeds of a point "
          "train together; set --config.seeds for the sweep")
    if field == "data_dir":
      value = os.path.abspath(value)
    try:
      config[field] = value
    except TypeError as e:
      raise validate.ConfigError(f"sweep point {point}",
                                 f"{field}: {e}") from None
  return config


def shard_points(points: list, index: int, count: int) -> list:
  """Points index, index + count, ... (0 <= index < count)."""
  if not 0 <= index < count:
    raise validate.ConfigError("--shard", f"{index}/{count}: need "
                               "0 <= i < n")
  return points[index::count]


def check_points(base, points: list[dict[str, Any]], prepare=None,
                 source: str = "sweep") -> dict[str, ml_collections.ConfigDict]:
  """{name: config} of the (`normalize`d) points, each checked against its
  data as a run checks it (`run.check_config`) before any trains.

  Raises:
    validate.ConfigError (field `source`, the sweep file or the grid):
      points that cannot run, every one named with its error (one error
      shared by every point, as from the base config, said once).
  """
  configs, problems = {}, {}
  for point in points:
    name = point_name(point)
    try:
      config = _prepared(base, point, prepare)
      run_lib.check_config(config, schema.Manifest.load(config.data_dir))
    except train.INPUT_ERRORS as e:
      problems.setdefault(str(e), []).append(name)
      continue
    configs[name] = config
  if problems:
    said = [f"{'every point' if len(names) == len(points) else ', '.join(names)}"
            f": {error}" for error, names in problems.items()]
    raise validate.ConfigError(source, f"{len(points) - len(configs)} of "
                               f"{len(points)} points cannot run, none "
                               f"trained: {'; '.join(said)}")
  return configs


def check_distinct(base, points: list[dict[str, Any]],
                   source: str = "sweep") -> None:
  """Raises validate.ConfigError (field `source`) for two (`normalize`d)
  points of one config under different names ({} and a field at its base
  value): they would train the same model twice. Points whose config
  cannot be made are left to `check_points`."""
  seen = {}
  for point in points:
    try:
      config = point_config(base, point)
    except validate.ConfigError:
      continue
    name = point_name(point)
    other = seen.setdefault(config.to_json_best_effort(sort_keys=True), name)
    if other != name:
      raise validate.ConfigError(source, f"points {other} and {name} are one "
                                 "config: list it once")


def record(workdir: str, base, points: list[dict[str, Any]]) -> None:
  """Writes `WORKDIR/sweep.json` (every point, for the report); the same
  content from every shard, written atomically. A sweep of the same base
  config (the fields of `SAME_SWEEP` aside) extends the one recorded there
  (its points first, then the new ones), so a second grid adds to the
  report; another base replaces it."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, SWEEP_FILE)
  spec = json.loads(json.dumps(
      {"base": json.loads(base.to_json_best_effort()),
       "points": [{"name": point_name(p), "overrides": p} for p in points]},
      default=str))
  trained = lambda b: {k: v for k, v in b.items() if k not in SAME_SWEEP}
  if os.path.exists(path):
    with open(path) as f:
      recorded = json.load(f)
    if trained(recorded["base"]) == trained(spec["base"]):
      new = {p["name"] for p in spec["points"]}
      spec["points"] = [p for p in recorded["points"]
                        if p["name"] not in new] + spec["points"]
  workdir_lib.write_text(path, json.dumps(spec, indent=1))


def _prepared(base, point, prepare) -> ml_collections.ConfigDict:
  """The point's config, completed by `prepare` (see `run`)."""
  config = point_config(base, point)
  if prepare is not None:
    prepare(config, point)
  return config


def _resume_changes(out: str, config) -> list[str]:
  """`workdir.check_resume` of the finished point in `out`; for a
  cross-validated one (its folds in `out/fold<k>/`, no config.json at the
  top), of every fold, each with its fold."""
  folds = workdir_lib.started_folds(out)
  if os.path.exists(os.path.join(out, workdir_lib.CONFIG_FILE)) or not folds:
    return workdir_lib.check_resume(out, config)
  changed = set()
  for fold_dir in folds:
    fold = schema.fold_of(fold_dir)
    changed.update(workdir_lib.check_resume(fold_dir,
                                            train.of_fold(config, fold)))
  return sorted(changed)


def check_finished(base, workdir: str, points: list[dict[str, Any]],
                   prepare=None) -> dict[str, tuple]:
  """{name: (config, outputs to write again)} of the finished (`normalize`d)
  points, each checked against the run in its directory
  (`workdir.check_resume`; `workdir.new_outputs`).

  Raises:
    validate.ConfigError: finished points that trained with another config
      or data, every one named, the first with its differences.
  """
  resumed, differ = {}, {}
  for point in points:
    name = point_name(point)
    try:
      config = _prepared(base, point, prepare)
      resumed[name] = (config, workdir_lib.new_outputs(
          _resume_changes(os.path.join(workdir, name), config), config))
    except train.INPUT_ERRORS as e:
      differ[name] = str(e)
  if differ:
    first = next(iter(differ))
    raise validate.ConfigError(
        "--workdir", f"{len(differ)} finished point(s) of {workdir} trained "
        f"with another config or data ({', '.join(differ)}), nothing run or "
        f"written: rerun with the flags they trained with, or sweep into a "
        f"new --workdir. {first}: {differ[first]}")
  return resumed


def _finished(out: str) -> bool:
  """Whether the point in `out` has its results; on a multi-host slice
  process 0 decides for all, so every host takes the same branch."""
  return workdir_lib.agree(os.path.exists(os.path.join(
      out, workdir_lib.RESULTS_FILE)))


def run(base: ml_collections.ConfigDict, workdir: str,
        points: list[dict[str, Any]], shard: tuple[int, int] = (0, 1),
        log=print, prepare=None, source: str = "sweep") -> dict[str, str]:
  """Trains this shard's points; returns {name: "done" | "skipped" |
  "failed"}.

  Points are `normalize`d first; their names and configs must then be
  distinct (`check_distinct`), every point of this shard that has not
  finished must pass a run's checks (`check_points`), and every finished
  one must have trained with its config and data (`check_finished`):
  otherwise an error before any point trains or sweep.json changes.
  `prepare(config, point)`, when given, completes each point's config
  before it is checked: the entry point takes the dataset of a `data_dir`
  point from its manifest. `source` names the points' origin in errors
  (the sweep file, the grid).
  """
  points = [normalize(base, p) for p in points]
  names = [point_name(p) for p in points]
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise validate.ConfigError(source, "points of the same config, listed "
                               f"twice: {', '.join(twice)}")
  check_distinct(base, points, source)
  mine = shard_points(points, *shard)
  finished = {point_name(p): _finished(os.path.join(workdir, point_name(p)))
              for p in mine}
  configs = check_points(base, [p for p in mine
                                if not finished[point_name(p)]],
                         prepare, source)
  resumed = check_finished(base, workdir, [p for p in mine
                                           if finished[point_name(p)]],
                           prepare)
  record(workdir, base, points)
  status = {}
  for k, point in enumerate(mine):
    name = point_name(point)
    if k and fit_lib.stop_requested():
      raise fit_lib.Interrupted(
          f"stopped before point {name}: {workdir} keeps the points done, "
          "and the same command resumes")
    out = os.path.join(workdir, name)
    failed = os.path.join(out, FAILED_FILE)
    done = finished[name]
    try:
      config, changed = resumed[name] if done else (configs[name], [])
      if changed:
        # Finished again: its training is done, its outputs are not.
        log(f"[{k + 1}/{len(mine)}] {name}: finished before; "
            f"{', '.join(changed)} changed: evaluating again")
        train.train_and_evaluate(config, out)
      elif done:
        log(f"[{k + 1}/{len(mine)}] {name}: finished before, skipped")
      else:
        log(f"[{k + 1}/{len(mine)}] {name}")
        train.train_and_evaluate(config, out)
    except Exception as e:  # pylint: disable=broad-except
      # Any failure of one point: recorded, and the sweep goes on.
      error = {"error": str(e), "type": type(e).__name__}
      if not isinstance(e, train.RUN_FAILURES):
        error["traceback"] = traceback.format_exc()
        log(error["traceback"])
      log(f"[{k + 1}/{len(mine)}] {name}: FAILED: {error['error']}")
      if jax.process_index() == 0:
        os.makedirs(out, exist_ok=True)
        workdir_lib.write_json(failed, error)
      status[name] = "failed"
      continue
    # A failure recorded before (a retried point, or a finished one checked
    # against another config) no longer holds.
    if jax.process_index() == 0 and os.path.exists(failed):
      os.remove(failed)
    status[name] = "skipped" if done and not changed else "done"
  return status
