"""The fault matrix: every way a run can be hurt, through the command line.

Each fault is injected into a real `python -m experiments.mosi` process
(`tests/faults.py`); then the same command is run again, as a user or a
restarted VM would, and must end as the uninterrupted run did: the same
training state bit for bit, the same metrics.jsonl, the same results
(`runs.results_without_timing`). Files are never half-written: results.json
and results.md are whole or absent, metrics.jsonl lines all parse, and no
figure is a fragment.
"""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from data_prep import synthetic
from data_prep import writer
from experiments.configs import mosi as mosi_config
from mcur_jax import fit as fit_lib
from mcur_jax import sweep
from mcur_jax import sweep_report
from mcur_jax import train
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib
from mcur_jax import workdir_lock
from tests import runs

# About 4 minutes on 2 cores: conftest schedules the slow modules first.
pytestmark = pytest.mark.slow(minutes=4)

KILLED = -signal.SIGKILL


@pytest.fixture(scope="module")
def mosi_dir(tmp_path_factory):
  return runs.synthetic_dir(tmp_path_factory, "mosi", 0.1)


def args(data_dir, workdir, *extra):
  """The tiny config, seeds 0 and 1, 3 epochs, on 1 device: a fault is
  about files and processes, not the mesh (a run resumed on 8 devices is
  test_train's), and one device compiles each run about 5 s faster."""
  return ("--data_dir", data_dir, "--workdir", workdir, "--config",
          f"{runs.MOSI_CONFIG}:tiny", "--config.missing_rate_draws=1",
          "--config.num_devices=1", *extra)


@pytest.fixture(scope="module")
def reference(mosi_dir, tmp_path_factory):
  """The uninterrupted run's workdir."""
  workdir = tmp_path_factory.mktemp("reference")
  result = runs.cli(*args(mosi_dir, workdir))
  assert result.returncode == 0, result.stderr
  return workdir


def assert_whole_files(workdir) -> None:
  """What a killed run leaves is whole: results.json parses (or is
  absent), every metrics.jsonl line parses and no (epoch, seed) is logged
  twice, and every PNG is complete. (results.md is written whole by the
  same atomic rename; its content is compared after the rerun.)"""
  results = workdir / "results.json"
  if results.exists():
    json.loads(results.read_text())
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  keys = [(line["epoch"], line["seed"]) for line in map(json.loads, lines)]
  assert len(keys) == len(set(keys))
  for png in (workdir / "figures").glob("*.png"):
    assert png.read_bytes().endswith(b"IEND\xaeB`\x82"), png


# Extended (--full): kills that take the paths of the others again, during
# an epoch and while logging (as during a save: the rerun resumes from the
# epoch before), during the test evaluation and while writing a figure (as
# before results.json: after every epoch, and with figures drawn).
@pytest.mark.parametrize("fault", [
    "save:2", "results",
    *(pytest.param(f, marks=pytest.mark.extended)
      for f in ("epoch:2", "metrics:3", "test_eval", "figures"))])
def test_killed_run_reruns_to_the_uninterrupted_result(
    fault, mosi_dir, reference, tmp_path):
  """SIGKILL during an epoch, while logging, during a checkpoint save,
  during the final test evaluation, while writing a figure or publishing
  results.json: the files left are whole, and rerunning the command ends
  bit-identical to the uninterrupted run (which writes no figures: the
  figures kill point's runs write them, and only they differ)."""
  figures = ("--config.plots=True",) if fault == "figures" else ()
  killed = runs.cli(*args(mosi_dir, tmp_path, *figures), fault=fault)
  assert killed.returncode == KILLED, killed.stderr
  assert_whole_files(tmp_path)
  if fault in ("epoch:2", "metrics:3", "save:2"):
    assert runs.steps(tmp_path) == [1]
  # Written last: a run without results.json counts as unfinished (a sweep
  # reruns it), so none of a finished run's files is missing once it is.
  assert not (tmp_path / "results.json").exists()
  events = lambda: sorted((tmp_path / "tb").glob("events.out.tfevents.*"))
  before = events()
  rerun = runs.cli(*args(mosi_dir, tmp_path, *figures))
  assert rerun.returncode == 0, rerun.stderr
  assert not list(tmp_path.rglob(".*.tmp"))
  runs.assert_same_run(tmp_path, reference,
                       runs.FIGURES if figures else ())
  if fault in ("test_eval", "figures", "results"):
    # Every epoch was done: the rerun trains none, and opens no event file.
    assert before and events() == before


def copy_run(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  return workdir


def damage(workdir, epoch: int, how: str) -> None:
  """Truncates to half, flips bytes in the middle of, or scrambles (every
  97th byte flipped) every file of a checkpoint larger than 1 kB (the array
  data)."""
  folder = workdir / "checkpoints" / str(epoch)
  files = [p for p in folder.rglob("*") if p.is_file()
           and p.stat().st_size > 1024]
  assert files
  for path in files:
    data = bytearray(path.read_bytes())
    if how == "truncate":
      data = data[:len(data) // 2]
    elif how == "scramble":
      data[::97] = bytes(b ^ 0xFF for b in data[::97])
    else:
      middle = len(data) // 2
      data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how", [pytest.param("truncate", marks=pytest.mark.extended), "flip"])
def test_damaged_latest_checkpoint_falls_back_to_the_one_before(
    how, mosi_dir, reference, tmp_path):
  """A truncated or corrupted newest checkpoint is named, deleted, and the
  run resumes from the one before it, ending as the uninterrupted run."""
  workdir = copy_run(reference, tmp_path)
  damage(workdir, 3, how)
  (workdir / "results.json").unlink()
  result = runs.cli(*args(mosi_dir, workdir))
  assert result.returncode == 0, result.stderr
  assert ("damaged checkpoint of epoch 3 (" in result.stdout
          and "resuming from the checkpoint of epoch 2" in result.stdout)
  assert "Traceback" not in result.stderr
  runs.assert_same_run(workdir, reference)


def test_no_good_checkpoint_exits_2_naming_the_directory(
    mosi_dir, reference, tmp_path):
  """With every checkpoint damaged: exit 2, one line naming the checkpoint
  directory, both epochs and what to do; no traceback."""
  workdir = copy_run(reference, tmp_path)
  damage(workdir, 3, "truncate")
  damage(workdir, 2, "flip")
  result = runs.cli(*args(mosi_dir, workdir))
  assert result.returncode == 2, result.stderr
  [line] = runs.error_lines(result.stderr)
  assert line.startswith(f"error: {workdir / 'checkpoints'}: no checkpoint "
                         "restores (epoch 3 (")
  assert "epoch 2 (" in line and "move the directory away" in line
  assert "Traceback" not in result.stderr


def test_a_kill_while_orbax_deletes_an_old_checkpoint_leaves_no_trace(
    mosi_dir, reference, tmp_path):
  """A kill while orbax deletes the checkpoint before last (after a newer
  save) leaves its folder without orbax's metadata file, which every
  later command warned about. The rerun deletes it and evaluates the
  newest checkpoint to the uninterrupted run's results, and evaluate has
  nothing to warn about."""
  workdir = copy_run(reference, tmp_path)
  step = workdir / "checkpoints" / "2"
  for path in step.iterdir():
    if path.name != "default":
      path.unlink()
  result = runs.cli(*args(mosi_dir, workdir))
  assert result.returncode == 0, result.stderr
  assert not step.exists()
  assert "Metadata file does not exist" not in result.stderr
  assert runs.steps(workdir) == runs.steps(reference)[1:] == [3]
  assert (runs.results_without_timing(workdir)
          == runs.results_without_timing(reference))
  result = runs.cli("--workdir", workdir, dataset="evaluate")
  assert result.returncode == 0, result.stderr
  assert "Metadata file does not exist" not in result.stderr


@pytest.mark.parametrize("how", ["truncate", "flip", "scramble"])
def test_evaluate_refuses_a_damaged_checkpoint(how, reference, tmp_path):
  """`experiments.evaluate` (and predict, through the same restore) checks
  the newest checkpoint's digest: a damaged one is an error naming it,
  never a table of a model the run did not train. The error is all it
  prints: tensorstore's reads that outlive orbax's failed restore (a
  scrambled checkpoint) would print a traceback each."""
  workdir = copy_run(reference, tmp_path)
  damage(workdir, 3, how)
  result = runs.cli("--workdir", workdir, dataset="evaluate")
  assert result.returncode == 2, result.stderr
  [line] = result.stderr.splitlines()
  assert line.startswith(f"error: {workdir / 'checkpoints'}: the checkpoint "
                         "of epoch 3 ")
  assert "damaged on disk" in line


def test_a_resume_on_other_devices_says_it_is_equal_to_rounding(tmp_path):
  """data.json records the device count; a resume on another count gets a
  note (data-parallel sums change order: float rounding), the same count
  none."""
  config = runs_config(tmp_path)
  (tmp_path / "manifest.json").write_text("{}")
  workdir_lib.record_start(str(tmp_path), config, devices=8, stats={})
  assert workdir_lib.check_devices(str(tmp_path), 8) is None
  note = workdir_lib.check_devices(str(tmp_path), 1)
  assert note.startswith(f"NOTE: {tmp_path} trained on 8 device(s) before "
                         "and resumes on 1")


def test_resume_with_another_config_or_data_is_refused(
    mosi_dir, reference, tmp_path):
  """A changed model size, loss switch, seed list or evaluation chunk, or
  changed prepared data, is refused (on the command line with exit 2)
  naming every differing field; fields of workdir.SAFE_ON_RESUME may
  change (tensorboard off: no event file is written)."""
  workdir = copy_run(reference, tmp_path)
  result = runs.cli(*args(mosi_dir, workdir, "--config.hidden_dim=64",
                          "--config.sugr=False", "--config.seeds=0"))
  assert result.returncode == 2, result.stderr
  [line] = runs.error_lines(result.stderr)
  assert line.startswith("error: config (hidden_dim, seeds, sugr): differs "
                         f"from the run whose checkpoints are in {workdir}")
  assert "hidden_dim: 32 -> 64" in line

  other = tmp_path / "other"
  writer.write(synthetic.generate("mosi", 1, 0.1), other)
  config = runs_config(other)
  with pytest.raises(validate.ConfigError,
                     match="not the prepared data the run in"):
    train.train_and_evaluate(config, str(workdir))

  logs = sorted(p.name for p in (workdir / "tb").rglob("*"))
  # The evaluation chunks change predictions in their last bits (which can
  # move a selection): not safe.
  config = runs_config(mosi_dir)
  config.eval_batch_size = 128
  with pytest.raises(validate.ConfigError,
                     match=r"config \(eval_batch_size\): differs"):
    train.train_and_evaluate(config, str(workdir))
  safe = runs.cli(*args(mosi_dir, workdir, "--config.missing_rate_draws=2",
                        "--config.tensorboard=False"))
  assert safe.returncode == 0, safe.stderr
  assert set(workdir_lib.SAFE_ON_RESUME) >= {"missing_rate_draws",
                                             "tensorboard"}
  assert sorted(p.name for p in (workdir / "tb").rglob("*")) == logs


def runs_config(data_dir):
  """The config `args` gives, for in-process runs."""
  config = mosi_config.get_config("tiny")
  config.data_dir = str(data_dir)
  config.missing_rate_draws = 1
  config.num_devices = 1
  return config


def test_second_run_on_a_busy_workdir_is_refused_and_a_killed_one_frees_it(
    mosi_dir, tmp_path):
  """While a run is alive its workdir is locked: a second run exits 2 at
  start naming the holder. SIGKILL the first and the lock is free."""
  ready = tmp_path / "holding"
  workdir = tmp_path / "run"
  first = subprocess.Popen(
      [sys.executable, "-m", "tests.faults", f"hold:{ready}",
       "experiments.mosi", *map(str, args(mosi_dir, workdir))],
      cwd=runs.ROOT, env=runs.environment(), stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 240
    while not ready.exists():
      assert first.poll() is None and time.time() < deadline
      time.sleep(0.1)
    second = runs.cli(*args(mosi_dir, workdir))
    assert second.returncode == 2, second.stderr
    [line] = runs.error_lines(second.stderr)
    assert line.startswith(f"error: {workdir}: in use by a running job "
                           f"(pid {first.pid} on ")
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  with workdir_lock.lock(str(workdir)):
    pass


def test_a_run_that_wrote_nothing_leaves_its_workdir_as_it_found_it(
    tmp_path):
  """A run refused before writing anything (a bad config) takes its lock
  and gives it back: a workdir it created is gone, one that was there stays
  without the lock file; a workdir with files keeps its lock file."""
  new, empty, used = tmp_path / "new", tmp_path / "empty", tmp_path / "used"
  empty.mkdir()
  used.mkdir()
  (used / "metrics.jsonl").write_text("")
  for workdir in (new, empty, used):
    with pytest.raises(validate.ConfigError):
      with workdir_lock.lock(str(workdir)):
        assert (workdir / workdir_lock.LOCK_FILE).exists()
        raise validate.ConfigError("config.num_epochs", "0, must be >= 1")
  assert not new.exists()
  assert empty.is_dir() and not list(empty.iterdir())
  assert sorted(p.name for p in used.iterdir()) == [
      workdir_lock.LOCK_FILE, "metrics.jsonl"]


def test_a_lock_file_removed_while_taken_is_taken_again(tmp_path,
                                                       monkeypatch):
  """A run that opened `.lock` just before a refused run removed it (the
  test removes it between the open and the flock) locks the file that is
  there now, not the removed one, which a third run could not see."""
  workdir = tmp_path / "w"
  path = workdir / workdir_lock.LOCK_FILE
  real_flock, calls = workdir_lock.fcntl.flock, []
  def flock_after_a_removal(handle, operation):
    calls.append(operation)
    if len(calls) == 1:
      os.remove(path)
    return real_flock(handle, operation)
  monkeypatch.setattr(workdir_lock.fcntl, "flock", flock_after_a_removal)
  with workdir_lock.lock(str(workdir)):
    assert path.exists() and path.read_text().startswith("pid ")
    monkeypatch.setattr(workdir_lock.fcntl, "flock", real_flock)
    with pytest.raises(workdir_lock.WorkdirBusy):
      with workdir_lock.lock(str(workdir)):
        pass
  assert len(calls) >= 2


@pytest.mark.parametrize("fault", [
    "enospc_save:2",
    pytest.param("enospc_results", marks=pytest.mark.extended)])
def test_full_disk_is_one_line_and_the_rerun_resumes(
    fault, mosi_dir, reference, tmp_path):
  """ENOSPC while saving a checkpoint or writing results.json: exit 2 with
  one line saying so, the checkpoints before intact, no half file; the
  rerun (space freed) resumes and ends as the uninterrupted run."""
  failed = runs.cli(*args(mosi_dir, tmp_path), fault=fault)
  assert failed.returncode == 2, failed.stderr
  [line] = runs.error_lines(failed.stderr)
  assert "no space left on device" in line and "rerun the same command" in line
  assert "Traceback" not in failed.stderr
  if fault.startswith("enospc_save"):
    assert runs.steps(tmp_path) == [1]
    runs.restored_state(tmp_path, 1)
  assert not (tmp_path / "results.json").exists()
  assert not list(tmp_path.rglob(".*.tmp"))
  rerun = runs.cli(*args(mosi_dir, tmp_path))
  assert rerun.returncode == 0, rerun.stderr
  runs.assert_same_run(tmp_path, reference)


def test_points_that_cannot_run_stop_the_sweep_before_any_trains(
    mosi_dir, tmp_path, monkeypatch):
  """Every point is checked as a run checks its config before the first
  trains: points that cannot run are one error naming each (an error every
  point shares, as from the base config, said once), nothing trains and
  sweep.json is not written; two points of one config under two names
  are refused too."""
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda config, workdir: pytest.fail("trained"))
  base = runs_config(mosi_dir)
  quiet = lambda *_: None
  with pytest.raises(validate.ConfigError, match=re.escape(
      "points.py: 2 of 3 points cannot run, none trained: hidden_dim=33: "
      "config.num_heads: 2 does not divide hidden_dim 33; learnig_rate=0.1: "
      "sweep point {'learnig_rate': 0.1}: no config field 'learnig_rate'; "
      "did you mean 'learning_rate'?")):
    sweep.run(base, str(tmp_path), [{"hidden_dim": 33}, {"tau": 0.1},
                                    {"learnig_rate": 0.1}], log=quiet,
              source="points.py")
  assert not list(tmp_path.iterdir())
  bad = copy.deepcopy(base)
  bad.dropout = 1.5
  with pytest.raises(validate.ConfigError,
                     match=r"^--grid: 2 of 2 points cannot run, none trained: "
                     r"every point: config\.dropout"):
    sweep.run(bad, str(tmp_path), [{"tau": 0.1}, {"tau": 0.2}], log=quiet,
              source="--grid")
  with pytest.raises(validate.ConfigError, match=re.escape(
      f"sweep: points base and tau={base.tau} are one config")):
    sweep.run(base, str(tmp_path), [{}, {"tau": base.tau}], log=quiet)
  assert not list(tmp_path.iterdir())
  # Only this shard's points are checked: another shard's bad point is
  # that shard's error.
  trained = []
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda config, workdir: trained.append(workdir))
  assert sweep.run(base, str(tmp_path), [{"hidden_dim": 33}, {"tau": 0.1}],
                   shard=(1, 2), log=quiet) == {"tau=0.1": "done"}
  assert trained == [str(tmp_path / "tau=0.1")]


def test_failed_sweep_point_is_recorded_and_retried(mosi_dir, tmp_path,
                                                    monkeypatch):
  """A point whose run fails (here: diverges) is recorded with its error
  in `failed.json`, the other points go on, the report lists it, and a
  rerun retries it."""
  base = runs_config(mosi_dir)
  base.seeds = (0,)
  base.num_epochs = 1
  points = [{"tau": 0.2}, {"tau": 0.1}]
  real = train.train_and_evaluate
  def diverges(config, workdir):
    if config.tau == 0.2:
      raise fit_lib.TrainingDiverged("loss is NaN at epoch 1")
    return real(config, workdir)
  monkeypatch.setattr(train, "train_and_evaluate", diverges)
  status = sweep.run(base, str(tmp_path), points, log=lambda *_: None)
  assert status == {"tau=0.2": "failed", "tau=0.1": "done"}
  failed = json.loads((tmp_path / "tau=0.2" / sweep.FAILED_FILE).read_text())
  assert failed == {"error": "loss is NaN at epoch 1",
                    "type": "TrainingDiverged"}
  _, rows = sweep_report.collect(str(tmp_path))
  assert [r["name"] for r in rows] == ["tau=0.1", "tau=0.2"]
  assert "failed" not in rows[0]
  assert rows[1]["failed"] == failed["error"]

  calls = []
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda config, workdir: calls.append(workdir))
  sweep.run(base, str(tmp_path), points, log=lambda *_: None)
  assert calls == [str(tmp_path / "tau=0.2")]
  assert not (tmp_path / "tau=0.2" / sweep.FAILED_FILE).exists()

  # A finished point asked for other outputs after training (a changed
  # missing-rate protocol) is evaluated again, not reported as it was,
  # and its training is untouched.
  done = tmp_path / "tau=0.1" / "results.json"
  before = json.loads(done.read_text())
  monkeypatch.setattr(train, "train_and_evaluate", real)
  base.missing_rates = (0.0, 0.5)
  said = []
  sweep.run(base, str(tmp_path), points[1:], log=said.append)
  assert ("[1/1] tau=0.1: finished before; missing_rates changed: "
          "evaluating again") in said
  after = json.loads(done.read_text())
  assert list(after["missing_rate"]["rates"]) == ["0.0", "0.5"]
  assert (after["test"], after["selected_epoch"]) == (
      before["test"], before["selected_epoch"])


def test_any_failure_of_a_point_is_recorded_and_the_sweep_goes_on(
    mosi_dir, tmp_path, monkeypatch):
  """An unexpected exception in one point (a bug, out of memory) is
  recorded with its traceback and the next point still runs; an interrupt
  stops the sweep."""
  base = runs_config(mosi_dir)
  def fake(config, workdir):
    if config.tau == 0.1:
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
    calls.append(workdir)
  calls = []
  monkeypatch.setattr(train, "train_and_evaluate", fake)
  status = sweep.run(base, str(tmp_path), [{"tau": 0.1}, {"tau": 0.2}],
                     log=lambda *_: None)
  assert status == {"tau=0.1": "failed", "tau=0.2": "done"}
  assert calls == [str(tmp_path / "tau=0.2")]
  failed = json.loads((tmp_path / "tau=0.1" / sweep.FAILED_FILE).read_text())
  assert failed["type"] == "RuntimeError"
  assert failed["error"] == "RESOURCE_EXHAUSTED: out of memory"
  assert "Traceback" in failed["traceback"]
  def interrupted(config, workdir):
    raise KeyboardInterrupt
  monkeypatch.setattr(train, "train_and_evaluate", interrupted)
  with pytest.raises(KeyboardInterrupt):
    sweep.run(base, str(tmp_path), [{"tau": 0.3}, {"tau": 0.4}],
              log=lambda *_: None)


def finished_point(base, out, folds=()) -> str:
  """Makes `out` a sweep point that finished with `base` (in `fold<k>/`
  for each of `folds`), checks that a rerun skips it and that a rerun with
  another hidden_dim is refused before it writes anything; returns that
  error."""
  for workdir, fold in ([(out, 0)] if not folds else
                        [(out / f"fold{k}", k) for k in folds]):
    config = sweep.point_config(base, {"tau": 0.1})
    config.fold = fold
    workdir.mkdir(parents=True)
    workdir_lib.record_start(str(workdir), config, devices=8, stats={})
  (out / "results.json").write_text("{}")
  run = lambda: sweep.run(base, str(out.parent), [{"tau": 0.1}],
                          log=lambda *_: None)
  assert run() == {"tau=0.1": "skipped"}
  recorded = (out.parent / sweep.SWEEP_FILE).read_text()
  base.hidden_dim = 64
  with pytest.raises(validate.ConfigError) as error:
    run()
  base.hidden_dim = 32
  assert not (out / sweep.FAILED_FILE).exists()
  assert (out.parent / sweep.SWEEP_FILE).read_text() == recorded
  return str(error.value)


def test_a_finished_cross_validated_point_is_skipped(mosi_dir, tmp_path,
                                                    monkeypatch):
  """A finished point of a dataset with folds has its runs in
  `fold<k>/` (no config.json at its top): a rerun checks each fold
  against the point's config with that fold, and skips the point."""
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda config, workdir: pytest.fail("trained"))
  error = finished_point(runs_config(mosi_dir), tmp_path / "tau=0.1",
                         folds=(1, 2))
  assert "hidden_dim: 32 -> 64" in error


def test_a_point_finished_under_another_config_is_not_reused(
    mosi_dir, tmp_path, monkeypatch):
  """A rerun skips a finished point only if it trained with the config (and
  data) the point has now; a rerun with another --config.* value (or
  --data_dir) is refused before anything runs or is written, naming the
  point and what differs: its results are neither this sweep's nor a
  failure."""
  base = runs_config(mosi_dir)
  out = tmp_path / "tau=0.1"
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda config, workdir: pytest.fail("trained"))
  error = finished_point(base, out)
  assert error.startswith(f"--workdir: 1 finished point(s) of {tmp_path} "
                          "trained with another config or data (tau=0.1), "
                          "nothing run or written: rerun with the flags they "
                          "trained with, or sweep into a new --workdir. "
                          "tau=0.1: config (hidden_dim): differs")
  assert "hidden_dim: 32 -> 64" in error
  # Back to the config it trained with: skipped.
  assert sweep.run(base, str(tmp_path), [{"tau": 0.1}],
                   log=lambda *_: None) == {"tau=0.1": "skipped"}
  # Figures turned on: evaluated again (train_and_evaluate restores the
  # finished run and writes them); turned off: nothing new, skipped.
  assert not base.plots
  base.plots = True
  evaluated = []
  monkeypatch.setattr(train, "train_and_evaluate",
                      lambda config, workdir: evaluated.append(workdir))
  assert sweep.run(base, str(tmp_path), [{"tau": 0.1}],
                   log=lambda *_: None) == {"tau=0.1": "done"}
  assert evaluated == [str(out)]
  (out / "config.json").write_text(json.dumps(
      {**json.loads((out / "config.json").read_text()), "plots": True}))
  base.plots = False
  assert sweep.run(base, str(tmp_path), [{"tau": 0.1}],
                   log=lambda *_: None) == {"tau=0.1": "skipped"}
  assert evaluated == [str(out)]
