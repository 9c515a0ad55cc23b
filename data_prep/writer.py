"""Checks a converted table of utterances and writes it as a prepared directory.

Every format reader under `data_prep/formats` produces a `Table`; `write`
validates it (unique ids, finite features, labels in range, each group in one
split) and writes TFRecord shards, `manifest.json` and the TFDS metadata
(`tfds_metadata`) into a temporary sibling directory that is renamed into
place only when everything succeeded, so a failed conversion never leaves a
half-written output.
"""

import dataclasses
import hashlib
import math
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from data_prep import tfds_metadata
from mcur_jax import data
from mcur_jax import normalization
from mcur_jax import schema
from mcur_jax import tfrecord
from mcur_jax import utterance_rows

# Regression labels (MOSI/MOSEI sentiment) must lie in this range.
LABEL_RANGE = (-3.0, 3.0)
# Shards are cut to hold about this many bytes of records each.
SHARD_BYTES = 64 << 20
# Cross-validation over sessions (IEMOCAP): the validation part of each fold
# is this fraction of the training dialogues, carved with this seed.
FOLD_VALID_FRACTION = 0.2
FOLD_SEED = 0


@dataclasses.dataclass
class Table:
  """Every utterance of a dataset, its split, and where each field came from."""

  dataset: str
  task: str
  classes: list[str] | None
  # Raw (unnormalised) features and ids, in any order.
  rows: data.Split
  # Per row: "train" / "valid" / "test", or "all" for session folds.
  split: np.ndarray
  # Field -> the file it was read from, to name in error messages.
  origin: dict[str, str]
  format: str
  split_source: str
  sources: list[dict[str, Any]]
  notes: list[str] = dataclasses.field(default_factory=list)
  # True: cross-validation over `session` (IEMOCAP) instead of fixed splits.
  session_folds: bool = False


def _check_sessions(table: Table) -> None:
  """With session folds each group lies in one session and sessions are
  numbered from 1 (`config.fold=0` means every fold)."""
  rows, origin = table.rows, table.origin
  if not table.session_folds:
    return
  where = origin.get("session", origin["utt_id"])
  if (rows.session < 1).any():
    raise schema.DataError(where, "session", f"session "
                           f"{int(rows.session.min())}: sessions are the "
                           "folds, numbered from 1 (fold 0 means all folds)")
  first = {}
  for g, session in zip(rows.group_id.tolist(), rows.session.tolist()):
    if first.setdefault(g, session) != session:
      raise schema.DataError(where, "session", f"group {g!r} is in sessions "
                             f"{first[g]} and {session} (give each session's "
                             "groups their own ids)")


def sha256_source(path: str | os.PathLike, role: str) -> dict[str, Any]:
  """A provenance entry: sha256 of a file, or of a directory tree (sorted
  relative paths and contents of every file under it)."""
  path = os.fspath(path)
  digest, files = hashlib.sha256(), 0
  if os.path.isdir(path):
    for root, dirs, names in os.walk(path):
      dirs.sort()
      for name in sorted(names):
        full = os.path.join(root, name)
        digest.update(os.path.relpath(full, path).encode() + b"\0")
        with open(full, "rb") as f:
          digest.update(hashlib.sha256(f.read()).digest())
        files += 1
  else:
    with open(path, "rb") as f:
      digest.update(f.read())
    files = 1
  return {"role": role, "name": os.path.basename(path.rstrip(os.sep)),
          "sha256": digest.hexdigest(), "files": files}


def check(table: Table) -> None:
  """Raises `schema.DataError` (naming file and field) on an invalid table."""
  rows, origin = table.rows, table.origin
  tfds_metadata.check_name(table.dataset, "command line", "--dataset")
  utterance_rows.check_ids(rows, origin)
  for f in schema.RECORD_FIELDS:
    if f.kind != schema.BYTES:
      continue
    for value in getattr(rows, f.name).tolist():
      try:
        value.encode()
      except UnicodeEncodeError:
        raise schema.DataError(origin.get(f.name, origin["utt_id"]), f.name,
                               f"{value!r} is not valid Unicode (a lone "
                               "surrogate)") from None
  if not any(x.shape[1] for x in rows.features.values()):
    raise schema.DataError(origin[schema.MODALITIES[0]], "features",
                           "no modality has any feature columns")
  for j, m in enumerate(schema.MODALITIES):
    present = rows.features[m][rows.available[:, j]]
    if not rows.features[m].shape[1] and len(present):
      raise schema.DataError(origin[m], schema.available_field(m),
                             f"{len(present)} utterances marked available, "
                             f"but {m} has no feature columns")
    if not np.isfinite(present).all():
      raise schema.DataError(origin[m], m, "NaN or inf values")
  label = rows.label
  bad, expected = data.bad_labels(
      label, len(table.classes) if table.task == "classification" else 0,
      LABEL_RANGE)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise schema.DataError(origin["label"], "label",
                           f"{int(bad.sum())} labels not {expected}, e.g. "
                           f"{label[i]:g} of {str(rows.utt_id[i])!r}")
  scored = (np.sign(label[label != 0]) if table.task == "regression"
            else np.zeros(0))
  if len(scored) and (scored == scored[0]).all():
    raise schema.DataError(
        origin["label"], "label", f"all {len(scored)} non-zero labels are "
        f"{'positive' if scored[0] > 0 else 'negative'}: the headline "
        "metrics (Non0 F1, acc2) score the sign of the label, 0 being "
        "neutral; centre the scale on its neutral point (a [0, 1] valence: "
        "label - 0.5, times 6 for [-3, 3])")
  needed = (schema.ALL_SPLIT,) if table.session_folds else schema.SPLITS
  # Unknown names first: a "dev" split is named, not reported as no
  # "valid", and a typo on one row ("tset") not as its group in two splits.
  extra = sorted(str(s) for s in set(np.unique(table.split)) - set(needed))
  if extra:
    rows_of = {x: int((table.split == x).sum()) for x in extra}
    raise schema.DataError(origin["split"], "split",
                           f"unknown split names {extra} (known: "
                           f"{', '.join(needed)}; rows: {rows_of})")
  pairs = np.unique(np.stack([rows.group_id, table.split], 1), axis=0)
  groups, counts = np.unique(pairs[:, 0], return_counts=True)
  if (counts > 1).any():
    g = str(groups[counts > 1][0])
    where = sorted(pairs[pairs[:, 0] == g, 1].tolist())
    raise schema.DataError(origin["split"], "split",
                           f"group {g!r} is in more than one split: {where}")
  _check_sessions(table)
  for s in needed:
    if not (table.split == s).any():
      raise schema.DataError(origin["split"], "split", f"no {s!r} utterances")


# How a value of each Example list kind is handed to `tfrecord.encode_example`.
_ENCODE = {schema.BYTES: str,
           schema.INT64: lambda v: np.array([v], np.int64),
           schema.FLOAT: lambda v: np.array([v], np.float32)}


def _record(rows: data.Split, i: int, task: str) -> bytes:
  """Row `i` as a serialized Example, field by field of `schema.FIELDS`."""
  fields = {f.name: _ENCODE[f.list_kind(task)](getattr(rows, f.name)[i])
            for f in schema.RECORD_FIELDS}
  fields.update({name: _ENCODE[schema.EXTRA_KIND](values[i])
                 for name, values in rows.extras.items()})
  for j, m in enumerate(schema.MODALITIES):
    present = rows.available[i, j]
    fields[schema.FEATURES.key(m)] = (
        rows.features[m][i] if present else np.zeros(0)).astype(np.float32)
    fields[schema.AVAILABLE.key(m)] = _ENCODE[schema.AVAILABLE.kind](present)
  return tfrecord.encode_example(fields)


def _normalization(table: Table, folds) -> dict:
  if folds is None:
    return {"train": normalization.feature_stats(
        table.rows.take(table.split == "train"))}
  stats = {}
  for fold in folds["values"]:
    names = data.fold_assignment(table.rows.group_id, table.rows.session, fold,
                                 folds["valid_fraction"], folds["seed"],
                                 table.origin.get("session",
                                                  table.origin["utt_id"]))
    stats[schema.fold_name(fold)] = normalization.feature_stats(
        table.rows.take(names == "train"))
  return stats


def _unscaled_notes(stats: dict) -> list[str]:
  """A note per modality with columns that vary but only so little that
  readers centre them without scaling (`normalization.MIN_STD`)."""
  notes = []
  for m in schema.MODALITIES:
    std = np.array([part[m]["std"] for part in stats.values()])
    tiny = ((std > 0) & (std <= normalization.MIN_STD)).any(0)
    if tiny.any():
      notes.append(
          f"{m}: {int(tiny.sum())} columns vary with a std of at most "
          f"{normalization.MIN_STD:g} (e.g. column "
          f"{int(np.flatnonzero(tiny)[0])}): "
          "they are centred, not scaled; rescale them before converting if "
          "they carry signal")
  return notes


def _empty_class_notes(table: Table) -> list[str]:
  """A note naming the classes no utterance has (the model still has an
  output for each, and the macro metrics count a class it predicts)."""
  if table.task != "classification":
    return []
  counts = np.bincount(table.rows.label.astype(int),
                       minlength=len(table.classes))
  empty = [c for c, k in zip(table.classes, counts) if not k]
  return [f"label: no utterance of class {', '.join(empty)} (of "
          f"{', '.join(table.classes)}): check the label key (--key "
          "label=...) and the dataset's classes"] if (
              empty) else []


def _write_shards(table: Table, directory: str
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, list[int]]]:
  """Writes the shards of every split; returns the manifest's `splits` and
  the record count of each shard by split."""
  rows = table.rows
  row_bytes = 4 * sum(x.shape[1] for x in rows.features.values()) + 256
  splits, lengths = {}, {}
  for s in (*schema.SPLITS, schema.ALL_SPLIT):
    index = np.flatnonzero(table.split == s)
    if not len(index):
      continue
    # Records sorted by group and position: shards read as whole videos.
    index = index[np.lexsort((rows.position[index], rows.group_id[index]))]
    count = max(1, math.ceil(len(index) * row_bytes / SHARD_BYTES))
    files, lengths[s] = [], []
    for k, part in enumerate(np.array_split(index, count)):
      name = schema.shard_name(table.dataset, s, k, count)
      lengths[s].append(tfrecord.write_records(
          os.path.join(directory, name),
          (_record(rows, int(i), table.task) for i in part)))
      files.append(name)
    splits[s] = {
        "count": len(index),
        "groups": len(set(rows.group_id[index].tolist())),
        "files": files,
        "available": {m: int(rows.available[index, j].sum())
                      for j, m in enumerate(schema.MODALITIES)},
    }
  return splits, lengths


def publish(tmp: str, out: str) -> None:
  """Renames the finished directory `tmp` to `out`, replacing what is there
  (moved aside first, then removed)."""
  if os.path.exists(out):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old.",
                           dir=os.path.dirname(out))
    os.rename(out, os.path.join(old, "x"))
    os.rename(tmp, out)
    shutil.rmtree(old)
  else:
    os.rename(tmp, out)


def write(table: Table, out: str | os.PathLike, overwrite: bool = False
          ) -> schema.Manifest:
  """Checks `table` and writes it to `out` atomically; returns the manifest."""
  out = os.path.abspath(os.fspath(out))
  if os.path.exists(out) and not overwrite:
    raise schema.DataError(out, "--out",
                           "exists; pass --overwrite to replace it")
  check(table)
  folds = None
  if table.session_folds:
    folds = {"key": "session",
             "values": sorted(set(table.rows.session.tolist())),
             "valid_fraction": FOLD_VALID_FRACTION, "seed": FOLD_SEED}
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
  try:
    splits, lengths = _write_shards(table, tmp)
    stats = _normalization(table, folds)
    manifest = schema.Manifest(
        dataset=table.dataset, task=table.task, classes=table.classes,
        dims={m: int(x.shape[1]) for m, x in table.rows.features.items()},
        splits=splits,
        normalization=stats, folds=folds,
        label_range=list(LABEL_RANGE) if table.task == "regression" else None,
        extra_fields=sorted(table.rows.extras), format=table.format,
        split_source=table.split_source, sources=table.sources,
        notes=(table.notes + _empty_class_notes(table)
               + _unscaled_notes(stats)))
    with open(os.path.join(tmp, schema.MANIFEST), "w") as f:
      f.write(manifest.to_json())
    tfds_metadata.write(tmp, manifest, lengths)
    publish(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest
