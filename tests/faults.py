"""Runs an entry point with one fault injected, as the fault tests need it.

    python -m tests.faults FAULT MODULE [ARGS...]

e.g. `python -m tests.faults save:2 experiments.mosi --workdir W ...` runs
`python -m experiments.mosi --workdir W ...` and SIGKILLs itself while
saving its second checkpoint. Faults (N counts calls, from 1):

  epoch:N        SIGKILL once the N-th training epoch has run, before its
                 result is used
  save:N         SIGKILL inside the N-th checkpoint save: its files are
                 written to orbax's temporary folder, not yet renamed
  enospc_save:N  the N-th checkpoint save fails with ENOSPC (disk full)
  metrics:N      SIGKILL when metrics.jsonl is written for the N-th time
                 (1: at the start, then after each epoch), its new content
                 written but not yet renamed into place
  test_eval      SIGKILL when the final test evaluation starts
  figures        SIGKILL after the first figure's bytes are written, before
                 the file is renamed into place
  results        SIGKILL after results.json's bytes are written, before the
                 rename that publishes it
  enospc_results writing results.json fails with ENOSPC
  hold:PATH      at the first epoch's end, create PATH and sleep (a run that
                 is alive and holds its workdir, for the lock test)
  nan_sugr       SUGR's clip bound is NaN (`sugr_with_nan_bound`): the loss
                 turns NaN when SUGR starts, after its warm-up epochs

The patches replace module attributes that the code looks up at call time,
so the entry point runs unchanged around them.
"""

import errno
import os
import runpy
import signal
import sys
import time

from matplotlib import figure
from orbax.checkpoint._src.path import atomicity

from mcur_jax import epoch as epoch_lib
from mcur_jax import evaluation
from mcur_jax import losses
from mcur_jax import progress
from mcur_jax import train


def _die():
  os.kill(os.getpid(), signal.SIGKILL)


def _full(path):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


def _on_call(owner, name, n, fault, when=lambda *a, **k: True):
  """Replaces `owner.name` by a wrapper that calls `fault(original, *args,
  **kwargs)` instead of the original on its n-th call for which `when`
  holds."""
  original = getattr(owner, name)
  calls = [0]

  def wrapper(*args, **kwargs):
    if when(*args, **kwargs):
      calls[0] += 1
      if calls[0] == n:
        return fault(original, *args, **kwargs)
    return original(*args, **kwargs)

  setattr(owner, name, wrapper)


def _on_finalize(n, fault):
  """Runs `fault(tmp_path)` before the n-th orbax commit of a checkpoint
  (the rename of a finished save's temporary step folder; the items inside
  it are committed before)."""
  original = atomicity.AtomicRenameTemporaryPath.finalize
  calls = [0]

  async def finalize(self, *args, **kwargs):
    calls[0] += self.get().parent.name == "checkpoints"
    if calls[0] == n and self.get().parent.name == "checkpoints":
      fault(str(self.get()))
    return await original(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize


def _publishing(name, n, fault):
  """Makes the n-th publication (os.replace onto it) of a file called
  `name` run `fault(destination)` first."""
  _on_call(os, "replace", n, lambda replace, src, dst, *a, **k: (
      fault(str(dst)), replace(src, dst, *a, **k))[1],
           when=lambda src, dst, *a, **k: os.path.basename(str(dst)) == name)


def _hold(path):
  def update(original, *args, **kwargs):
    original(*args, **kwargs)
    open(path, "w").close()
    time.sleep(600)
  _on_call(progress.Progress, "update", 1, update)


def sugr_with_nan_bound(sugr):
  """`losses.sugr` with a NaN clip bound (a value the config check refuses):
  its loss is NaN once SUGR is active, a divergence on cue."""
  return lambda *args, **kwargs: sugr(*args, **{**kwargs,
                                                "s_max": float("nan")})


def inject(fault: str) -> None:
  kind, _, arg = fault.partition(":")
  if kind == "epoch":
    _on_call(epoch_lib, "make_train_epoch", 1,
             lambda make, *a, **k: _on_epoch(make, int(arg), *a, **k))
  elif kind == "save":
    _on_finalize(int(arg), lambda _: _die())
  elif kind == "enospc_save":
    _on_finalize(int(arg), _full)
  elif kind == "metrics":
    _publishing("metrics.jsonl", int(arg), lambda _: _die())
  elif kind == "test_eval":
    _on_call(evaluation, "run", 1, lambda *a, **k: _die(),
             when=lambda *a, **k: a[-1] == "all")
  elif kind == "figures":
    _on_call(figure.Figure, "savefig", 1,
             lambda save, *a, **k: (save(*a, **k), _die()))
  elif kind == "results":
    _publishing("results.json", 1, lambda _: _die())
  elif kind == "enospc_results":
    _publishing("results.json", 1, _full)
  elif kind == "hold":
    _hold(arg)
  elif kind == "nan_sugr":
    losses.sugr = sugr_with_nan_bound(losses.sugr)
  else:
    raise SystemExit(f"unknown fault {fault!r}")


def _on_epoch(make, n, *args, **kwargs):
  """The compiled epoch of `make(*args)`, SIGKILLing after its n-th call."""
  epoch = make(*args, **kwargs)
  calls = [0]

  def run(*a, **k):
    out = epoch(*a, **k)
    calls[0] += 1
    if calls[0] == n:
      train.jax.block_until_ready(out)
      _die()
    return out

  return run


if __name__ == "__main__":
  inject(sys.argv[1])
  module = sys.argv[2]
  sys.argv = [module, *sys.argv[3:]]
  runpy.run_module(module, run_name="__main__", alter_sys=True)
