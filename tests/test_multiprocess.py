"""Two real JAX processes on this machine, as a multi-host job runs.

Each process is `python -m experiments.mosi --config.distributed=True
--coordinator_address=localhost:PORT --num_processes=2 --process_id=I` with
4 fake CPU devices; JAX's coordination service joins them into one job of
8 devices whose collectives run over gloo (`launch.initialize_distributed`).
The run must equal one process with 8 devices, and survive being killed.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import chex
import pytest

from mcur_jax import data
from tests import runs

# About 3 minutes on 2 cores: conftest schedules the slow modules first.
pytestmark = pytest.mark.slow(minutes=3)


@pytest.fixture(scope="module")
def mosi_dir(tmp_path_factory):
  return runs.synthetic_dir(tmp_path_factory, "mosi", 0.1)


# The tiny config (seeds 0 and 1, context on, no figures) in 2 epochs of 2
# steps: every step's collectives cross processes over gloo, which costs
# about a second per step on 2 cores.
FAST = ("--config.num_epochs=2",
        "--config.batch_size=128", "--config.eval_batch_size=256",
        "--config.missing_rates=0.0,0.5", "--config.missing_rate_draws=1")


def args(data_dir, workdir, *extra):
  return ("--data_dir", data_dir, "--workdir", workdir, "--config",
          f"{runs.MOSI_CONFIG}:tiny", *FAST, *extra)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def two_processes(module_args, module="experiments.mosi", fault=None,
                  timeout=300) -> list[subprocess.CompletedProcess]:
  """Runs `python -m MODULE ARGS` as processes 0 and 1 of one job (with
  `fault` injected into both, `tests/faults.py`). When one process dies
  the other is killed too, as a preempted slice loses all its hosts."""
  port = free_port()
  env = runs.environment(
      XLA_FLAGS=runs.xla_flags(4),
      JAX_PLATFORMS="cpu")
  prefix = [sys.executable, "-m"] + (["tests.faults", fault] if fault else [])
  procs = [subprocess.Popen(
      [*prefix, module, *map(str, module_args), "--config.distributed=True",
       f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=runs.ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    procs[0].wait(timeout)
    if procs[0].returncode != 0:
      procs[1].send_signal(signal.SIGKILL)
    procs[1].wait(timeout)
    if procs[1].returncode != 0 and procs[0].returncode is None:
      procs[0].send_signal(signal.SIGKILL)
    outs = [p.communicate() for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [subprocess.CompletedProcess(p.args, p.returncode, out, err)
          for p, (out, err) in zip(procs, outs)]


def assert_ok(results) -> None:
  for i, r in enumerate(results):
    assert r.returncode == 0, (i, r.stderr[-3000:])


@pytest.fixture(scope="module")
def two(mosi_dir, tmp_path_factory):
  """(workdir, [process 0, process 1]) of the uninterrupted 2-process run."""
  workdir = tmp_path_factory.mktemp("two")
  results = two_processes(args(mosi_dir, workdir))
  assert_ok(results)
  return workdir, results


def test_two_processes_equal_one_process_of_eight_devices(
    two, mosi_dir, tmp_path):
  """2 processes x 4 devices end with the parameters of 1 process x 8
  devices to 1e-6 (float32 all-reduce order) and its metrics within
  `runs.assert_metrics_close`; process 0 alone writes results, logs and the
  table, and both save the checkpoints orbax needs from each."""
  workdir, (first, second) = two
  one = runs.cli(*args(mosi_dir, tmp_path),
                 env=runs.environment(XLA_FLAGS=runs.xla_flags(8)))
  assert one.returncode == 0, one.stderr
  assert "; 8 device(s);" in one.stdout
  assert "8 device(s) in 2 processes" in first.stdout
  state, reference = runs.restored_state(workdir), runs.restored_state(
      tmp_path)
  for key in ("params", "best_params"):
    chex.assert_trees_all_close(state[key], reference[key], rtol=0,
                                atol=1e-6)
  got = json.loads((workdir / "results.json").read_text())
  want = json.loads((tmp_path / "results.json").read_text())
  assert [r["environment"]["processes"] for r in (got, want)] == [2, 1]
  dataset = data.load(mosi_dir)
  for split in ("valid", "test"):
    for i in range(2):
      runs.assert_metrics_close(runs.run_metrics(got, split, i),
                                runs.run_metrics(want, split, i),
                                getattr(dataset, split))
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 2 * 2
  assert "| metric |" in first.stdout and "| metric |" not in second.stdout
  assert "epoch 2/2" in first.stdout and "epoch 2/2" not in second.stdout
  assert runs.steps(workdir) == [1, 2]


# Extended (--full): a kill and a restart of two processes (about 90 s on
# 2 cores); a killed run resumed is test_faults', and process 0's
# decisions on resume run in every multi-process run.
@pytest.mark.extended
def test_killed_processes_restart_to_the_uninterrupted_run(
    two, mosi_dir, tmp_path):
  """Both processes SIGKILLed after epoch 2 (before its checkpoint) and the
  job started again: it resumes after epoch 1 and ends with the state,
  metrics.jsonl and results of the uninterrupted 2-process run."""
  workdir, _ = two
  killed = two_processes(args(mosi_dir, tmp_path), fault="epoch:2")
  assert [r.returncode for r in killed] == [-signal.SIGKILL] * 2
  assert runs.steps(tmp_path) == [1]
  restarted = two_processes(args(mosi_dir, tmp_path))
  assert_ok(restarted)
  assert "resuming after epoch 1" in restarted[0].stdout
  runs.assert_same_run(tmp_path, workdir)


# Extended (--full): finished points skipped is test_sweep's and
# test_faults', and process 0's decisions shared with the other process
# run in every multi-process run, this module's first test's included
# (about a minute on 2 cores).
@pytest.mark.extended
def test_two_process_sweep_shard_agrees_on_finished_points(
    two, mosi_dir, tmp_path):
  """A sweep run by 2 processes of one slice: both skip the point that has
  its results (process 0 decides and tells the other; the `two` run is the
  point tau=0.2, the config's own tau, of the same config and data) and
  train the other one together."""
  workdir, _ = two
  shutil.copytree(workdir, tmp_path / "tau=0.2")
  results = two_processes(
      ("--config", f"{runs.MOSI_CONFIG}:tiny", "--data_dir", mosi_dir,
       "--workdir", tmp_path, *FAST, "--grid", "tau=0.2,0.1"),
      module="experiments.sweep")
  assert_ok(results)
  for r in results:
    assert "tau=0.2: finished before, skipped" in r.stdout
    assert "[2/2] tau=0.1" in r.stdout
  assert os.path.exists(tmp_path / "tau=0.1" / "results.json")
