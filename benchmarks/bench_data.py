"""Data pipeline speed: GCNet layout -> TFRecords, and TFRecords -> memory.

    python benchmarks/bench_data.py [--like mosei] [--scale 1.0] [--workdir DIR]

Generates a synthetic dataset shaped like MOSEI (22,856 utterances, GCNet
dims 512/1024/1024), writes it in the GCNet/MoMKE on-disk layout (label
pickle + one .npy per utterance, per-frame video folders), then times
`python -m data_prep.convert --format gcnet` on it and `mcur_jax.data.load`
of the result, and prints utterances per second for each. Targets on a
2-core machine: conversion under 60 s, reading under 5 s.
"""

import argparse
import os
import tempfile
import time

from data_prep import common
from data_prep import convert
from data_prep import synthetic
from data_prep.formats import gcnet
from mcur_jax import data


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--like", default="mosei", choices=sorted(common.DATASETS))
  parser.add_argument("--scale", type=float, default=1.0)
  parser.add_argument("--workdir", help="where to write (default: a temp dir)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
    t = time.perf_counter()
    table = synthetic.generate(args.like, seed=0, scale=args.scale)
    labels, features = gcnet.write_layout(table, os.path.join(tmp, "raw"))
    n = len(table.rows.utt_id)
    files = sum(len(f) + len(d) for _, d, f in os.walk(features))
    print(f"{args.like}: {n} utterances, GCNet layout with {files} files and "
          f"folders written in {time.perf_counter() - t:.1f} s")

    out = os.path.join(tmp, "prepared")
    t = time.perf_counter()
    status = convert.main(["--format", "gcnet", "--dataset", args.like,
                           "--labels", labels, "--features_dir", features,
                           "--out", out])
    convert_s = time.perf_counter() - t
    assert status == 0, "conversion failed"
    print(f"convert: {convert_s:.2f} s, {n / convert_s:,.0f} utterances/s "
          "(target < 60 s)")

    t = time.perf_counter()
    ds = data.load(out, fold=1 if args.like.startswith("iemocap") else None)
    read_s = time.perf_counter() - t
    assert len(ds.train) + len(ds.valid) + len(ds.test) == n
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"read:    {read_s:.2f} s, {n / read_s:,.0f} utterances/s, "
          f"{size / 2**20:.0f} MiB (target < 5 s)")


if __name__ == "__main__":
  main()
