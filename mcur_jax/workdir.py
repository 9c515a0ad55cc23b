"""What guards a run's workdir: one run at a time, resume only what was
started, and files that are whole or absent.

* `workdir_lock.lock(workdir)`: one run at a time, process 0 holding an
  flock on `WORKDIR/.lock` for the whole run.
* `record_start(workdir, config, devices, stats)` writes the run's config
  (`config.json`), its data's manifest checksum and its device count
  (`data.json`), and what a restored model needs of its data
  (`MODEL_INPUTS`); `check_resume(workdir, config)` then requires a run that
  resumes from checkpoints to have that config and data, except the fields
  of `SAFE_ON_RESUME`; anything else is refused (`validate.ConfigError`
  naming every differing field). `check_data` is the data half, which
  evaluation and prediction check too; `check_devices` notes a resume on
  another device count.
* `write_text(path, text)`: written to a hidden temporary file beside
  `path`, then renamed over it, so a run killed while writing leaves the
  old file or the new one, never half of one.

Multi-process: process 0 alone writes files and holds the lock; decisions
that would differ if processes read the disk at different moments are
process 0's, broadcast (`agree`).
"""

import contextlib
import glob
import hashlib
import io
import json
import os
import socket
import zipfile

import jax
from jax.experimental import multihost_utils
import numpy as np

from mcur_jax import schema
from mcur_jax import validate

CONFIG_FILE = "config.json"
# sha256 of the prepared data's manifest.json at the run's start.
DATA_FILE = "data.json"
# Its presence marks a finished run (`report.write_results`).
RESULTS_FILE = "results.json"
# One line per epoch and seed (`report.MetricsLog`).
METRICS_FILE = "metrics.jsonl"
# What a restored model needs of its prepared data, written at the run's
# start so that the workdir alone restores the model and predicts new
# features, on another machine or after the data moved: the data's
# manifest.json byte for byte (its sha256 is data.json's; dims, task,
# classes, modalities) and STATS_FILE, the statistics the run standardised
# its features with (`run_manifest`, `kept_stats`).
MODEL_INPUTS = "model_inputs"
STATS_FILE = "train_stats.npz"

# Config fields a resumed run may change, and why each is safe: none of
# them changes a training step or a prediction, so the resumed run trains
# and scores exactly as the interrupted one would have; except the device
# count (num_devices, distributed: a resume on other hardware), which
# changes the order of data-parallel sums, so the run then equals an
# uninterrupted one to float rounding (about 1e-6), not bit for bit, and
# a resume says so (`check_devices`). eval_batch_size is not here: the
# evaluation chunks change predictions in their last bits, which can move
# a selection.
SAFE_ON_RESUME = {
    "plots": "figures are written after training",
    "tensorboard": "event files only show what metrics.jsonl records",
    "checkpoint_every": "when the state is saved, not what it is",
    "checkpoint_seconds": "when the state is saved, not what it is",
    "num_devices": "data parallelism (equal within float rounding)",
    "distributed": "how the processes find each other (the device count: "
                   "float rounding)",
    "data_dir": "the data may move; its manifest checksum must not change",
    "missing_rates": "the missing-rate protocol runs after training",
    "missing_rate_draws": "the missing-rate protocol runs after training",
    "missing_rate_seed": "the missing-rate protocol runs after training",
}

# Config fields added after the first runs were written, each with the
# value that reproduces a run whose config.json predates the field: such a
# workdir still evaluates, predicts and resumes.
LATER_FIELDS = {
    "compute_dtype": "float32",
    "tensorboard": False,
    "speaker_norm": "",
    "validation": "groups",
    "context_position_init": "zero",
    "context_means": "",
    "context_kind": "transformer",
    "selection": "valid",
    "checkpoint_seconds": 0.0,
    "sugr_beta": 0.0,
}


def read_config(path: str) -> dict:
  """A run's config.json as a dict, with `LATER_FIELDS` it predates."""
  with open(path) as f:
    return {**LATER_FIELDS, **json.load(f)}


def agree(value: bool) -> bool:
  """Process 0's `value` on every process (itself with one process)."""
  if jax.process_count() == 1:
    return value
  return bool(multihost_utils.broadcast_one_to_all(np.array(value)))


@contextlib.contextmanager
def replacing(path: str):
  """Yields a hidden temporary path beside `path` to write; renames it over
  `path` when the block ends normally, removes it otherwise."""
  folder, name = os.path.split(path)
  # Host and pid: shards on several machines may share one workdir.
  tmp = os.path.join(folder, f".{name}.{socket.gethostname()}."
                     f"{os.getpid()}.tmp")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
  """Replaces `path` with `data` atomically (see the module docstring)."""
  with replacing(path) as tmp, open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def write_text(path: str, text: str) -> None:
  """Replaces `path` with `text` (UTF-8) atomically."""
  write_bytes(path, text.encode())


def write_json(path: str, value) -> None:
  write_text(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def data_sha256(data_dir: str) -> str:
  """sha256 of the prepared directory's manifest.json, which records every
  shard's utterance count and the converted sources' checksums."""
  with open(os.path.join(data_dir, schema.MANIFEST), "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def started_folds(workdir: str) -> list[str]:
  """The WORKDIR/fold<k>/ of a cross-validated run that have started
  (their config.json), in fold order."""
  found = [d for d in glob.glob(os.path.join(workdir,
                                             schema.fold_name("[0-9]*")))
           if os.path.exists(os.path.join(d, CONFIG_FILE))]
  return sorted(found, key=schema.fold_of)


def record_start(workdir: str, config, devices: int, stats) -> None:
  """Writes what `check_resume` and `check_devices` compare against
  (process 0): the config, the data checksum and the device count; and
  MODEL_INPUTS, the data's manifest and `stats`, the statistics
  ({modality: {name: array}}) the run's features were standardised with."""
  if jax.process_index() != 0:
    return
  write_text(os.path.join(workdir, CONFIG_FILE),
             config.to_json_best_effort(indent=1, sort_keys=True) + "\n")
  with open(os.path.join(config.data_dir, schema.MANIFEST), "rb") as f:
    manifest = f.read()
  inputs = os.path.join(workdir, MODEL_INPUTS)
  os.makedirs(inputs, exist_ok=True)
  write_bytes(os.path.join(inputs, schema.MANIFEST), manifest)
  arrays = io.BytesIO()
  np.savez(arrays, **{f"{m}/{k}": v for m, values in stats.items()
                      for k, v in values.items()})
  write_bytes(os.path.join(inputs, STATS_FILE), arrays.getvalue())
  write_json(os.path.join(workdir, DATA_FILE),
             {"data_dir": config.data_dir,
              "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
              "devices": devices})


def kept_stats(workdir: str, dims: dict) -> dict | None:
  """The statistics `record_start` kept in MODEL_INPUTS ({modality: {name:
  array}}), each checked to be [dims[modality]]; None for a run from before
  the copy.

  Raises:
    schema.DataError: the file is damaged or does not fit `dims`.
  """
  path = os.path.join(workdir, MODEL_INPUTS, STATS_FILE)
  if not os.path.exists(path):
    return None
  stats = {m: {} for m in schema.MODALITIES}
  try:
    with np.load(path) as saved:
      for key in saved.files:
        modality, name = key.split("/")
        stats[modality][name] = saved[key]
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
    raise schema.DataError(path, "statistics", f"unreadable ({e}); copy "
                           "the run's workdir again") from None
  for modality, values in stats.items():
    for name, value in values.items():
      if value.shape != (dims[modality],):
        raise schema.DataError(
            path, f"{modality}/{name}", f"shape {value.shape}, but "
            f"dims.{modality} is {dims[modality]}")
  return stats


def run_manifest(workdir: str, trained_at: str,
                 moved_to: str | None = None) -> schema.Manifest:
  """The manifest of the data the run in `workdir` trained on: its copy in
  MODEL_INPUTS, or, for a run from before the copy, that of its data
  (`legacy_data_dir`)."""
  copy = os.path.join(workdir, MODEL_INPUTS)
  if os.path.exists(os.path.join(copy, schema.MANIFEST)):
    return schema.Manifest.load(copy)
  return schema.Manifest.load(legacy_data_dir(workdir, trained_at, moved_to))


def legacy_data_dir(workdir: str, trained_at: str,
                    moved_to: str | None = None) -> str:
  """Where a run from before MODEL_INPUTS finds what a restored model needs
  of its data: `trained_at` (its config.data_dir) if it is there, else
  `moved_to` (a --data_dir); checked to be the run's data (`check_data`)."""
  found = trained_at
  if moved_to and not os.path.exists(os.path.join(found, schema.MANIFEST)):
    found = moved_to
  if not os.path.exists(os.path.join(found, schema.MANIFEST)):
    raise validate.ConfigError(
        "--data_dir", f"the run in {workdir} predates {MODEL_INPUTS}/ and "
        f"needs its prepared data, which is not at {found}: give "
        "--data_dir where it is now")
  check_data(workdir, found, "its statistics, splits and results would not "
             "be the run's: prepare the data again as the run's was, or "
             "train again")
  return found


def check_devices(workdir: str, devices: int) -> str | None:
  """A note if the run in `workdir` last trained on another number of
  devices (data parallelism sums in another order: the resumed run equals
  an uninterrupted one to float rounding only); None if the same or not
  recorded."""
  path = os.path.join(workdir, DATA_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    before = json.load(f).get("devices")
  if before in (None, devices):
    return None
  return (f"NOTE: {workdir} trained on {before} device(s) before and "
          f"resumes on {devices}: the run equals an uninterrupted one to "
          "float rounding (about 1e-6), not bit for bit")


def check_resume(workdir: str, config) -> list[str]:
  """Raises ConfigError if `config` or its data differ from the run that
  wrote the workdir's checkpoints (fields of SAFE_ON_RESUME excepted);
  returns the SAFE_ON_RESUME fields that differ."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    before = read_config(path)
  except (OSError, ValueError) as e:
    raise validate.ConfigError(
        path, f"unreadable ({e}); cannot check that resuming the checkpoints"
        f" in {workdir} is safe: remove the workdir to start over") from None
  now = json.loads(config.to_json_best_effort())
  differ = sorted(k for k in set(before) | set(now)
                  if k not in SAFE_ON_RESUME and before.get(k) != now.get(k))
  if differ:
    changes = "; ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
                        for k in differ)
    raise validate.ConfigError(
        f"config ({', '.join(differ)})",
        f"differs from the run whose checkpoints are in {workdir} ({changes})"
        "; resume with the same config, or use a new --workdir")
  check_data(workdir, config.data_dir, "resume on the same data, or use a "
             "new --workdir")
  return sorted(k for k in SAFE_ON_RESUME if before.get(k) != now.get(k))


# The SAFE_ON_RESUME fields that change what a finished run writes after
# training: a finished sweep point (or fold) given another value is
# finished again (`new_outputs`).
AFTER_TRAINING = ("plots", "tensorboard", "missing_rates",
                  "missing_rate_draws", "missing_rate_seed")
# Of these, the outputs a finished run only writes when they are on.
SWITCHED_OUTPUTS = ("plots", "tensorboard")


def new_outputs(changed: list[str], config) -> list[str]:
  """Of the SAFE_ON_RESUME fields `changed` since a run finished
  (`check_resume`), those that give it outputs it lacks: the missing-rate
  protocol's, and figures or TensorBoard turned on (turned off, what was
  written stays and nothing is to do)."""
  return [k for k in changed if k in AFTER_TRAINING and (
      k not in SWITCHED_OUTPUTS or config[k])]


def check_data(workdir: str, data_dir: str, advice: str) -> None:
  """Raises ConfigError if the prepared data in `data_dir` is not the data
  the run in `workdir` trained on (the manifest's sha256 that
  `record_start` wrote; runs from before it are not checked)."""
  data = os.path.join(workdir, DATA_FILE)
  if os.path.exists(data):
    with open(data) as f:
      recorded = json.load(f)["manifest_sha256"]
    if recorded != data_sha256(data_dir):
      raise validate.ConfigError(
          os.path.join(data_dir, schema.MANIFEST),
          f"not the prepared data the run in {workdir} started on (its "
          f"manifest sha256 differs: other data, or the data changed); "
          f"{advice}")
