"""Sweeps: points, names, shards, restart after a kill, and the report."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from experiments.configs import mosi
from mcur_jax import combos
from mcur_jax import fit as fit_lib
from mcur_jax import sweep
from mcur_jax import sweep_report
from mcur_jax import validate
from tests import runs

# About 3 minutes on 2 cores: conftest schedules the slow modules first.
pytestmark = pytest.mark.slow(minutes=3)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Fields that change no compiled program: the points load one set of
# programs from the module's compilation cache instead of compiling four.
GRID = ["--grid", "checkpoint_every=1,2", "--grid", "missing_rate_seed=0,1"]


def test_product_and_grid_points_parse_with_the_fields_types():
  config = mosi.get_config("tiny")
  points = sweep.grid_points(config, ["learning_rate=1e-3,3e-4",
                                      "sugr=true,false", "num_layers=1",
                                      "combo_weights=1;0;0;0;0;0;1"])
  assert len(points) == 4
  assert points[0] == {"learning_rate": 1e-3, "sugr": True, "num_layers": 1,
                       "combo_weights": (1.0, 0, 0, 0, 0, 0, 1.0)}
  # A string field's comma-separated value: `;` inside one grid value.
  assert [p["speaker_norm"] for p in sweep.grid_points(
      config, ["speaker_norm=,audio;text"])] == ["", "audio,text"]
  assert sweep.product(a=[1, 2], b=["x"]) == [{"a": 1, "b": "x"},
                                              {"a": 2, "b": "x"}]
  with pytest.raises(ValueError, match="lr: no such config field; did you "
                     "mean 'learning_rate'"):
    sweep.grid_points(config, ["lr=1"])
  with pytest.raises(validate.ConfigError, match="is not a bool"):
    sweep.grid_points(config, ["sugr=maybe"])
  with pytest.raises(validate.ConfigError, match="'abc' is not a float"):
    sweep.grid_points(config, ["learning_rate=abc"])
  with pytest.raises(validate.ConfigError, match="'1;x;0' is not a tuple"):
    sweep.grid_points(config, ["combo_weights=1;x;0"])
  # A field given twice would keep only its last flag's values.
  with pytest.raises(validate.ConfigError,
                     match="--grid tau: given twice"):
    sweep.grid_points(config, ["tau=0.1", "tau=0.2"])


def test_point_names_are_stable_and_distinct():
  a = sweep.point_name({"tau": 0.1, "learning_rate": 0.001})
  assert a == sweep.point_name({"learning_rate": 0.001, "tau": 0.1})
  assert a == "learning_rate=0.001,tau=0.1"
  assert sweep.point_name({}) == "base"
  assert "/" not in sweep.point_name({"missing_tokens": "a/b"})


def test_one_config_has_one_point_name():
  """Values take their field's type where that loses nothing, so `1` and
  `1.0` (or NumPy scalars, or a list for a tuple) name one point; a value
  that would lose something stays and fails in point_config, naming the
  field; long names are cut, distinct, and end in a hash."""
  base = mosi.get_config("tiny")
  name = lambda p: sweep.point_name(sweep.normalize(base, p))
  assert (name({"learning_rate": 1}) == name({"learning_rate": 1.0})
          == name({"learning_rate": np.float32(1)}) == "learning_rate=1.0")
  assert name({"hidden_dim": np.int64(64)}) == name({"hidden_dim": 64.0}) \
      == "hidden_dim=64"
  assert name({"combo_weights": [1, 0, 0, 1, 0, 0, 1]}) == name(
      {"combo_weights": (1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0)})
  assert sweep.normalize(base, {"sugr": 1}) == {"sugr": 1}
  with pytest.raises(validate.ConfigError, match="hidden_dim"):
    sweep.point_config(base, sweep.normalize(base, {"hidden_dim": 64.5}))
  rates = [tuple(i / k for i in range(8)) for k in (70, 71)]
  long = [name({"missing_rates": r, "combo_weights": (1 / 7,) * 7})
          for r in rates]
  assert all(len(n) == sweep.MAX_NAME for n in long)
  assert long[0] != long[1] and long[0][:60] == long[1][:60]


def test_point_config_overrides_a_copy_and_rejects_unknown_fields():
  base = mosi.get_config("tiny")
  before = base.tau
  config = sweep.point_config(base, {"tau": before + 0.5})
  assert config.tau == before + 0.5 and base.tau == before
  with pytest.raises(ValueError, match="no config field"):
    sweep.point_config(base, {"tua": 0.3})
  with pytest.raises(ValueError, match="seeds"):
    sweep.point_config(base, {"seeds": (1,)})


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_shards_partition_the_points(count):
  points = [{"i": i} for i in range(10)]
  shards = [sweep.shard_points(points, i, count) for i in range(count)]
  flat = [p["i"] for s in shards for p in s]
  assert sorted(flat) == list(range(10))
  assert all(len(s) in (10 // count, -(-10 // count)) for s in shards)
  with pytest.raises(ValueError):
    sweep.shard_points(points, count, count)


def test_duplicate_points_are_refused(tmp_path):
  with pytest.raises(validate.ConfigError, match="listed twice: tau=0.1$"):
    sweep.run(mosi.get_config("tiny"), str(tmp_path),
              [{"tau": 0.1}, {"tau": 0.2}, {"tau": 0.1}])
  with pytest.raises(validate.ConfigError, match="listed twice: tau=1.0$"):
    sweep.run(mosi.get_config("tiny"), str(tmp_path), [{"tau": 1},
                                                       {"tau": 1.0}])


def test_a_second_grid_of_the_same_base_extends_the_sweep(tmp_path):
  """sweep.json: a sweep with the same base config adds its points after
  the recorded ones (a point in both stays once); another base replaces
  the list, since the old points' results are not of this config."""
  base = mosi.get_config("tiny")
  read = lambda: [p["name"] for p in json.loads(
      (tmp_path / sweep.SWEEP_FILE).read_text())["points"]]
  sweep.record(str(tmp_path), base, [{"tau": 0.1}, {"tau": 0.2}])
  sweep.record(str(tmp_path), base, [{"tau": 0.2}, {"tau": 0.3}])
  assert read() == ["tau=0.1", "tau=0.2", "tau=0.3"]
  sweep.record(str(tmp_path), base, [{"tau": 0.1}])
  assert read() == ["tau=0.2", "tau=0.3", "tau=0.1"]
  # Logging, checkpoint timing and devices do not make another base.
  logged = mosi.get_config("tiny")
  logged.tensorboard = not base.tensorboard
  logged.checkpoint_every = 3
  sweep.record(str(tmp_path), logged, [{"tau": 0.5}])
  assert read() == ["tau=0.2", "tau=0.3", "tau=0.1", "tau=0.5"]
  # Another missing-rate protocol reports other numbers: another sweep.
  rates = mosi.get_config("tiny")
  rates.missing_rates = (0.0, 0.5)
  sweep.record(str(tmp_path), rates, [{"tau": 0.6}])
  assert read() == ["tau=0.6"]
  sweep.record(str(tmp_path), base, [{"tau": 0.2}, {"tau": 0.3},
                                     {"tau": 0.1}, {"tau": 0.5}])
  # A command refused (here: its shard) leaves the record as it was.
  other = mosi.get_config("tiny")
  other.num_epochs = 5
  with pytest.raises(validate.ConfigError, match="--shard"):
    sweep.run(other, str(tmp_path), [{"tau": 0.4}], shard=(2, 2))
  assert read() == ["tau=0.2", "tau=0.3", "tau=0.1", "tau=0.5"]
  sweep.record(str(tmp_path), other, [{"tau": 0.4}])
  assert read() == ["tau=0.4"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Subprocess environment sharing one persistent XLA compilation cache,
  so the repeated sweeps of this module compile each function once."""
  return {**os.environ,
          "JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla")),
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(runs.synthetic_dir(tmp_path_factory, "mosi", 0.1))


def run_sweep(env, data_dir, workdir, *extra, wait=True):
  """`python -m experiments.sweep` on the tiny config; the completed
  process, or with wait=False the running one."""
  command = [sys.executable, "-m", "experiments.sweep", "--config",
             os.path.join(ROOT, "experiments/configs/mosi.py:tiny"),
             "--data_dir", data_dir, "--workdir", str(workdir),
             "--config.seeds=0", "--config.num_devices=1",
             # Live logs are not what these tests check.
             "--config.tensorboard=False", *extra]
  if not wait:
    return subprocess.Popen(command, cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  return subprocess.run(command, cwd=ROOT, env=env, capture_output=True,
                        text=True)


def results(workdir):
  out = {}
  for name in sorted(os.listdir(workdir)):
    path = os.path.join(workdir, name, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        r = json.load(f)
      out[name] = (r["test"], r["valid"], r["selected_epoch"])
  return out


# Extended (--full): the parts each run by default elsewhere (a finished
# point skipped: test_multiprocess; a killed run resumed: test_faults; a
# finished point evaluated again: test_faults' failed-point test), here in
# one sweep killed by SIGKILL (four sweeps, about 2 minutes on 2 cores).
@pytest.mark.extended
def test_killed_sweep_completes_on_rerun_with_uninterrupted_results(
    env, data_dir, tmp_path):
  """A sweep killed (SIGKILL) inside its second point completes when rerun:
  the finished point is skipped, the other resumes from its checkpoint, and
  every point's results equal those of an uninterrupted sweep."""
  args = ("--grid", "tau=0.05,0.1", "--config.num_epochs=6")
  whole = tmp_path / "whole"
  assert run_sweep(env, data_dir, whole, *args).returncode == 0
  assert len(results(whole)) == 2

  killed = tmp_path / "killed"
  proc = run_sweep(env, data_dir, killed, *args, wait=False)
  second = killed / "tau=0.1" / "checkpoints"
  deadline = time.time() + 300
  while not (second.exists() and any(p.isdigit() for p in os.listdir(second))):
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert list(results(killed)) == ["tau=0.05"]

  rerun = run_sweep(env, data_dir, killed, *args)
  assert rerun.returncode == 0, rerun.stderr
  assert "tau=0.05: finished before, skipped" in rerun.stdout
  assert "resuming after epoch" in rerun.stdout
  assert results(killed) == results(whole)

  # A finished point asked for other outputs after training (a changed
  # missing-rate protocol) is evaluated again, not reported as it was.
  again = run_sweep(env, data_dir, killed, *args,
                    "--config.missing_rates=(0.0,0.5)")
  assert again.returncode == 0, again.stderr
  assert ("tau=0.05: finished before; missing_rates changed: evaluating "
          "again") in again.stdout
  rates = json.loads((killed / "tau=0.05" / "results.json").read_text())[
      "missing_rate"]["rates"]
  assert list(rates) == ["0.0", "0.5"]
  assert results(killed) == results(whole)  # Training untouched.


def test_a_stop_request_ends_the_sweep_before_its_next_point(data_dir,
                                                             tmp_path,
                                                             monkeypatch):
  """A stop requested (Ctrl-C, `fit.STOP_REQUESTED`) in a point's last
  epoch: the point finishes and the sweep stops before the next one, with
  Interrupted, not a failed point."""
  base = mosi.get_config("tiny")
  base.update(data_dir=data_dir, seeds=(0,), num_devices=1, num_epochs=1,
              tensorboard=False)
  with runs.ctrl_c_in_every_epoch(monkeypatch), pytest.raises(
      fit_lib.Interrupted,
      match=r"stopped before point tau=0\.1: .* keeps the points done"):
    sweep.run(base, str(tmp_path), [{"tau": 0.05}, {"tau": 0.1}],
              log=lambda *_: None)
  assert (tmp_path / "tau=0.05" / "results.json").exists()
  assert not (tmp_path / "tau=0.1").exists()


def test_sharded_processes_cover_the_sweep(env, data_dir, tmp_path):
  """Two processes given shards 0/2 and 1/2 of a 4-point sweep train two
  points each, disjoint, and together all four. With no cache named (nor
  in the environment) they share the sweep's own, WORKDIR/compilation_cache,
  and since the grid's fields change no compiled program the second shard
  loads every program the first compiled and compiles none."""
  env = {k: v for k, v in env.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  cache = tmp_path / sweep.COMPILATION_CACHE
  trained, programs = [], []
  for shard in ("0/2", "1/2"):
    proc = run_sweep(env, data_dir, tmp_path, *GRID, "--shard", shard,
                     "--config.num_epochs=1")
    assert proc.returncode == 0, proc.stderr
    trained.append(set(re.findall(r"^\[\d/2\] (\S+)$", proc.stdout,
                                  re.MULTILINE)))
    programs.append(sorted(os.listdir(cache)))
  assert [len(names) for names in trained] == [2, 2]
  assert programs[0] and programs[1] == programs[0]
  assert trained[0] | trained[1] == set(results(tmp_path))
  assert len(results(tmp_path)) == 4


def test_data_dir_points_take_their_dataset_and_an_absolute_path(
    env, data_dir, tmp_path, tmp_path_factory):
  """A sweep over data_dir, given relative to the working directory: each
  point trains on its own directory's dataset (MOSEI data under the MOSI
  config, as --data_dir would), and its config.json names the data by an
  absolute path, so that evaluate and predict find it from anywhere."""
  mosei = runs.synthetic_dir(tmp_path_factory, "mosei", 0.01)
  values = [os.path.relpath(d, ROOT) for d in (data_dir, mosei)]
  proc = run_sweep(env, data_dir, tmp_path, "--grid",
                   f"data_dir={','.join(values)}", "--config.num_epochs=1")
  assert proc.returncode == 0, proc.stderr
  found = {}
  for name in os.listdir(tmp_path):
    path = tmp_path / name / "config.json"
    if path.exists():
      config = json.loads(path.read_text())
      found[config["dataset"]] = config["data_dir"]
  assert found == {"mosi": str(data_dir), "mosei": str(mosei)}


def test_bad_grid_exits_2_with_one_line(env, data_dir, tmp_path):
  """A misspelt --grid field: exit 2 with one line, and no workdir left
  behind (not even the compilation cache folder the sweep made in it)."""
  proc = run_sweep(env, data_dir, tmp_path / "sweep", "--grid", "nope=1")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --grid nope: no such config field"]
  assert not (tmp_path / "sweep").exists()
  # A field both in the sweep file's points and in --grid: refused, not
  # silently taken from the grid.
  proc = run_sweep(env, data_dir, tmp_path, "--sweep",
                   "experiments/sweeps/mosi_small.py", "--grid", "tau=0.1")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --grid tau: also set by the points of "
      "experiments/sweeps/mosi_small.py: sweep it in one place"]


@pytest.mark.parametrize("text, error", [
    ("x = 1", "defines no get_sweep()"),
    ("def get_sweep():\n  return {'tau': [0.1]}",
     "get_sweep() returned {'tau': [0.1]}; expected a non-empty list"),
    ("def get_sweep():\n  return []", "get_sweep() returned []; expected"),
])
def test_a_sweep_file_that_gives_no_points_is_an_error_naming_it(
    tmp_path, text, error):
  from experiments import sweep as cli  # pylint: disable=g-import-not-at-top
  path = tmp_path / "points.py"
  path.write_text(text)
  with pytest.raises(validate.ConfigError,
                     match=re.escape(f"--sweep: {path}: {error}")):
    cli.file_points(str(path))


def fake_sweep(workdir, scores, field="tau", methods=None):
  """A sweep workdir with results whose valid and test scores are given:
  {value: (valid, test)}; the point with value 0.3 is unfinished."""
  base = ml_collections.ConfigDict({field: 0.1})
  points = [{field: t} for t in [*scores, 0.3]]
  sweep.record(str(workdir), base, points)
  for tau, (valid, test) in scores.items():
    def part(value):
      entry = {"mean": value, "std": 0.01, "per_run": [value - 0.01,
                                                        value + 0.01]}
      return {c: {"f1_non0": entry} for c in [*combos.NAMES, "avg"]}
    out = workdir / sweep.point_name({field: tau})
    out.mkdir()
    (out / "results.json").write_text(json.dumps(
        {"headline": "f1_non0", "valid": part(valid), "test": part(test),
         "dataset": "mosi", "task": "regression",
         "method": (methods or {}).get(tau, "MCUR"), "selected_on": "valid",
         "data": {"synthetic": False, "format": "poria", "dir": "d"}}))


def test_report_ranks_by_validation_never_test(tmp_path):
  fake_sweep(tmp_path, {0.05: (0.70, 0.60), 0.1: (0.65, 0.80),
                        0.2: (0.72, 0.50)})
  text, _ = sweep_report.write(str(tmp_path))
  rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
  taus = [line.split("|")[3].strip() for line in rows]
  assert taus == ["0.2", "0.05", "0.1", "0.3"]
  # The point column names each point's directory under the sweep.
  assert [line.split("|")[2].strip() for line in rows] == [
      sweep.point_name({"tau": t}) for t in (0.2, 0.05, 0.1, 0.3)]
  assert "unfinished" in rows[-1]
  text = (tmp_path / "sweep_report.csv").read_bytes().decode()
  assert "\r" not in text  # Unix line ends: awk and cut see clean fields.
  lines = text.splitlines()
  assert lines[0].startswith("name,tau,valid,valid_std,test")
  assert [float(line.split(",")[2]) for line in lines[1:4]] == [0.72, 0.70,
                                                                 0.65]
  png = (tmp_path / "sweep_report.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 5000
  # results.md: the paper-style table, a row per finished point in sweep
  # order, named by the point where the method labels coincide.
  paper = (tmp_path / "results.md").read_text()
  rows = [line.split("|")[1].strip() for line in paper.splitlines()
          if line.startswith("| MCUR")]
  assert rows[:3] == ["MCUR [tau=0.05]", "MCUR [tau=0.1]", "MCUR [tau=0.2]"]


def test_a_failed_attempt_outranks_an_earlier_points_results(tmp_path):
  """A point with a results.json whose last attempt failed (a finished
  point evaluated again for outputs it lacked, say) is listed as FAILED,
  in the table, the CSV and results.md, not ranked with the old
  results."""
  fake_sweep(tmp_path, {0.05: (0.70, 0.60), 0.1: (0.65, 0.80)})
  (tmp_path / sweep.point_name({"tau": 0.05}) / sweep.FAILED_FILE
   ).write_text(json.dumps({"error": "num_epochs: 2 -> 3", "type": "X"}))
  text, _ = sweep_report.write(str(tmp_path))
  rows = [line for line in text.splitlines() if line.startswith("| ")][1:]
  assert rows[0].split("|")[1:4] == [" 1 ", " tau=0.1 ", " 0.1 "]
  assert "FAILED: num_epochs: 2 -> 3" in rows[1] and "0.7000" not in text
  with open(tmp_path / "sweep_report.csv") as f:
    assert [line.split(",")[1] for line in f.read().splitlines()[1:]] == [
        "0.1", "0.05", "0.3"]
  paper = (tmp_path / "results.md").read_text()
  assert "0.600" not in paper and "| MCUR | 0.800 ± 0.010 |" in paper


def test_ablation_rows_are_named_by_method(tmp_path):
  fake_sweep(tmp_path, {0.0: (0.70, 0.60), 0.1: (0.65, 0.80)},
             field="mcb_weight", methods={0.0: "MCUR w/o MCB-CL"})
  sweep_report.write(str(tmp_path))
  paper = (tmp_path / "results.md").read_text()
  assert "| MCUR w/o MCB-CL | 0.600 ± 0.010 |" in paper
  assert "| MCUR | 0.800 ± 0.010 |" in paper


def test_report_of_points_overriding_different_fields(tmp_path):
  """The ablation's shape: a base point with no overrides and points that
  each set another field; a field a point leaves alone shows the base
  config's value (in the table, the CSV and the plot)."""
  base = ml_collections.ConfigDict({"mcb_weight": 0.3, "sugr": True})
  points = [{}, {"mcb_weight": 0.0}, {"sugr": False}]
  sweep.record(str(tmp_path), base, points)
  for point, valid in zip(points, (0.70, 0.72, 0.68)):
    entry = {"mean": valid, "std": 0.01, "per_run": [valid]}
    out = tmp_path / sweep.point_name(point)
    out.mkdir()
    (out / "results.json").write_text(json.dumps(
        {"headline": "f1_non0", "dataset": "mosi", "task": "regression",
         "method": "MCUR", "selected_on": "valid",
         "data": {"synthetic": False, "format": "npz", "dir": "d"},
         **{split: {c: {"f1_non0": entry} for c in [*combos.NAMES, "avg"]}
            for split in ("valid", "test")}}))
  text, _ = sweep_report.write(str(tmp_path))
  rows = [line.split("|")[2:5] for line in text.splitlines()
          if line.startswith("| ")][1:]
  assert [[c.strip() for c in r] for r in rows] == [
      [sweep.point_name(points[1]), "0.0", "True"],
      [sweep.point_name(points[0]), "0.3", "True"],
      [sweep.point_name(points[2]), "0.3", "False"]]
  assert (tmp_path / "sweep_report.png").exists()


def test_report_cli_names_the_files_it_wrote(tmp_path, capsys):
  """The CLI prints the table, then every file it wrote (the plot and
  results.md once a point finished), and leaves no temporary file. When no
  finished point backs them any more (its rerun failed), the plot and
  results.md of the report before are removed, not left to look current."""
  from experiments import sweep_report as cli  # pylint: disable=g-import-not-at-top
  fake_sweep(tmp_path, {0.05: (0.70, 0.60)})
  wrote = lambda *names: "wrote " + ", ".join(str(tmp_path / n)
                                              for n in names)
  assert cli.main([str(tmp_path)]) == 0
  assert capsys.readouterr().out.splitlines()[-1] == wrote(
      "sweep_report.md", "sweep_report.csv", "sweep_report.png", "results.md")
  assert not list(tmp_path.glob(".*.tmp"))
  (tmp_path / sweep.point_name({"tau": 0.05}) / sweep.FAILED_FILE
   ).write_text(json.dumps({"error": "diverged", "type": "X"}))
  assert cli.main([str(tmp_path)]) == 0
  assert capsys.readouterr().out.splitlines()[-1] == wrote(
      "sweep_report.md", "sweep_report.csv")
  assert not (tmp_path / "sweep_report.png").exists()
  assert not (tmp_path / "results.md").exists()


def test_report_cli_without_sweep_exits_2(tmp_path, capsys):
  from experiments import sweep_report as cli  # pylint: disable=g-import-not-at-top
  assert cli.main([str(tmp_path)]) == 2
  assert "not a sweep workdir" in capsys.readouterr().err
