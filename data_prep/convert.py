"""Converts feature files to a prepared directory of TFRecords + manifest.json.

    python -m data_prep.convert --format FORMAT --dataset NAME [inputs] --out DIR

Formats (see docs/data.md): gcnet (GCNet/MoMKE/SDR-GNN label
pickle + per-utterance .npy folders), mmsa (MMSA aligned_50.pkl /
unaligned_50.pkl), poria (Poria et al. 2017 CSV folder), npz (a plain
interchange file). `--split_file` (JSON lists of group ids for
train/valid/test) overrides the split of any format.

Bad input ends with a one-line error naming the file and field, exit status 2,
and no output directory.
"""

import argparse
import os
import sys

import numpy as np

from data_prep import common
from data_prep import formats
from data_prep import writer
from mcur_jax import schema
from mcur_jax import tfrecord


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m data_prep.convert", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--format", required=True,
                 help=f"input format: {', '.join(formats.FORMATS)}")
  p.add_argument("--dataset", required=True,
                 help=f"dataset: {', '.join(common.DATASETS)}, or a name of "
                 "your own with --classes or --task (npz format)")
  p.add_argument("--classes", help="a dataset of your own: its class names "
                 "in the order of the label indices (NAME,NAME,...); string "
                 "labels in an npz are these names")
  p.add_argument("--task", choices=common.TASKS, help="a dataset of your "
                 "own: regression (scores in [-3, 3], 0 neutral) or "
                 "classification (then --classes; implied by it)")
  p.add_argument("--input", help="the input file or folder (mmsa, npz, poria)")
  p.add_argument("--labels", help="GCNet-style label pickle (gcnet; optional "
                 "for poria, giving continuous labels)")
  p.add_argument("--split_file", help="JSON {train, valid, test: [group ids]}"
                 " overriding the format's own split")
  p.add_argument("--nan_policy", default="error", choices=common.NAN_POLICIES,
                 help="NaN/inf features: fail (error) or zero them and mark "
                 "the modality absent (zero)")
  p.add_argument("--out", required=True, help="output directory (new)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace --out if it exists")
  for name, module in formats.FORMATS.items():
    module.add_arguments(p.add_argument_group(f"{name} format"))
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    if args.format not in formats.FORMATS:
      raise schema.DataError("command line", "--format",
                             f"unknown format {args.format!r} "
                             f"(known: {', '.join(formats.FORMATS)})")
    if args.format != "npz" and (args.classes or args.task):
      raise schema.DataError("command line", "--classes" if args.classes
                             else "--task", "names a dataset of your own, "
                             "which is converted from an npz file (--format "
                             "npz; docs/data.md)")
    # Values beyond float32 become inf (and inf - inf NaN) without a
    # warning line: the NaN policy then names them.
    with np.errstate(over="ignore", invalid="ignore"):
      table = formats.FORMATS[args.format].read(args)
    if args.split_file:
      table.split = common.split_from_file(args.split_file, table.rows.group_id)
      table.origin["split"] = args.split_file
      table.split_source = f"split file {os.path.basename(args.split_file)}"
      table.sources.append(writer.sha256_source(args.split_file, "split_file"))
      table.session_folds = False
    manifest = writer.write(table, args.out, overwrite=args.overwrite)
  except (schema.DataError, tfrecord.CorruptRecordError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for note in manifest.notes:
    print(f"note: {note}")
  counts = ", ".join(f"{s} {v['count']}" for s, v in manifest.splits.items())
  dims = ", ".join(f"{m} {d}" for m, d in manifest.dims.items())
  print(f"wrote {args.out}: {manifest.dataset} ({manifest.task}), {counts}; "
        f"dims {dims}; split from {manifest.split_source}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
