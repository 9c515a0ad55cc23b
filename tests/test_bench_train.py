"""The training benchmarks' short modes print every figure, each sane."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from benchmarks import bench_runs

# About a minute on 2 cores: three processes that train.
pytestmark = pytest.mark.slow(minutes=1)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_short_benchmark_prints_sane_figures(tmp_path):
  # One CPU device, as a plain run has (not the tests' 8 fake ones), and
  # XLA's CPU backend without LLVM optimisation: compiling is most of this
  # test's time, and that halves it (the figures stay sane, not faster).
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
  out = tmp_path / "bench.json"
  done = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--short",
       "--json", str(out), "--workdir", str(tmp_path)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  text = done.stdout
  for heading in ("matmul peak", "| synthetic MOSI (tiny) | default |",
                  "validation / train", "Bytes to the host per epoch",
                  "Host round trips inside the compiled epoch: none"):
    assert heading in text, text
  report = json.loads(out.read_text())
  assert report["matmul_peak_flops_per_s"] > 0
  assert report["environment"]["devices"] == "1 x cpu"
  [case] = report["cases"]
  assert case["compiles"] == {"train_epoch": 1, "evaluate": 1}
  assert case["setup_s"] > 0
  assert all(case["compile_s"][k] > 0 for k in ("epoch", "eval", "init"))
  assert case["train_utt_per_s"] > 0 and case["eval_utt_per_s"] > 0
  split = case["epoch_s"]
  assert all(split[k] > 0 for k in ("train", "valid", "ckpt", "host"))
  assert abs(split["train"] + split["valid"] + split["ckpt"] + split["host"]
             - split["epoch"]) < 0.2 * split["epoch"]
  assert case["epoch_flops"] > 0 and case["epoch_bytes"] > 0
  assert 0 < case["peak_ratio"] < 1.5
  assert 0 < case["model_matmul_ratio"] < 1.5
  # Per epoch the host gets the loss stats (4 float32 per member; the best
  # validation scores that selection compares with stay on the host), the
  # validation predictions (a float per combination, member and slot of the
  # evaluation chunk) and the checkpoint.
  host = case["host_bytes_per_epoch"]
  assert host["stats"] == 4 * 4 * case["members"]
  assert host["valid"] > 0
  assert host["valid"] % (4 * case["combinations"] * case["members"]) == 0
  assert host["ckpt"] > 0
  assert not case["host_calls_in_epoch"]
  assert case["transfer_guard"] == "none"


# Extended (--full): a whole tiny run from a cold cache (about 45 s on 2
# cores); the training benchmark's short mode above runs by default.
@pytest.mark.extended
def test_whole_run_benchmark_reports_a_run_and_a_stopped_one(tmp_path):
  """bench_runs.py --short runs the tiny config end to end and reports its
  wall and recorded seconds, phases and test Avg, its programs in the
  compilation cache named; a run that outlives its limit is stopped and
  reported so (0.5 s: less than Python and JAX take to start)."""
  out = tmp_path / "runs.json"
  done = subprocess.run(
      [sys.executable, str(ROOT / "benchmarks" / "bench_runs.py"), "--short",
       "--dtypes", "float32", "--json", str(out), "--workdir", str(tmp_path),
       "--compilation_cache", str(tmp_path / "cache")],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "synthetic MOSI (tiny) float32: finished" in done.stdout
  [run] = json.loads(out.read_text())
  assert run["wall_s"] >= run["seconds"] > 0
  assert list(run["seconds_by_phase"]) == ["setup", "train", "evaluate",
                                           "calibrate"]
  assert run["compile_seconds"]["train_epoch"] > 0
  assert run["headline"] == "f1_non0" and 0 < run["test_avg"] < 1
  assert any(name.startswith("jit_train_epoch")
             for name in os.listdir(tmp_path / "cache"))

  # A cross-validated run stopped after its first fold: that fold's
  # figures are reported (its results.json, written here by hand).
  fold1 = tmp_path / "stopped" / "fold1"
  fold1.mkdir(parents=True)
  (tmp_path / "stopped" / "fold2").mkdir()
  for fold in (fold1, tmp_path / "stopped" / "fold2"):  # Both started.
    (fold / "config.json").write_text("{}")
  (fold1 / "results.json").write_text(json.dumps(
      {"headline": "wf1", "seconds": 12.5, "test": {"avg": {"wf1": {
          "mean": 0.61234}}}, "seconds_by_phase": {"setup": 2.0}}))
  stopped = bench_runs.run_one("x", "mosi", str(tmp_path), "float32",
                               str(tmp_path / "stopped"), limit=0.5)
  assert stopped["status"].startswith("stopped at the deadline")
  assert stopped["folds_finished"] == {"fold1": {
      "seconds": 12.5, "test_avg": 0.6123, "headline": "wf1",
      "seconds_by_phase": {"setup": 2.0}}}
  assert "\n  fold1: 12.5 s recorded" in bench_runs.describe(stopped)
