"""How an entry point's process behaves around its work: failures a user
can fix as one `error:` line and exit status 2 (`user_errors`), an output
file checked before any work (`check_output`), quiet logs (`start`),
standard output whose reader may go away (`OutlivesItsReader`), and Ctrl-C
(`stop_at_epoch_end_on_ctrl_c` for training, `end_on_ctrl_c` for evaluate
and predict).
"""

import contextlib
import errno
import logging as std_logging
import os
import signal
import sys
import threading

from absl import app
from absl import flags
from absl import logging

from mcur_jax import checkpoint
from mcur_jax import fit as fit_lib
from mcur_jax import train

FLAGS = flags.FLAGS


def _os_error(e: OSError, where: str, resumes: bool) -> str:
  where = e.filename or os.path.abspath(where)
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return (f"{where}: no space left on device; free space and rerun the "
            "same command" + (": it resumes from the last checkpoint"
                              if resumes else ""))
  return f"{where}: {e.strerror or e}"


@contextlib.contextmanager
def user_errors(where: str, resumes: bool = False):
  """Turns a failure a user can fix into one `error:` line and exit status
  2, without a traceback: bad data, config, arguments or checkpoints
  (`train.INPUT_ERRORS`), or a file that cannot be read or written (an
  OSError, named by its file, else by `where`; for a full disk, whether the
  same command `resumes`). The work of training, evaluate and predict
  runs inside it."""
  try:
    yield
  except train.INPUT_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    print(f"error: {_os_error(e, where, resumes)}", file=sys.stderr)
    sys.exit(2)


def check_output(path: str | None, flag: str = "--out") -> None:
  """Exit 2 with one `error:` line, before any work, when the file `path`
  cannot be written there: it is a directory, or its folder is missing or
  not writable."""
  if path is None:
    return
  folder = os.path.dirname(os.path.abspath(path))
  if os.path.isdir(path):
    problem = "a directory; give a file name"
  elif not os.path.isdir(folder):
    problem = f"{folder}: no such directory"
  elif not os.access(folder, os.W_OK):
    problem = f"{folder}: not writable"
  else:
    return
  print(f"error: {flag} {path}: {problem}", file=sys.stderr)
  sys.exit(2)


class DropFullDisk(std_logging.Filter):
  """Drops the log records of a full disk: on ENOSPC orbax's writer threads
  log the failure with its traceback, and asyncio reports each failed task
  again ("Task exception was never retrieved"), about a hundred lines
  around the one `error:` line that says what happened and what was kept
  (every full disk ends in that line: `checkpoint.CheckpointError` or
  `_os_error`). Other records pass."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (checkpoint.out_of_space(error)
                or "No space left on device" in record.getMessage())


class OutlivesItsReader:
  """A text stream (the process's stdout) whose reader may go away, as
  `python -m experiments.mosi | head` does after a line: the first write
  that finds the pipe closed points the stream's file descriptor at
  /dev/null, says so once on stderr, and the work goes on (a run keeps
  training and saving; its record is its workdir, not its stdout). Python
  would raise BrokenPipeError at that write, stopping a run before its
  next checkpoint with an error that blamed the workdir."""

  def __init__(self, stream):
    self.stream = stream

  def write(self, text: str) -> int:
    try:
      return self.stream.write(text)
    except BrokenPipeError:
      self._closed()
      return len(text)

  def flush(self) -> None:
    try:
      self.stream.flush()
    except BrokenPipeError:
      self._closed()
      self.stream.flush()  # What was buffered goes to /dev/null.

  def _closed(self) -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, self.stream.fileno())
    os.close(devnull)
    print("note: standard output was closed by its reader; the work goes "
          "on and writes its files as ever", file=sys.stderr)

  def __getattr__(self, name):
    return getattr(self.stream, name)


def start(argv) -> None:
  """What every entry point's main does first: refuse stray arguments, log
  only warnings unless --verbosity says otherwise (orbax logs every save at
  INFO), keep the one error line of a damaged checkpoint
  (`_quiet_closed_loops`) or a full disk (`DropFullDisk`) readable, and
  keep working when stdout's reader goes away (`OutlivesItsReader`)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if sys.stdout is sys.__stdout__ and sys.stdout is not None:
    sys.stdout = OutlivesItsReader(sys.stdout)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  sys.unraisablehook = _quiet_closed_loops(sys.unraisablehook)
  for name in ("absl", "asyncio"):
    logger = std_logging.getLogger(name)
    if not any(isinstance(f, DropFullDisk) for f in logger.filters):
      logger.addFilter(DropFullDisk())


def _quiet_closed_loops(hook):
  """`hook` for every unraisable exception but one: the RuntimeError("Event
  loop is closed") that tensorstore's reads, still running after orbax's
  restore of a damaged checkpoint failed and closed its event loop, raise
  in their callbacks (hundreds of tracebacks around the error line that
  says what happened). The failure itself is raised and reported."""
  def quiet(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      hook(unraisable)
  return quiet


def _takes_sigint() -> bool:
  """Whether this code may set the SIGINT handler: only the main thread
  can, and a process started with SIGINT ignored (a background job of a
  script) keeps ignoring it, as Python itself does."""
  return (threading.current_thread() is threading.main_thread()
          and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN)


def stop_at_epoch_end_on_ctrl_c():
  """Makes a first Ctrl-C (SIGINT) ask the run to stop at the end of its
  epoch, saving it (`fit.STOP_REQUESTED`), and a second one end the
  process (the signal's default action). Python's own KeyboardInterrupt
  can be raised inside a callback that swallows it (JAX's garbage-collection
  hook), and the run then goes on. Returns a function that puts the
  previous handler back (nothing to do where `_takes_sigint` says no)."""
  fit_lib.STOP_REQUESTED.clear()
  if not _takes_sigint():
    return lambda: None
  previous = signal.getsignal(signal.SIGINT)

  def request_stop(signum, frame):
    del signum, frame
    fit_lib.STOP_REQUESTED.set()
    # A second Ctrl-C ends the process at once (its checkpoints are whole:
    # orbax writes each aside, then renames it).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.write(2, b"\nCtrl-C: stopping at the end of this epoch, with a "
             b"checkpoint (Ctrl-C again stops at once)\n")
  signal.signal(signal.SIGINT, request_stop)
  if previous is None:  # A handler not set from Python.
    previous = signal.SIG_DFL
  return lambda: signal.signal(signal.SIGINT, previous)


def end_on_ctrl_c() -> None:
  """Makes Ctrl-C (SIGINT) end the process at once, the signal's default
  action: for evaluate and predict, which have nothing to save (their
  outputs are written aside and renamed into place). Python's
  KeyboardInterrupt can be raised inside a callback that swallows it (JAX's
  garbage-collection hook), and the command would go on (where
  `_takes_sigint`)."""
  if _takes_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
