"""Optional tf.data reader of prepared directories (TPU VM images ship TensorFlow).

`read_split` has the signature of `mcur_jax.data.read_split` and returns the
identical `Split` from valid data (tested), so `data.load(directory,
reader=data_tf.read_split)` swaps it in. It checks only the record count:
the default reader's checks of each record (CRCs, label range,
availability, NaN) are not repeated here, so damaged data is the default
reader's to diagnose (`data_prep.inspect`). TensorFlow is imported only
when this module is, and it is never required: the default reader needs
none.
"""

import os

import numpy as np
import tensorflow as tf

from mcur_jax import data
from mcur_jax import schema

_DTYPES = {schema.BYTES: tf.string, schema.INT64: tf.int64,
           schema.FLOAT: tf.float32}


def _spec(manifest: schema.Manifest) -> dict:
  """The parsing spec of a record, from the schema's field table."""
  spec = {f.name: tf.io.FixedLenFeature([], _DTYPES[f.list_kind(manifest.task)])
          for f in schema.RECORD_FIELDS}
  spec.update({f: tf.io.FixedLenFeature([], _DTYPES[schema.EXTRA_KIND])
               for f in manifest.extra_fields})
  for m in schema.MODALITIES:
    spec[schema.FEATURES.key(m)] = tf.io.RaggedFeature(
        _DTYPES[schema.FEATURES.kind])
    spec[schema.AVAILABLE.key(m)] = tf.io.FixedLenFeature(
        [], _DTYPES[schema.AVAILABLE.kind])
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
  for m in schema.MODALITIES:
    present = np.asarray(columns[schema.AVAILABLE.key(m)], bool)
    rows = np.zeros((n, manifest.dims[m]), np.float32)
    for i in np.flatnonzero(present):
      rows[i] = columns[schema.FEATURES.key(m)][i]
    features[m] = rows
    available.append(present)
  record = {}
  for f in schema.RECORD_FIELDS:
    values = columns[f.name]
    if f.list_kind(manifest.task) == schema.BYTES:
      values = [v.decode() for v in values]
    record[f.name] = np.asarray(values, data.column_dtype(f, manifest.task))
  return data.Split(
      features=features, available=np.stack(available, 1), **record,
      extras={f: np.asarray(columns[f], np.int64)
              for f in manifest.extra_fields})
