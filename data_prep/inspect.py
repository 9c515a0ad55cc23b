"""Verifies every record of a prepared directory and prints a summary.

    python -m data_prep.inspect DIR

Checks: the manifest's schema, every shard's framing and CRCs, every record
against the manifest (fields, types, feature lengths), record counts, no
stray shard files (TFDS-named, or `*.tfrecord` as written before), group ids
in a single split, and the normalisation statistics against a recomputation.
Prints counts per split, dims, label distribution and availability per
modality. A failure is one line naming the file and field, with exit status 2.
"""

import argparse
import os
import sys

import numpy as np

from mcur_jax import data
from mcur_jax import normalization
from mcur_jax import schema
from mcur_jax import tfrecord


def _label_summary(manifest: schema.Manifest, split: data.Split) -> str:
  if manifest.classes:
    counts = np.bincount(split.label, minlength=len(manifest.classes))
    return ", ".join(f"{c} {n}" for c, n in zip(manifest.classes, counts))
  y = split.label
  seven = np.bincount(np.round(np.clip(y, -3, 3)).astype(int) + 3, minlength=7)
  return (f"neg {(y < 0).sum()} / zero {(y == 0).sum()} / pos {(y > 0).sum()};"
          f" 7-class {seven.tolist()}; mean {y.mean():+.3f} std {y.std():.3f}")


def _check_stats(directory, manifest, name, split: data.Split) -> None:
  stored = normalization.normalization_stats(directory, manifest, name)
  for m, values in normalization.feature_stats(split).items():
    for key in ("mean", "std"):
      if not np.allclose(values[key], stored[m][key], rtol=1e-4, atol=1e-5):
        raise schema.DataError(os.path.join(directory, schema.MANIFEST),
                               f"normalization.{name}.{m}.{key}",
                               "does not match the records")


def verify(directory: str) -> tuple[schema.Manifest, dict[str, data.Split]]:
  """Reads and checks everything; returns the manifest and raw splits."""
  manifest = schema.Manifest.load(directory)
  listed = {f for info in manifest.splits.values() for f in info["files"]}
  for name in sorted(os.listdir(directory)):
    if schema.is_shard_name(name) and name not in listed:
      raise schema.DataError(os.path.join(directory, name), "file",
                             "shard not listed in the manifest")
  splits = {s: data.read_split(directory, manifest, s) for s in manifest.splits}
  seen = {}
  for s, split in splits.items():
    for g in set(split.group_id.tolist()):
      if seen.setdefault(g, s) != s:
        raise schema.DataError(data.shard_paths(directory, manifest, s)[0],
                               "group_id", f"group {g!r} also in {seen[g]!r}")
  if manifest.folds:
    everything = splits[schema.ALL_SPLIT]
    for fold in manifest.folds["values"]:
      names = data.fold_assignment(
          everything.group_id, getattr(everything, manifest.folds["key"]),
          fold, manifest.folds["valid_fraction"], manifest.folds["seed"],
          os.path.join(directory, schema.MANIFEST))
      _check_stats(directory, manifest, schema.fold_name(fold),
                   everything.take(names == "train"))
  else:
    _check_stats(directory, manifest, "train", splits["train"])
  return manifest, splits


def summary(manifest: schema.Manifest, splits: dict[str, data.Split]) -> str:
  lines = [f"{manifest.dataset}: {manifest.task}, format {manifest.format}, "
           f"schema v{manifest.schema_version}",
           "dims: " + ", ".join(f"{m} {d}" for m, d in manifest.dims.items()),
           f"split: {manifest.split_source}"]
  if manifest.folds:
    lines.append(f"folds: by {manifest.folds['key']} "
                 f"{manifest.folds['values']}, valid = "
                 f"{manifest.folds['valid_fraction']} of the training groups")
  for s, split in splits.items():
    avail = ", ".join(f"{m} {split.available[:, j].sum()}"
                      for j, m in enumerate(schema.MODALITIES))
    lines.append(f"{s}: {len(split)} utterances in "
                 f"{len(set(split.group_id.tolist()))} groups")
    lines.append(f"  labels: {_label_summary(manifest, split)}")
    lines.append(f"  available: {avail}")
    for name, values in split.extras.items():
      lines.append(f"  {name}: {int(values.sum())}")
  lines += [f"note: {n}" for n in manifest.notes]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.inspect",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("directory", help="a prepared directory")
  args = parser.parse_args(argv)
  try:
    manifest, splits = verify(args.directory)
  except (schema.DataError, tfrecord.CorruptRecordError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary(manifest, splits))
  print(f"OK: {sum(len(s) for s in splits.values())} records verified")
  return 0


if __name__ == "__main__":
  sys.exit(main())
