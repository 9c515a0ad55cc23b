"""The process around an entry point's work (experiments/process.py):
quiet logs around the one `error:` line, Ctrl-C, and standard output whose
reader goes away."""

import errno
import logging as std_logging
import os
import signal
import subprocess
import time
import types

import pytest

from data_prep import synthetic
from data_prep import writer
from experiments import launch
from experiments import process
from tests import runs


def test_closed_loop_callbacks_are_quiet_and_nothing_else():
  """The entry points' unraisable-exception hook drops exactly the
  RuntimeError("Event loop is closed") that tensorstore's leftover reads
  raise after a failed restore; any other unraisable exception reaches the
  hook before it."""
  seen = []
  hook = process._quiet_closed_loops(seen.append)
  closed = types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
  other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
  value = types.SimpleNamespace(exc_value=ValueError("Event loop is closed"))
  for unraisable in (closed, other, value):
    hook(unraisable)
  assert seen == [other, value]


def test_full_disk_logs_are_dropped_and_nothing_else():
  """The entry points' log filter drops the records of a full disk (orbax's
  writer threads log the wrapped ENOSPC with its traceback; asyncio logs
  the failed task again), which end in the run's one `error:` line, and
  keeps every other record."""
  def record(message, error=None):
    info = (type(error), error, None) if error else None
    return std_logging.LogRecord("absl", std_logging.ERROR, "future.py", 1,
                                 message, None, info)
  try:
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as e:
      raise ValueError("RESOURCE_EXHAUSTED: Error writing") from e
  except ValueError as e:
    wrapped = e
  drop = process.DropFullDisk()
  assert not drop.filter(record("_SignalingThread.run() raised", wrapped))
  assert not drop.filter(record("Task exception was never retrieved",
                                ValueError("Failed to write 1453731 bytes: No "
                                           "space left on device")))
  assert not drop.filter(record("write failed: No space left on device"))
  assert drop.filter(record("_SignalingThread.run() raised",
                            ValueError("RESOURCE_EXHAUSTED: out of memory")))
  assert drop.filter(record("Metadata file does not exist"))


def stopped_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith("stopped ")]


@pytest.mark.slow(minutes=0.5)
def test_ctrl_c_stops_at_the_epochs_end_and_the_run_resumes(tmp_path):
  """Ctrl-C (SIGINT) during training stops the run at the end of its epoch
  with a checkpoint of it: one `error:` line, exit status 130, no
  traceback. The same command resumes after that epoch. (Python's own
  KeyboardInterrupt was swallowed by a JAX callback, and the run went on.)"""
  data = tmp_path / "data"
  writer.write(synthetic.generate("mosi", 0, 0.1), data)
  workdir = tmp_path / "run"
  command = runs.interruptible(
      "experiments.mosi", "--data_dir", data, "--workdir", workdir,
      "--config", f"{launch.CONFIGS}/mosi.py:tiny",
      # Far more epochs than the test waits for, on any machine.
      "--config.num_epochs=100000", "--config.checkpoint_every=1000000")
  training = subprocess.Popen(command, cwd=runs.ROOT,
                              env=runs.environment(),
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
  log = workdir / "metrics.jsonl"
  deadline = time.monotonic() + 240
  while not (log.exists() and len(log.read_text().splitlines()) >= 4):
    assert training.poll() is None and time.monotonic() < deadline
    time.sleep(0.2)
  training.send_signal(signal.SIGINT)
  _, stderr = training.communicate(timeout=120)
  assert training.returncode == 130, stderr
  assert "Traceback" not in stderr
  # checkpoint_every 1000000: the only save is the one the stop made.
  (epoch,) = runs.steps(workdir)
  # The stop was asked for: said in one line, not as an error.
  assert not runs.error_lines(stderr)
  assert stopped_lines(stderr) == [
      f"stopped after epoch {epoch}: {workdir} keeps its checkpoint "
      "and its logs, and the same command resumes from them"]
  assert "Ctrl-C: stopping at the end of this epoch" in stderr
  # The same command again: it resumes (its first line says so), and is
  # stopped again.
  resumed = subprocess.Popen(command, cwd=runs.ROOT,
                             env=runs.environment(PYTHONUNBUFFERED="1"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  assert resumed.stdout.readline().rstrip().endswith(
      f"resuming after epoch {epoch}")
  resumed.send_signal(signal.SIGINT)
  _, stderr = resumed.communicate(timeout=120)
  assert resumed.returncode == 130, stderr
  # Before its first epoch or after it, as the signal and the check meet.
  [line] = stopped_lines(stderr)
  last = runs.steps(workdir)[-1]
  assert line.startswith(f"stopped before epoch {epoch + 1}: "
                         if last == epoch else
                         f"stopped after epoch {epoch + 1}: ")


def test_a_closed_stdout_does_not_stop_the_work(capsys):
  """`python -m experiments.mosi | head -1`: once the reader has gone, a
  write to the pipe raises BrokenPipeError (EPIPE), which stopped the run
  with an error naming its workdir. The stream that `process.start` puts
  on the real stdout sends such writes to /dev/null, says so once on
  stderr, and the writes after it succeed."""
  read_end, write_end = os.pipe()
  stream = process.OutlivesItsReader(os.fdopen(write_end, "w"))
  stream.write("epoch 1\n")
  stream.flush()
  assert os.read(read_end, 100) == b"epoch 1\n"
  os.close(read_end)  # The reader goes away (head has its line).
  stream.write("epoch 2\n")
  stream.flush()
  for epoch in range(3, 2000):  # Past the buffer: writes flush on their own.
    stream.write(f"epoch {epoch}\n")
  stream.flush()
  assert capsys.readouterr().err.count("standard output was closed") == 1
  assert os.path.samestat(os.fstat(stream.fileno()),
                          os.stat(os.devnull))
  stream.close()
  # Without it, the same writes raise.
  read_end, write_end = os.pipe()
  plain = os.fdopen(write_end, "w")
  os.close(read_end)
  plain.write("epoch 1\n")
  with pytest.raises(BrokenPipeError):
    plain.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, write_end)  # So that it closes without raising.
  os.close(devnull)
  plain.close()
