"""What the entry points share: flags, finding the data, and clean failures.

    python -m experiments.mosi [--data_dir DIR] [--workdir DIR] [--config FILE[:tiny]] [--config.FIELD=VALUE ...]

Data: `--data_dir` (a prepared directory) when given; else `prepared/<dataset>`
if it exists; else, for a dataset the synthetic generator knows, a synthetic
dataset shaped like it, generated once into `WORKDIR/synthetic-<dataset>`
and announced as such in the first lines and in results.json.
"""

import ctypes
import errno
import os
import sys


def _limit_malloc_arenas(count: int = 2) -> None:
  """Caps glibc's malloc arenas (M_ARENA_MAX) before any thread starts.

  glibc gives busy threads arenas of their own, and memory freed into them is
  rarely returned: with XLA's and orbax's thread pools the resident memory of
  a run grew by ~30 MB per checkpoint (1.52 GB peak for the default MOSI
  run on 2 cores; 1.1 GB with 2 arenas, at no measured speed cost). No-op
  off glibc.
  """
  try:
    ctypes.CDLL("libc.so.6").mallopt(-8, count)  # -8 = M_ARENA_MAX
  except (OSError, AttributeError):
    pass


_limit_malloc_arenas()

# pylint: disable=wrong-import-position
from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from data_prep import synthetic
from data_prep import writer
from mcur_jax import schema
from mcur_jax import train

CONFIGS = os.path.join(os.path.dirname(__file__), "configs")
FLAGS = flags.FLAGS


def find_data(config, workdir: str) -> str:
  """The prepared directory to train on (see the module docstring)."""
  if config.data_dir:
    return config.data_dir
  prepared = os.path.join("prepared", config.dataset)
  if os.path.exists(os.path.join(prepared, schema.MANIFEST)):
    return prepared
  out = os.path.join(workdir, f"synthetic-{config.dataset}")
  print(f"NOTE: no prepared data (no --data_dir, no {prepared}/): using "
        f"SYNTHETIC {config.dataset}-like data in {out} (see data_prep/"
        "synthetic.py); prepare real data with `python -m data_prep.convert`.")
  if not os.path.exists(os.path.join(out, schema.MANIFEST)):
    writer.write(synthetic.generate(config.dataset), out, overwrite=True)
  return out


def initialize_distributed() -> None:
  """`jax.distributed.initialize` with the --coordinator_address,
  --num_processes and --process_id flags (unset: detected, as on Cloud TPU,
  Slurm or Open MPI). CPU processes exchange their collectives over gloo
  (unless JAX_CPU_COLLECTIVES_IMPLEMENTATION says otherwise); TPU and GPU
  ignore that setting."""
  if not os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                             FLAGS.process_id)


def _os_error(e: OSError, workdir: str) -> str:
  where = e.filename or os.path.abspath(workdir)
  if e.errno in (errno.ENOSPC, errno.EDQUOT):
    return (f"{where}: no space left on device; free space and rerun the "
            "same command: it resumes from the last checkpoint")
  return f"{where}: {e.strerror or e}"


def execute(argv, job) -> None:
  """Runs `job(config, workdir)` with the parsed flags: quiet logging,
  `initialize_distributed()` when `config.distributed`, the data found,
  and failures a user can fix turned into one `error:` line and an exit
  status (2: bad data, arguments or workdir, or a full disk; 3: training
  diverged)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO.
  config, workdir = FLAGS.config, FLAGS.workdir
  if config.distributed:
    initialize_distributed()
  try:
    # Absolute, so that config.json finds the data from anywhere.
    config.data_dir = os.path.abspath(FLAGS.data_dir or
                                      find_data(config, workdir))
    job(config, workdir)
  except train.INPUT_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:
    print(f"error: {_os_error(e, workdir)}", file=sys.stderr)
    sys.exit(2)
  except train.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)


def define_flags(name: str, workdir: str) -> None:
  """--data_dir, --workdir (default `workdir`) and --config (default
  `configs/<name>.py`, fields overridable as --config.x=...)."""
  flags.DEFINE_string("data_dir", None, "prepared directory (data_prep); "
                      "default prepared/<dataset>, else synthetic data")
  flags.DEFINE_string("workdir", workdir,
                      "output directory: checkpoints, logs, results")
  flags.DEFINE_string("coordinator_address", None, "with --config.distributed"
                      ": HOST:PORT of process 0 (unset: detected)")
  flags.DEFINE_integer("num_processes", None, "with --config.distributed: "
                       "processes of the job (unset: detected)")
  flags.DEFINE_integer("process_id", None, "with --config.distributed: this "
                       "process's index (unset: detected)")
  config_flags.DEFINE_config_file(
      "config", os.path.join(CONFIGS, f"{name}.py"),
      "config file (FILE or FILE:tiny); override fields with --config.x=...",
      lock_config=True)


def run(name: str) -> None:
  """The entry point of `python -m experiments.<name>`: trains once."""
  define_flags(name, os.path.join("runs", name))
  app.run(lambda argv: execute(argv, train.train_and_evaluate))
