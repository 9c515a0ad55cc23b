"""Where a run's time goes: wall seconds per phase and JAX's own seconds of
tracing, lowering and compiling each program, and what they were measured
on.

`train` records them in results.json ("seconds_by_phase": setup, train,
evaluate, calibrate; "seconds_within_phase": train's epochs, validation,
logging, checkpoint saves and the rest, evaluate's valid and test;
"compile_seconds" per program, e.g. `train_epoch`; "environment": the
versions, devices and host CPU), so a run on new hardware says what it
spent without a profiler; `benchmarks/bench_train.py` uses `CompileSeconds`
for its compile columns.
"""

import collections
import contextlib
from importlib import metadata
import os
import platform
import time

import jax


class CompileSeconds:
  """JAX's durations of tracing, lowering and XLA compilation
  (`jax.monitoring` events), summed per function while `active`; a program
  loaded from the persistent compilation cache counts its loading."""

  EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
            "/jax/core/compile/jaxpr_to_mlir_module_duration",
            "/jax/core/compile/backend_compile_duration")

  def __init__(self):
    self.seconds = collections.Counter()

  def __call__(self, event, duration, fun_name="", **_):
    if event in self.EVENTS:
      self.seconds[fun_name.removeprefix("jit(").removesuffix(")")] += duration

  @contextlib.contextmanager
  def active(self):
    jax.monitoring.register_event_duration_secs_listener(self)
    try:
      yield self
    finally:
      jax.monitoring.unregister_event_duration_listener(self)


class Phases:
  """Wall seconds of named phases (a phase entered twice adds up)."""

  def __init__(self):
    self.seconds = collections.Counter()

  @contextlib.contextmanager
  def phase(self, name: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.seconds[name] += time.perf_counter() - start


# The keys `summary` gives results.json: they describe the process that
# wrote the file, not the run (a resumed run records its part alone, and
# the machine it resumed on).
FIELDS = ("seconds_by_phase", "seconds_within_phase", "compile_seconds",
          "environment")
# The distributions whose versions decide a run's numbers.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")


def _host_cpu() -> str:
  """The processor's model name (Linux's /proc/cpuinfo), else what
  `platform` knows."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _version(distribution: str) -> str | None:
  try:
    return metadata.version(distribution)
  except metadata.PackageNotFoundError:  # Imported from a source tree.
    return None


def environment() -> dict:
  """What computed the run: Python and the package versions, JAX's backend
  and devices, the processes, the host CPU with its cores, and the
  persistent compilation cache in use. XLA compiles for the processor it
  runs on, so two processors can differ in a run's last digits
  (docs/results.md); this says which one wrote a result."""
  devices = jax.devices()
  return {"python": platform.python_version(),
          "packages": {name: _version(name) for name in PACKAGES},
          "backend": jax.default_backend(),
          "devices": f"{len(devices)} x {devices[0].device_kind}",
          "processes": jax.process_count(),
          "host_cpu": f"{_host_cpu()}, {os.cpu_count()} cores",
          # Where programs were loaded from (their compile_seconds then
          # count the loading); None: compiled, none kept.
          "compilation_cache": (jax.config.jax_compilation_cache_dir
                                if jax.config.jax_enable_compilation_cache
                                else None)}


def summary(phases: Phases, compiled: CompileSeconds) -> dict:
  """results.json's `FIELDS`: seconds per phase, the parts of a phase
  (phases named `outer/part`, plus `other`: the rest of the outer phase),
  and per program compiled (its tracing included: where a program is
  traced and compiled within a phase, the phase's seconds include it);
  and the `environment`."""
  outer = {k: v for k, v in phases.seconds.items() if "/" not in k}
  parts = collections.defaultdict(dict)
  for k, v in phases.seconds.items():
    if "/" in k:
      name, part = k.split("/", 1)
      parts[name][part] = v
  for name, found in parts.items():
    found["other"] = max(outer.get(name, 0.0) - sum(found.values()), 0.0)
  rounded = lambda d: {k: round(v, 2) for k, v in d.items()}
  return {"seconds_by_phase": rounded(outer),
          "seconds_within_phase": {k: rounded(v) for k, v in parts.items()},
          "compile_seconds": rounded(dict(sorted(
              compiled.seconds.items(), key=lambda kv: -kv[1]))),
          "environment": environment()}
