"""What the property-based fuzz tests share: hypothesis profiles, a hang
guard, and the check of a one-line `error: FILE: FIELD: problem`.

Profiles (`MCUR_FUZZ`, default "ci"):

* ci: `CI_EXAMPLES` examples per test, derandomized (the same cases on
  every run, no example database), so that tests/test_fuzz_records.py and
  tests/test_fuzz_convert.py together stay under 2 minutes on 2 cores;
* full: `FULL_EXAMPLES` examples per test from a fresh random seed, to hunt
  for new failures:

      MCUR_FUZZ=full pytest tests/test_fuzz_records.py \\
          tests/test_fuzz_convert.py --hypothesis-show-statistics

The tests drain `capsys` before every example, so sharing that
function-scoped fixture between examples is safe; the health check against
it is off.
"""

import contextlib
import os
import re
import signal

from hypothesis import HealthCheck
from hypothesis import settings

CI_EXAMPLES = 300
FULL_EXAMPLES = 10000
# One run of a reader or converter on a tiny input taking longer than this
# is a hang.
HANG_SECONDS = 30

_COMMON = {"deadline": None, "database": None, "print_blob": True,
           "suppress_health_check": (HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow)}
settings.register_profile("ci", max_examples=CI_EXAMPLES, derandomize=True,
                          **_COMMON)
settings.register_profile("full", max_examples=FULL_EXAMPLES, **_COMMON)
FUZZ = settings.get_profile(os.environ.get("MCUR_FUZZ", "ci"))

# FILE may hold a colon (an utterance id in a path), FIELD does not.
_ERROR = re.compile(
    r"error: (?P<file>.+?): (?P<field>[^:]+): (?P<problem>\S.*)")


class Hang(BaseException):
  """A run exceeded HANG_SECONDS. A BaseException, so that no `except
  Exception` (or `except OSError`) of the code under test swallows it."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS):
  """Raises `Hang` inside the block once it has run for `seconds`."""
  def alarm(signum, frame):
    del signum, frame
    raise Hang(f"still running after {seconds} s")
  previous = signal.signal(signal.SIGALRM, alarm)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def parse_error(line: str, root: str | os.PathLike) -> tuple[str, str, str]:
  """(FILE relative to `root`, FIELD, problem) of `error: FILE: FIELD:
  problem`, asserting that form and that FILE lies under `root`."""
  match = _ERROR.fullmatch(line)
  assert match, f"not 'error: FILE: FIELD: problem': {line!r}"
  root = os.fspath(root)
  assert match["file"].startswith(root + os.sep), (
      f"names no file under {root}: {line!r}")
  return (os.path.relpath(match["file"], root), match["field"],
          match["problem"])


def node_paths(value, path=()):
  """The path (a tuple of keys and indexes) of every node of nested dicts
  and lists, the root's () first (arrays, sets and tuples are leaves)."""
  yield path
  if isinstance(value, dict):
    for key, child in value.items():
      yield from node_paths(child, path + (key,))
  elif isinstance(value, list):
    for i, child in enumerate(value):
      yield from node_paths(child, path + (i,))


def node_at(value, path):
  """The node of `value` at `path` (see `node_paths`)."""
  for key in path:
    value = value[key]
  return value
