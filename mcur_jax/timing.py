"""Where a run's time goes: wall seconds per phase and JAX's own seconds of
tracing, lowering and compiling each program.

`train` records them in results.json ("seconds_by_phase": setup, train,
evaluate, calibrate; "compile_seconds" per program, e.g. `train_epoch`),
so a run on new hardware says what it spent without a profiler;
`benchmarks/bench_train.py` uses `CompileSeconds` for its compile columns.
"""

import collections
import contextlib
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


def summary(phases: Phases, compiled: CompileSeconds) -> dict:
  """results.json's timing fields, in seconds: per phase, and per program
  compiled (its tracing included: where a program is traced and compiled
  within a phase, the phase's seconds include it)."""
  return {"seconds_by_phase": {k: round(v, 2)
                               for k, v in phases.seconds.items()},
          "compile_seconds": {k: round(v, 2) for k, v in sorted(
              compiled.seconds.items(), key=lambda kv: -kv[1])}}
