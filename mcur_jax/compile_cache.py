"""JAX's persistent compilation cache, as the entry points and the sweep
tool set it up (`configure`): every program a run compiles is kept on disk
and loaded, not compiled again, when a later run, a resumed one, evaluate
or predict compiles the same program (same shapes, same config constants,
same JAX and device). A program loaded is the program compiled.
"""

import os

import jax
from jax.experimental.compilation_cache import compilation_cache

from mcur_jax import validate


def user_cache_dir() -> str | None:
  """The entry points' default compilation cache:
  $XDG_CACHE_HOME/mcur_jax/compilation_cache (~/.cache when unset); None
  for a user with no home directory."""
  base = os.environ.get("XDG_CACHE_HOME")
  if not base:
    home = os.path.expanduser("~")
    if home == "~":
      return None
    base = os.path.join(home, ".cache")
  return os.path.join(base, "mcur_jax", "compilation_cache")


def _writable_directory(path: str) -> bool:
  """Makes the directory `path` if need be; whether this process can write
  there."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return False
  return os.access(path, os.W_OK | os.X_OK)


def _cache_off() -> None:
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()  # JAX decides once per process otherwise.


def configure(setting: str | None, default: str | None) -> str | None:
  """Applies --compilation_cache (`setting`): "off"; a directory; or, unset,
  the directory JAX_COMPILATION_CACHE_DIR gives, else `default`. JAX then
  keeps every program it compiles there, however briefly it compiled (a
  few MB per config), and loads it whenever the same program is compiled
  again, in this process or a later one: a program loaded is the program
  compiled (on a GPU XLA keeps its autotuning results there too). Unset,
  the cache stays off where the environment turned it off
  (JAX_ENABLE_COMPILATION_CACHE=false), and a default directory that cannot
  be written is passed over in silence; a named one is an error. A URL
  (a TPU VM's gs://bucket/cache, say) is passed to JAX as it is. Returns
  the directory in use (None: off)."""
  named = ("--compilation_cache" if setting else "JAX_COMPILATION_CACHE_DIR"
           if jax.config.jax_compilation_cache_dir else None)
  directory = setting or jax.config.jax_compilation_cache_dir or default
  if directory in (None, "off") or (
      setting is None and not jax.config.jax_enable_compilation_cache):
    _cache_off()
    return None
  if "://" not in directory:  # A URL (gs://...) is JAX's to check.
    directory = os.path.abspath(directory)
    if not _writable_directory(directory):
      if not named:
        _cache_off()
        return None
      raise validate.ConfigError(
          named, f"{directory}: not a directory this process can write")
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  compilation_cache.reset_cache()
  return directory
