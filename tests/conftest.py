"""Test setup: XLA's flags for the tests (before jax is imported), one
compilation cache for the session, the shared real data, and the order of
the modules.

The real data (`../shared/data` beside the checkout, or `$MCUR_SHARED_DATA`)
is optional: tests that need it skip cleanly when it is absent.
"""

import os
import pathlib
import subprocess
import sys

# XLA flags of the session and of the processes its tests start (each kept
# where XLA_FLAGS already sets it):
XLA_TEST_FLAGS = {
    # 8 fake CPU devices, for the data-parallel tests.
    "--xla_force_host_platform_device_count": "8",
    # LLVM without optimisation. Compiling is most of the whole-run tests'
    # time and this about halves it. It changes how fast the compiled code
    # runs, and at most its last-bit rounding: XLA's own passes, which
    # decide the arithmetic, run as ever, every program of the session is
    # compiled alike, and references are compared at a tolerance. No test
    # here times anything.
    "--xla_backend_optimization_level": "0",
}
# And flags that an XLA may not know: one that no longer knows a flag aborts
# at start, and `setup.cfg` allows other JAX versions than this one. Each is
# added where a probe finds it taken in silence (`_taken`).
XLA_PROBED_FLAGS = {
    # XLA's CPU emitters from before its MLIR fusion emitters: a tiny run
    # compiles and trains about a fifth faster (21 to 25 s against 25 to
    # 31 s on 2 cores). As above, it changes how the code is generated, not
    # the arithmetic XLA's passes decide, and every program of the session
    # is compiled alike.
    "--xla_cpu_use_fusion_emitters": "false",
}
# Set once probed, so that the session's workers and subprocesses, which
# inherit it with XLA_FLAGS, do not probe again.
PROBED = "MCUR_TESTS_XLA_FLAGS_PROBED"


def _taken(flag: str) -> bool:
  """Whether JAX starts on CPU with `flag` in XLA_FLAGS and says nothing of
  it on stderr (a flag on its way out is taken with a warning, which the
  tests reading an entry point's stderr would see)."""
  probe = subprocess.run(
      [sys.executable, "-c", "import jax; jax.devices()"],
      env={**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"},
      capture_output=True, text=True, timeout=300, check=False)
  return probe.returncode == 0 and flag.split("=")[0][2:] not in probe.stderr


_flags = os.environ.get("XLA_FLAGS", "")
_wanted = [f"{name}={value}" for name, value in XLA_TEST_FLAGS.items()
           if name not in _flags]
if not os.environ.get(PROBED):
  _wanted += [f"{name}={value}" for name, value in XLA_PROBED_FLAGS.items()
              if name not in _flags and _taken(f"{name}={value}")]
  os.environ[PROBED] = "1"
os.environ["XLA_FLAGS"] = " ".join([_flags] + _wanted).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from jax.experimental.compilation_cache import compilation_cache
import pytest

_ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def xla_cache(tmp_path_factory):
  """A persistent compilation cache for the whole session and, through
  the environment, its subprocesses (which would otherwise use the user's
  own, `compile_cache.user_cache_dir()`), new and empty for each session: a
  program compiled by an earlier test (the same tiny config trained again,
  a restored run's evaluation) is loaded instead of compiled again. Traces,
  which `run.COMPILES` counts, are unaffected."""
  path = str(tmp_path_factory.mktemp("xla-cache"))
  settings = {"jax_compilation_cache_dir": path,
              "jax_persistent_cache_min_compile_time_secs": 0}
  before = {name: getattr(jax.config, name) for name in settings}
  environ = {name.upper(): str(value) for name, value in settings.items()}
  environ_before = {name: os.environ.get(name) for name in environ}
  for name, value in settings.items():
    jax.config.update(name, value)
  os.environ.update(environ)
  compilation_cache.reset_cache()
  yield path
  for name, value in before.items():
    jax.config.update(name, value)
  for name, value in environ_before.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value
  compilation_cache.reset_cache()


def pytest_addoption(parser):
  parser.addoption(
      "--full", action="store_true",
      help="also run the cases marked `extended`: further kill points, "
      "damage kinds, model variants and compositions of checks that the "
      "default run makes at least once (about 570 s more of test time: "
      "about 5 minutes on 2 cores)")


def pytest_collection_modifyitems(config, items):
  """Modules marked `slow(minutes)` first, the longest first, the rest in
  their usual order. A parallel session (pytest-xdist, `--dist=loadfile`)
  hands whole modules to its workers in this order, so the long modules
  start at once and the many short ones fill the gaps at the end.

  Without --full the cases marked `extended` are skipped, each naming the
  option (the short mode that keeps CI within its time on 2 cores)."""
  def minutes(item):
    mark = item.get_closest_marker("slow")
    return -mark.kwargs["minutes"] if mark else 0
  items.sort(key=minutes)  # Stable: a module's tests stay in their order.
  if not config.getoption("--full"):
    skip = pytest.mark.skip(reason="extended case: runs with --full")
    for item in items:
      if item.get_closest_marker("extended"):
        item.add_marker(skip)


def shared_data_dir() -> pathlib.Path | None:
  """`$MCUR_SHARED_DATA`, else `../shared/data` beside the checkout, if present."""
  path = pathlib.Path(os.environ.get("MCUR_SHARED_DATA",
                                     _ROOT.parent / "shared" / "data"))
  return path if path.is_dir() else None


@pytest.fixture
def shared_data():
  """The shared real-data folder; skips the test where it is absent."""
  path = shared_data_dir()
  if path is None:
    pytest.skip("real data absent: set MCUR_SHARED_DATA to shared/data")
  return path
