"""Test setup: 8 fake CPU devices (before jax is imported) and the shared real data.

The real data (`../shared/data` beside the checkout, or `$MCUR_SHARED_DATA`)
is optional: tests that need it skip cleanly when it is absent.
"""

import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

_ROOT = pathlib.Path(__file__).resolve().parent.parent


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
