"""JAX's persistent compilation cache as the entry points set it up
(mcur_jax/compile_cache.py): where it is, what turns it off, and that a
later program loads from it."""

import os
import subprocess
import sys

import jax
from jax.experimental.compilation_cache import compilation_cache
import jax.numpy as jnp
import numpy as np
import pytest

from data_prep import synthetic
from data_prep import writer
from experiments import launch
from mcur_jax import compile_cache
from mcur_jax import validate
from tests import runs


@pytest.fixture
def jax_cache_settings():
  """Restores JAX's compilation cache settings after a test changes them."""
  names = ("jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs",
           "jax_enable_compilation_cache")
  before = {name: getattr(jax.config, name) for name in names}
  yield
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def test_compilation_cache_serves_a_later_identical_program(
    tmp_path, jax_cache_settings):  # pylint: disable=unused-argument
  """--compilation_cache unset: the default directory (where no
  JAX_COMPILATION_CACHE_DIR is set); a program compiled again (a new jit,
  as a later run makes) loads from it, however briefly it compiled."""
  jax.config.update("jax_compilation_cache_dir", None)
  default = str(tmp_path / "default")
  assert compile_cache.configure(None, default) == default
  hits = []
  listener = lambda event, **_: hits.append(event)
  jax.monitoring.register_event_listener(listener)
  try:
    x = np.arange(6, dtype=np.float32)
    for _ in range(2):
      jax.jit(lambda v: jnp.sin(v) * 3.5 + 0.25)(x).block_until_ready()
  finally:
    jax.monitoring.unregister_event_listener(listener)
  assert os.listdir(default)
  assert hits.count("/jax/compilation_cache/cache_hits") == 1


def test_compilation_cache_settings(tmp_path, monkeypatch,
                                    jax_cache_settings):  # pylint: disable=unused-argument
  """A directory from the environment is kept and keeps every program; a
  named one wins; "off" turns the cache off, and so does
  JAX_ENABLE_COMPILATION_CACHE=false unless a directory is named. A URL is
  JAX's to open. A default that cannot be written is passed over; a named
  directory (or the environment's) that cannot be, is a ConfigError naming
  where it came from."""
  configure = compile_cache.configure
  env_dir, named = str(tmp_path / "env"), str(tmp_path / "named")
  jax.config.update("jax_compilation_cache_dir", env_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  assert configure(None, "elsewhere") == env_dir
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  assert configure(named, "elsewhere") == named
  x = np.arange(3, dtype=np.float32)
  jax.jit(lambda v: v * 2.5)(x).block_until_ready()
  written = sorted(os.listdir(named))
  assert written
  # "off" stops a cache already in use: a new program is not written.
  assert configure("off", "elsewhere") is None
  assert not jax.config.jax_enable_compilation_cache
  jax.jit(lambda v: v * 3.5)(x).block_until_ready()
  assert sorted(os.listdir(named)) == written
  assert configure(None, "elsewhere") is None
  assert configure(named, "elsewhere") == named
  assert jax.config.jax_enable_compilation_cache
  # A URL goes to JAX as it is (no local directory made of it).
  monkeypatch.chdir(tmp_path)
  assert configure("gs://bucket/cache", "elsewhere") == "gs://bucket/cache"
  assert not os.path.exists("gs:")

  # A path below a file cannot be created, whoever runs the test.
  blocked = tmp_path / "file"
  blocked.write_text("")
  jax.config.update("jax_compilation_cache_dir", None)
  assert configure(None, str(blocked / "cache")) is None
  assert not jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", True)
  assert configure(None, None) is None  # No home directory, no default.
  with pytest.raises(validate.ConfigError,
                     match=r"^--compilation_cache: .*file/cache: not a "):
    configure(str(blocked / "cache"), "elsewhere")
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(blocked / "env"))
  with pytest.raises(validate.ConfigError,
                     match=r"^JAX_COMPILATION_CACHE_DIR: .*file/env: not a "):
    configure(None, "elsewhere")


def test_user_cache_dir_follows_xdg_and_home(tmp_path, monkeypatch):
  """$XDG_CACHE_HOME, else ~/.cache; none for a user without a home."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.user_cache_dir() == str(
      tmp_path / "xdg" / "mcur_jax" / "compilation_cache")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compile_cache.user_cache_dir() == str(
      tmp_path / "home" / ".cache" / "mcur_jax" / "compilation_cache")
  monkeypatch.setattr(os.path, "expanduser", lambda path: path)
  assert compile_cache.user_cache_dir() is None


# Extended (--full): three processes, the first compiling from an empty
# cache (about a minute on 2 cores); test_sweep's shards check that a
# cache of the tool's own is shared by default.
@pytest.mark.extended
@pytest.mark.slow(minutes=0.5)
def test_runs_share_the_users_compilation_cache(tmp_path):
  """With no cache named anywhere, a training run keeps its programs in the
  user's cache directory; a second run in another workdir and then
  `experiments.evaluate` load them all (the cache gains no entry) and the
  second run's results equal the first's."""
  data = tmp_path / "data"
  writer.write(synthetic.generate("mosi", 0, 0.1), data)
  env = {k: v for k, v in runs.environment().items()
         if k != "JAX_COMPILATION_CACHE_DIR"}
  env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
  cache = tmp_path / "xdg" / "mcur_jax" / "compilation_cache"
  programs = []
  for name in ("first", "second"):
    result = runs.cli("--data_dir", data, "--workdir", tmp_path / name,
                      "--config", f"{launch.CONFIGS}/mosi.py:tiny",
                      "--config.num_epochs=1", "--config.tensorboard=False",
                      env=env)
    assert result.returncode == 0, result.stderr
    programs.append(sorted(os.listdir(cache)))
  assert programs[0] and programs[1] == programs[0]
  assert (runs.results_without_timing(tmp_path / "first")
          == runs.results_without_timing(tmp_path / "second"))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", "--workdir",
       tmp_path / "second"], cwd=runs.ROOT, env=env, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert sorted(os.listdir(cache)) == programs[0]
