"""Brings a prepared directory written before to today's layout.

    python -m data_prep.upgrade DIR

Directories written before shards had TFDS names (`{split}-NNNNN-of-
MMMMM.tfrecord`, no TFDS metadata) still load everywhere; this makes them
TFDS datasets too. It verifies DIR as `data_prep.inspect` does, then builds
the new directory in a temporary sibling, the shards hard-linked under their
TFDS names (no data is copied), the manifest's `files` rewritten and the
TFDS metadata written, and renames it into place, as the writer does. The
manifest's records, statistics and provenance are unchanged, but its sha256
is not: a training run started on DIR before cannot resume on it after.
Running it on an upgraded directory rewrites the same files.
"""

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile

from data_prep import inspect
from data_prep import tfds_metadata
from data_prep import writer
from mcur_jax import schema
from mcur_jax import tfrecord


def upgrade(directory: str | os.PathLike) -> schema.Manifest:
  """Upgrades `directory` in place (atomically); returns its new manifest.

  Raises:
    schema.DataError, tfrecord.CorruptRecordError: the directory does not
      verify, or its dataset name cannot name a TFDS dataset.
  """
  out = os.path.abspath(os.fspath(directory))
  manifest, _ = inspect.verify(out)
  tfds_metadata.check_name(manifest.dataset,
                           os.path.join(out, schema.MANIFEST), "dataset")
  names, splits, lengths = {}, {}, {}
  for s, info in manifest.splits.items():
    count = len(info["files"])
    new = [schema.shard_name(manifest.dataset, s, k, count)
           for k in range(count)]
    names.update(zip(info["files"], new))
    splits[s] = {**info, "files": new}
    lengths[s] = [sum(1 for _ in tfrecord.read_records(os.path.join(out, f)))
                  for f in info["files"]]
  manifest = dataclasses.replace(manifest, splits=splits)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.",
                         dir=os.path.dirname(out))
  try:
    for name in os.listdir(out):
      if name != schema.MANIFEST and name not in tfds_metadata.FILES:
        os.link(os.path.join(out, name),
                os.path.join(tmp, names.get(name, name)))
    with open(os.path.join(tmp, schema.MANIFEST), "w") as f:
      f.write(manifest.to_json())
    tfds_metadata.write(tmp, manifest, lengths)
    writer.publish(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m data_prep.upgrade",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("directory", help="a prepared directory")
  args = parser.parse_args(argv)
  try:
    manifest = upgrade(args.directory)
  except (schema.DataError, tfrecord.CorruptRecordError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  splits = ", ".join(schema.tfds_split(s) for s in manifest.splits)
  print(f"upgraded {args.directory}: TFDS dataset {manifest.dataset!r}, "
        f"splits {splits}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
