"""What the entry points share: their flags, the config files, finding the
data, and running the job (`execute`; the process around it is
`experiments/process.py`).

    python -m experiments.mosi [--data_dir DIR] [--workdir DIR] [--config FILE[:tiny]] [--config.FIELD=VALUE ...]

Data: `--data_dir` (or config.data_dir; a --config.data_dir naming
another directory on the same command line is an error), a prepared
directory, when given:
the run takes its dataset from the directory's manifest (`take_dataset`);
else `prepared/<dataset>` under the working directory if it exists; else,
for a dataset the synthetic generator knows, a synthetic dataset shaped like
it, generated once into `WORKDIR/synthetic-<dataset>` and announced as such
in the first lines and in results.json. The workdir default, `runs/<name>`,
is under the working directory too.

Files: a relative path into this package that does not exist under the
working directory, like `--config experiments/configs/mosi.py:tiny` or
`--sweep experiments/sweeps/ablation.py` run from elsewhere, names that file
of the package wherever it is installed (`package_file`), so the documented
commands work from any directory after `pip install .`.

Compiled programs: every entry point keeps the programs it compiles in
JAX's persistent compilation cache (`mcur_jax.compile_cache.configure`), by
default the user's (`compile_cache.user_cache_dir()`), so a later run, a
resumed one, evaluate and predict load the programs an earlier process
compiled when they are the same (same shapes, same config constants, same
JAX and device) instead of compiling them again; `--compilation_cache off`
turns it off.
"""

import ctypes
import os
import re
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
import jax
import ml_collections
from ml_collections import config_flags

from data_prep import synthetic
from data_prep import writer
from experiments import process
from mcur_jax import checkpoint
from mcur_jax import compile_cache
from mcur_jax import fit as fit_lib
from mcur_jax import schema
from mcur_jax import train
from mcur_jax import validate
from mcur_jax import workdir as workdir_lib

# The directory holding the `experiments` package: the checkout, or
# site-packages once installed.
PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(PACKAGE_ROOT, "experiments", "configs")
# How a config's get_config(ARG) refuses an ARG it does not know.
UNKNOWN_VARIANT = "unknown config variant"
# The entry point whose config suits each task (schema.TASKS).
TASK_ENTRY_POINTS = {"regression": "mosi", "classification": "iemocap"}
FLAGS = flags.FLAGS


def package_file(path: str) -> str:
  """`path`; or, when it does not exist and is relative and inside this
  package (`experiments/...`), that file of the package as installed."""
  if (os.path.exists(path) or os.path.isabs(path)
      or os.path.normpath(path).split(os.sep)[0] != "experiments"):
    return path
  installed = os.path.join(PACKAGE_ROOT, path)
  return installed if os.path.exists(installed) else path


class _PackageFileParser(flags.ArgumentParser):
  """Parses `FILE[:ARG]` with `parser`, FILE found by `package_file`; a
  FILE that is not there, an ARG the config does not know, or an override
  `--NAME.FIELD` whose FIELD the config lacks, is a flag error (one line,
  naming the flag), not a traceback (ml_collections defers the first to
  the config's first use, adds get_config's traceback to the second and
  raises AttributeError for the third)."""

  def __init__(self, parser: flags.ArgumentParser, name: str):
    self.parser = parser
    self.name = name

  def parse(self, argument: str):
    file, colon, arg = argument.partition(":")
    path = package_file(file)
    if not os.path.isfile(path):
      raise ValueError(f"{file}: no such config file")
    try:
      config = self.parser.parse(path + colon + arg)
    except ValueError as e:
      # The configs' own refusal of ARG (configs/mosi.py); any other error
      # of a config file keeps its traceback.
      last = str(e).strip().splitlines()[-1].removeprefix("ValueError: ")
      if last.startswith(UNKNOWN_VARIANT):
        raise ValueError(f"{file}: {last}") from None
      raise
    _check_overrides(self.name, config)
    return config


def _check_overrides(name: str, config) -> None:
  """Raises ValueError for a `--NAME.A.B=...` of the command line (or of a
  --flagfile) whose A, or B inside the sub-config A, `config` lacks,
  suggesting the closest field, or where A is not a sub-config."""
  for arg in FLAGS.read_flags_from_files(sys.argv[1:], force_gnu=False):
    match = re.match(rf"--?(?:no)?{re.escape(name)}\.([^=]+)", arg)
    if not match:
      continue
    node = config
    for part in match.group(1).split("."):
      field, index, _ = part.partition("[")
      if not isinstance(node, ml_collections.ConfigDict):
        raise ValueError(f"--{name}.{match.group(1)}: {field!r} is inside a "
                         f"{type(node).__name__}, not a config")
      if field not in node:
        raise ValueError(f"--{name}.{match.group(1)}: no such config field"
                         f"{validate.did_you_mean(field, node.keys())}")
      if index:  # `field[0]`: an element of a list (ml_collections).
        if isinstance(node[field], tuple):
          raise ValueError(f"--{name}.{match.group(1)}: {field} is a tuple;"
                           f" set it whole (--{name}.{field}=a,b,...)")
        break
      node = node[field]


def define_config_file(name: str, default: str, help_string: str) -> None:
  """Defines --NAME, a config file (`FILE` or `FILE:ARG`, the argument of
  its `get_config`) found by `package_file`; its fields can be overridden
  as --NAME.FIELD=VALUE.

  The default is set after the parser is in place: when --NAME is not on
  the command line, ml_collections parses the default at once, here, before
  absl parses the flags, so a bad override fails here, with absl's message
  and exit status, not a traceback."""
  config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
  FLAGS[name].parser = _PackageFileParser(FLAGS[name].parser, name)
  try:
    FLAGS.set_default(name, default)
  except flags.Error as e:
    sys.exit(f"FATAL Flags parsing error: {e}\n"
             "Pass --helpshort or --helpfull to see help on flags.")


def take_dataset(config, explicit: bool) -> None:
  """Sets config.dataset to the dataset that the manifest of
  config.data_dir names, so a prepared directory needs no --config.dataset,
  and checks that the data's task is the config's (MOSI converted without
  regression labels is a classification dataset named mosi).

  Args:
    config: the run's config; config.data_dir is a prepared directory.
    explicit: whether the user set config.dataset (--config.dataset).

  Raises:
    schema.DataError: naming the manifest and its field, when an explicit
      config.dataset is another dataset, or when the data's task is not
      the one the config trains (a MOSI config on IEMOCAP data: its fields
      were chosen for the other task).
  """
  manifest = schema.Manifest.load(config.data_dir)
  path = os.path.join(config.data_dir, schema.MANIFEST)
  if explicit and manifest.dataset != config.dataset:
    raise schema.DataError(
        path, "dataset", f"{manifest.dataset!r}, but --config.dataset is "
        f"{config.dataset!r}; leave --config.dataset out to train on "
        f"{manifest.dataset!r}")
  task = validate.config_task(config)
  if task and task != manifest.task:
    name = TASK_ENTRY_POINTS[manifest.task]
    raise schema.DataError(
        path, "task", f"{manifest.task!r} (dataset {manifest.dataset!r}), "
        f"but this config (dataset {config.dataset!r}, task_loss "
        f"{config.task_loss!r}) is for {task}; for {manifest.task} data use "
        f"python -m experiments.{name} (or --config "
        f"experiments/configs/{name}.py)")
  config.dataset = manifest.dataset


# How --help names compile_cache.user_cache_dir().
USER_CACHE = "~/.cache/mcur_jax/compilation_cache ($XDG_CACHE_HOME for ~/.cache)"


def define_compilation_cache_flag(default: str = USER_CACHE) -> None:
  """--compilation_cache, listed by the main module's --help."""
  flags.DEFINE_string(
      "compilation_cache", None, "directory of JAX's persistent compilation "
      f"cache, or off (default: JAX_COMPILATION_CACHE_DIR if set, else "
      f"{default})")
  FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS["compilation_cache"])


def compilation_cache_from_flags(default: str | None = None) -> str | None:
  """`compile_cache.configure` with --compilation_cache; its default
  `default`, else `compile_cache.user_cache_dir()`."""
  return compile_cache.configure(FLAGS.compilation_cache,
                                 default or compile_cache.user_cache_dir())


def _overridden(field: str) -> bool:
  """Whether the command line set --config.FIELD."""
  return field in config_flags.get_override_values(FLAGS["config"])


def dataset_overridden() -> bool:
  """Whether the command line set --config.dataset."""
  return _overridden("dataset")


def find_data(config, workdir: str) -> str:
  """The prepared directory to train on when none is given (see the module
  docstring).

  Raises:
    validate.ConfigError: `workdir` holds a run started on other data (a
      rerun without the --data_dir its run was started with): said before
      any data is generated.
  """
  prepared = os.path.join("prepared", config.dataset)
  found = os.path.exists(os.path.join(prepared, schema.MANIFEST))
  out = prepared if found else os.path.join(workdir,
                                            f"synthetic-{config.dataset}")
  _check_run_data(workdir, out)
  if found:
    return prepared
  print(f"NOTE: no prepared data (no --data_dir, no {prepared}/): using "
        f"SYNTHETIC {config.dataset}-like data in {out} (see data_prep/"
        "synthetic.py); prepare real data with `python -m data_prep.convert`.")
  if not os.path.exists(os.path.join(out, schema.MANIFEST)):
    writer.write(synthetic.generate(config.dataset), out, overwrite=True)
  return out


def _check_run_data(workdir: str, found: str) -> None:
  """Raises ConfigError when `workdir` holds a run (or a fold) whose data
  is not `found`, the directory a run without --data_dir would take: known
  by its manifest's checksum (`workdir.check_data`; the data may move), or
  by its path for a run without data.json, or when nothing is prepared
  there (but the run's own synthetic data, deleted, is generated again).
  A run whose config.json or data.json cannot be read is left to the
  resume checks, which say so."""
  started = [d for d in [workdir] + workdir_lib.started_folds(workdir)
             if os.path.exists(os.path.join(d, workdir_lib.CONFIG_FILE))]
  if not started:
    return
  try:
    recorded = checkpoint.load_config(started[0]).data_dir
  except (OSError, ValueError):
    return
  advice = (f"not given, and {workdir} holds a run on {recorded}: give "
            "--data_dir with that data to resume it, or a new --workdir")
  # With no data there (the run's synthetic data since deleted is generated
  # again, then checked) or no checksum (a run from before data.json), the
  # path is all there is to compare.
  if not (os.path.exists(os.path.join(found, schema.MANIFEST)) and
          os.path.exists(os.path.join(started[0], workdir_lib.DATA_FILE))):
    if os.path.abspath(recorded) != os.path.abspath(found):
      raise validate.ConfigError("--data_dir", advice)
    return
  try:
    workdir_lib.check_data(started[0], found, "")
  except validate.ConfigError:
    raise validate.ConfigError("--data_dir", f"{advice} ({found} holds "
                               "other data)") from None
  except (OSError, ValueError, KeyError):
    return


def take_data(config, workdir: str) -> None:
  """Sets `config.data_dir` to the data the run trains on, absolute (so
  that config.json finds it from anywhere): --data_dir, else the config's,
  else `find_data`; a directory given is checked to be a prepared one and
  gives its dataset (`take_dataset`)."""
  given = FLAGS.data_dir or config.data_dir
  # --data_dir overrides a config file's data_dir, but not a
  # --config.data_dir of the same command line naming another directory.
  if (FLAGS.data_dir and _overridden("data_dir") and os.path.abspath(
      FLAGS.data_dir) != os.path.abspath(config.data_dir)):
    raise validate.ConfigError(
        "--data_dir", f"{FLAGS.data_dir}, but --config.data_dir is "
        f"{config.data_dir}; give one of them")
  if given and not os.path.exists(os.path.join(given, schema.MANIFEST)):
    raise validate.ConfigError(
        "--data_dir", f"{given}: not a prepared directory (no "
        f"{schema.MANIFEST}); python -m data_prep.convert prepares one "
        "from feature files (docs/data.md)")
  # Absolute, so that config.json finds the data from anywhere.
  config.data_dir = os.path.abspath(given or find_data(config, workdir))
  if given:
    take_dataset(config, dataset_overridden())


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


def execute(argv, job, cache: str | None = None) -> None:
  """Runs `job(config, workdir)` with the parsed flags: quiet logging,
  `initialize_distributed()` when `config.distributed`, the compilation
  cache (--compilation_cache; default `cache`, else the user's),
  the data found (and its dataset taken), and failures a user can fix
  turned into one `error:` line and an exit status (2: bad data,
  arguments or workdir, or a full disk; 3: training diverged; 130:
  stopped by Ctrl-C, `process.stop_at_epoch_end_on_ctrl_c`). A workdir
  the command made and left empty, but for an empty compilation cache
  folder in it (a refused sweep's), is removed. A distributed job that
  finished shuts its processes down together (`jax.distributed.shutdown`,
  a barrier) while the interpreter is whole.
  Left to JAX's exit handler, which tears the backends down first, process
  0 once aborted at exit in the coordination service's gRPC server
  shutdown (SIGABRT, exit -6; one 2-process test run of many)."""
  process.start(argv)
  config, workdir = FLAGS.config, FLAGS.workdir
  if config.distributed:
    initialize_distributed()
  restore_ctrl_c = process.stop_at_epoch_end_on_ctrl_c()
  created, used_cache = not os.path.exists(workdir), None
  try:
    with process.user_errors(workdir, resumes=True):
      used_cache = compilation_cache_from_flags(cache)
      take_data(config, workdir)
      job(config, workdir)
      if config.distributed:
        jax.distributed.shutdown()
  except fit_lib.TrainingDiverged as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except fit_lib.Interrupted as e:
    # Every process stops at the same point (`fit.stop_requested`).
    if config.distributed:
      jax.distributed.shutdown()
    print(e, file=sys.stderr)  # "stopped ...": asked for, not an error.
    sys.exit(130)
  finally:
    restore_ctrl_c()
    if created:
      _remove_if_empty(workdir, used_cache)


def _remove_if_empty(workdir: str, cache: str | None) -> None:
  """Removes `cache` if it is a folder of `workdir` that holds nothing,
  then `workdir` if it holds nothing: what a command refused at its checks
  left in a workdir it made (a sweep's compilation cache folder)."""
  inside = cache and os.path.dirname(os.path.abspath(cache)) == (
      os.path.abspath(workdir))
  for folder in [cache] * bool(inside) + [workdir]:
    try:
      os.rmdir(folder)
    except OSError:  # Not empty, or not there.
      pass


def define_flags(name: str, workdir: str, cache: str = USER_CACHE) -> None:
  """--data_dir, --workdir (default `workdir`), --compilation_cache (its
  default as --help says it: `cache`), the distributed job's flags and
  --config (default `configs/<name>.py`, fields overridable as
  --config.x=...; see `define_config_file`)."""
  flags.DEFINE_string("data_dir", None, "prepared directory (data_prep), "
                      "whose manifest sets the dataset; default "
                      "prepared/<dataset>, else synthetic data")
  flags.DEFINE_string("workdir", workdir,
                      "output directory: checkpoints, logs, results")
  define_compilation_cache_flag(cache)
  flags.DEFINE_string("coordinator_address", None, "with --config.distributed"
                      ": HOST:PORT of process 0 (unset: detected)")
  flags.DEFINE_integer("num_processes", None, "with --config.distributed: "
                       "processes of the job (unset: detected)")
  flags.DEFINE_integer("process_id", None, "with --config.distributed: this "
                       "process's index (unset: detected)")
  define_config_file(
      "config", os.path.join(CONFIGS, f"{name}.py"),
      "config file (FILE or FILE:tiny; experiments/configs/... is found in "
      "the installed package too), every field in it with a comment; "
      "override fields with --config.x=..., e.g. --config.seeds=0,1 "
      "--config.num_epochs=10 --config.fold=2 (IEMOCAP) "
      "--config.num_devices=1 --config.compute_dtype=bfloat16")
  # --help lists the flags of the main module only: make these its own.
  for flag in ("data_dir", "workdir", "coordinator_address", "num_processes",
               "process_id", "config"):
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[flag])


def run(name: str) -> None:
  """The entry point of `python -m experiments.<name>`: trains once."""
  define_flags(name, os.path.join("runs", name))
  app.run(lambda argv: execute(argv, train.train_and_evaluate))
