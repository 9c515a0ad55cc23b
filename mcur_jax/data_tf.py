"""Optional tf.data reader of prepared directories (TPU VM images ship TensorFlow).

`read_split` has the signature of `mcur_jax.data.read_split` and returns the
identical `Split`, so `data.load(directory, reader=data_tf.read_split)`
swaps it in. TensorFlow is imported only when this module is, and it is never
required: the default reader needs none.
"""

import os

import numpy as np
import tensorflow as tf

from mcur_jax import data
from mcur_jax import schema

_STRINGS = ("utt_id", "group_id", "speaker")


def _spec(manifest: schema.Manifest) -> dict:
  label = tf.float32 if manifest.task == "regression" else tf.int64
  spec = {f: tf.io.FixedLenFeature([], tf.string) for f in _STRINGS}
  spec.update({f: tf.io.FixedLenFeature([], tf.int64)
               for f in ("position", "session", *manifest.extra_fields)})
  spec["label"] = tf.io.FixedLenFeature([], label)
  for m in schema.MODALITIES:
    spec[m] = tf.io.RaggedFeature(tf.float32)
    spec[schema.available_field(m)] = tf.io.FixedLenFeature([], tf.int64)
  return spec


def read_split(directory: str | os.PathLike, manifest: schema.Manifest,
               split: str) -> data.Split:
  """Reads `split` with tf.data; absent modalities become zero rows."""
  files = data.shard_paths(directory, manifest, split)
  spec = _spec(manifest)
  dataset = tf.data.TFRecordDataset(files).map(
      lambda x: tf.io.parse_single_example(x, spec))
  columns = {k: [] for k in spec}
  for example in dataset.as_numpy_iterator():
    for k, v in example.items():
      columns[k].append(v)
  n = manifest.splits[split]["count"]
  if len(columns["label"]) != n:
    raise schema.DataError(os.path.join(directory, schema.MANIFEST),
                           f"splits.{split}.count", f"says {n} records, the "
                           f"shards hold {len(columns['label'])}")
  features, available = {}, []
  for m, d in manifest.dims.items():
    present = np.asarray(columns[schema.available_field(m)], bool)
    rows = np.zeros((n, d), np.float32)
    for i in np.flatnonzero(present):
      rows[i] = columns[m][i]
    features[m] = rows
    available.append(present)
  ints = {f: np.asarray(columns[f], np.int64)
          for f in ("position", "session", *manifest.extra_fields)}
  label = np.asarray(columns["label"])
  return data.Split(
      features=features, available=np.stack(available, 1),
      label=label.astype(np.float32 if manifest.task == "regression"
                         else np.int32),
      **{f: np.asarray([s.decode() for s in columns[f]]) for f in _STRINGS},
      position=ints["position"], session=ints["session"],
      extras={f: ints[f] for f in manifest.extra_fields})
