"""One run at a time per workdir: `lock(workdir)`.

An exclusive `fcntl.flock` on `WORKDIR/.lock`, held by process 0 for the
whole run (every process learns the outcome, `workdir.agree`). The kernel
drops it when the process dies, SIGKILL included, so a killed run never
leaves it stuck; a second run on the same workdir is refused at start
(`WorkdirBusy`). flock is reliable on local disks; on NFS it depends on
the mount (docs/training.md, "Reliability"). The run that takes the lock
removes what `workdir.replacing` left from runs killed while writing.
"""

import contextlib
import fcntl
import os
import socket

import jax

from mcur_jax import validate
from mcur_jax import workdir as workdir_lib

# Held by the run that holds the workdir; records "pid P on HOST".
LOCK_FILE = ".lock"


class WorkdirBusy(validate.ConfigError):
  """Another live run holds the workdir's lock."""


def _holder(workdir: str) -> str:
  """Who holds the lock, as its holder wrote it ("pid P on HOST")."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return f.read().strip() or "another process"
  except OSError:
    return "another process"


def _remove_temporaries(workdir: str) -> None:
  """Removes what `workdir.replacing` left from runs killed while writing
  (checkpoint folders are orbax's to clean)."""
  for folder, subfolders, files in os.walk(workdir):
    if "checkpoints" in subfolders:
      subfolders.remove("checkpoints")
    for name in files:
      if name.startswith(".") and name.endswith(".tmp"):
        os.remove(os.path.join(folder, name))


@contextlib.contextmanager
def lock(workdir: str):
  """Holds `WORKDIR/.lock` for the block (process 0 takes it, every
  process learns the outcome); raises WorkdirBusy if a live run has it.
  A workdir the block left empty (a run refused at its config check) is
  left as it was found: without the `.lock` this call created, and
  removed if this call created it."""
  created = not os.path.exists(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  created_lock = not os.path.exists(path)
  handle = None
  if jax.process_index() == 0:
    handle = _take(workdir, path)
  if not workdir_lib.agree(handle is not None):
    raise WorkdirBusy(os.path.abspath(workdir),
                      f"in use by a running job ({_holder(workdir)}); wait "
                      "for it to end or use another --workdir")
  try:
    if handle is not None:
      _remove_temporaries(workdir)
      handle.seek(0)
      handle.truncate()
      handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
      handle.flush()
    yield
  finally:
    if handle is not None:
      if created_lock:
        _remove_if_only_lock(workdir, created)
      fcntl.flock(handle, fcntl.LOCK_UN)
      handle.close()


def _take(workdir: str, path: str):
  """The lock file `path`, open and flock'ed; None if a live run holds it.
  A lock taken on a file that is no longer `path` (a refused run removed
  it, `_remove_if_only_lock`, between this open and this flock) is let go
  and the new one taken, so that two runs never hold two files."""
  for _ in range(3):  # A refused run at each attempt: busy in effect.
    os.makedirs(workdir, exist_ok=True)
    handle = open(path, "a+")
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.close()
      return None
    try:
      if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
        return handle
    except FileNotFoundError:
      pass
    handle.close()
  return None


def _remove_if_only_lock(workdir: str, directory: bool) -> None:
  """Removes `.lock` (and `workdir` too if `directory`) if the lock is all
  `workdir` holds. The lock file goes while still locked: a run that opened
  it meanwhile is refused as busy, or, flocking it after, sees it gone and
  takes the new one (`_take`); one that made a new one keeps the directory
  (rmdir fails)."""
  try:
    if os.listdir(workdir) == [LOCK_FILE]:
      os.remove(os.path.join(workdir, LOCK_FILE))
      if directory:
        os.rmdir(workdir)
  except OSError:
    pass
