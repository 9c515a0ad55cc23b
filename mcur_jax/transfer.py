"""Arrays between the host and the ("data",) mesh, single- and multi-host.

Training and evaluation both use these: host NumPy tables become device
arrays with a given sharding (each process passes the same, whole table;
the datasets are small), and replicated device outputs come back as NumPy.
"""

import contextlib

import jax
import numpy as np


def chunk_size(eval_batch_size: int, devices: int) -> int:
  """Rows per compiled evaluation call: `eval_batch_size` rounded up to a
  multiple of the `devices`."""
  return -(-eval_batch_size // devices) * devices


def to_device(host, sharding):
  """Device arrays of a tree (a dict, nested or not) of NumPy arrays, with
  `sharding`."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding,
                                                       np.asarray(x)), host)


def to_host(tree):
  """NumPy arrays of replicated arrays: each process reads its local replica
  (`jax.device_get` would need every shard addressable, false multi-host).
  On CPU they are read-only views of the device buffers, not copies."""
  return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def on_host():
  """A context in which `jax.numpy` work runs on the host CPU: the small
  host-side computations outside the compiled programs (the learning-rate
  schedule's values for the log, the labels' MCB-CL categories for the
  figures). On the default device each eager operation would compile a
  program of its own for the accelerator and copy its operands there and
  back. Without a CPU backend (`JAX_PLATFORMS` without cpu) the default
  device is kept."""
  try:
    cpu = jax.local_devices(backend="cpu")[0]
  except RuntimeError:
    return contextlib.nullcontext()
  return jax.default_device(cpu)
