"""A prepared directory -> per-split NumPy arrays: CRC and schema checked,
folds, standardised (`normalization.py`).

`load(directory)` is the entry point: it reads `manifest.json`, every record
(through `tfrecord.read_records`, which checks framing and CRCs), checks each
record against the manifest, and returns a `Dataset` of `Split`s with the
features standardised by the train-split statistics stored in the manifest
(or, for the modalities of `speaker_norm`, by each speaker's own
statistics: `normalization.normalize_per_speaker`). The datasets are small
(MOSEI ~23k utterances), so everything is read once into memory; no
TensorFlow is needed.

Datasets with cross-validation folds (IEMOCAP) store all records in the `all`
split; `load(directory, fold=k)` selects test = session k and carves a
validation part from the training sessions by dialogue (`carve_groups`).
"""

import dataclasses
import math
import os
from collections.abc import Sequence

from google.protobuf import message
import numpy as np

from mcur_jax import normalization
from mcur_jax import schema
from mcur_jax import tfrecord

# data.load's `validation`: how a fold's validation part is chosen.
VALIDATION = ("groups", "session")


@dataclasses.dataclass(frozen=True)
class Split:
  """The utterances of one split as columns (row i = one utterance).

  `features` and `available` hold the per-modality record fields; every
  other attribute but `extras` is the per-record field of the same name in
  `schema.RECORD_FIELDS`.
  """

  # modality -> [N, dim] float32 (dim 0 for a modality the dataset lacks);
  # rows of absent modalities are zeros.
  features: dict[str, np.ndarray]
  # [N, 3] bool, column m = MODALITIES[m] natively present.
  available: np.ndarray
  # [N] float32 score (regression) or int32 class index (classification).
  label: np.ndarray
  utt_id: np.ndarray
  group_id: np.ndarray
  speaker: np.ndarray
  position: np.ndarray
  session: np.ndarray
  # Extra int fields named in the manifest (e.g. `corrupted` of synthetic data).
  extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.label)

  def take(self, index: np.ndarray) -> "Split":
    """The rows `index` (an int array or boolean mask), as a new Split."""
    return Split(
        features={m: x[index] for m, x in self.features.items()},
        available=self.available[index],
        **{f.name: getattr(self, f.name)[index] for f in schema.RECORD_FIELDS},
        extras={k: v[index] for k, v in self.extras.items()})


@dataclasses.dataclass(frozen=True)
class Dataset:
  manifest: schema.Manifest
  train: Split
  valid: Split
  test: Split
  # {modality: {"mean", "std": float64 [dim]}}: what the features were
  # standardised with, before any per-speaker standardisation (None: not
  # standardised). A run keeps them to standardise new features alike.
  stats: dict | None = None


def shard_paths(directory, manifest: schema.Manifest, split: str) -> list[str]:
  return [os.path.join(directory, f) for f in manifest.splits[split]["files"]]


def column_dtype(field: schema.Field, task: str):
  """The NumPy dtype of a per-record field's `Split` column."""
  kind = field.list_kind(task)
  if kind == schema.BYTES:
    return str
  if field.kind == schema.LABEL:
    return np.int32 if kind == schema.INT64 else np.float32
  return np.int64 if kind == schema.INT64 else np.float32


def read_split(directory: str | os.PathLike, manifest: schema.Manifest,
               split: str) -> Split:
  """Reads the raw (unnormalised) records of `split`, checking each one.

  Raises:
    tfrecord.CorruptRecordError: a shard is truncated or fails its CRC.
    schema.DataError: a shard is missing, or a record, the record count or
      the length of the normalisation statistics disagrees with the
      manifest.
  """
  n = manifest.splits[split]["count"]
  paths = shard_paths(directory, manifest, split)
  size = 0
  for path in paths:
    if not os.path.isfile(path):
      raise schema.DataError(path, "file", f"missing (listed in the "
                             f"manifest's splits.{split}.files)")
    size += os.path.getsize(path)
  # Rows for at most the records the shards can hold (a frame takes >= 16
  # bytes), so a damaged count cannot ask for a huge array.
  rows = min(n, size // 16)
  # Per-record fields (and the extras): name -> (Example list kind, values).
  scalars = {f.name: (f.list_kind(manifest.task), [])
             for f in schema.RECORD_FIELDS}
  scalars.update({f: (schema.EXTRA_KIND, []) for f in manifest.extra_fields})
  # modality -> [rows, dims[m]], made at the first record holding it (whose
  # length confirms dims[m]).
  features = {}
  available = np.zeros((rows, len(schema.MODALITIES)), bool)
  shard_of = []  # The shard of each record, for the checks after the loop.
  i = 0
  for path in paths:
    for data in tfrecord.read_records(path):
      if i >= n:
        raise schema.DataError(path, "count",
                               f"more records than the manifest's {n}")
      try:
        feature = tfrecord.parse_example(data).features.feature
      except message.DecodeError:
        raise schema.DataError(path, "record", f"record {i} is not a "
                               "tf.train.Example") from None

      def get(name, kind, length=None):
        list_name = f"{kind}_list"
        if name not in feature or feature[name].WhichOneof("kind") != list_name:
          raise schema.DataError(path, name,
                                 f"record {i}: missing or not {list_name}")
        values = getattr(feature[name], list_name).value
        if length is not None and len(values) != length:
          raise schema.DataError(path, name, f"record {i}: {len(values)} "
                                 f"values, expected {length}")
        return values

      for name, (kind, column) in scalars.items():
        value = get(name, kind, 1)[0]
        if kind == schema.BYTES:
          try:
            value = value.decode()
          except UnicodeDecodeError:
            raise schema.DataError(path, name, f"record {i}: {value!r} is "
                                   "not UTF-8 text") from None
        column.append(value)
      for j, m in enumerate(schema.MODALITIES):
        d = manifest.dims[m]
        field = schema.AVAILABLE.key(m)
        present = get(field, schema.AVAILABLE.kind, 1)[0]
        if present not in (0, 1):
          raise schema.DataError(path, field, f"record {i}: {present}, "
                                 "expected 0 or 1")
        if present and not d:
          raise schema.DataError(path, field, f"record {i}: 1, but the "
                                 f"manifest's dims.{m} is 0 (the dataset "
                                 f"has no {m})")
        values = get(schema.FEATURES.key(m), schema.FEATURES.kind)
        if len(values) != (d if present else 0):
          raise schema.DataError(
              path, m, f"record {i}: length {len(values)}, expected "
              f"{d if present else 0} (available={present})")
        if present:
          if m not in features:
            features[m] = np.zeros((rows, d), np.float32)
          features[m][i] = values
          available[i, j] = True
      shard_of.append(path)
      i += 1
  if i != n:
    raise schema.DataError(os.path.join(directory, schema.MANIFEST),
                           f"splits.{split}.count",
                           f"says {n} records, the shards hold {i}")
  # The statistics confirm the dims of a modality no record holds.
  for name in manifest.normalization:
    normalization.normalization_stats(directory, manifest, name)
  features = {m: features[m] if m in features
              else np.zeros((n, manifest.dims[m]), np.float32)
              for m in schema.MODALITIES}
  for m, x in features.items():
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if len(bad):
      raise schema.DataError(shard_of[bad[0]], m,
                             f"record {bad[0]}: NaN or inf values")
  label = scalars["label"][1]
  bad, expected = bad_labels(np.asarray(label, np.float64),
                             len(manifest.classes or ()), manifest.label_range)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise schema.DataError(shard_of[i], "label",
                           f"record {i}: {label[i]!r}, expected {expected}")
  columns = {f.name: np.asarray(scalars[f.name][1],
                                column_dtype(f, manifest.task))
             for f in schema.RECORD_FIELDS}
  return Split(features=features, available=available, **columns,
               extras={f: np.asarray(scalars[f][1], np.int64)
                       for f in manifest.extra_fields})


def bad_labels(label: np.ndarray, num_classes: int,
               label_range) -> tuple[np.ndarray, str]:
  """Which of `label` a dataset cannot hold, and what it expects instead:
  a class index in [0, num_classes) when `num_classes` (classification),
  else a finite score in `label_range` ([low, high]; None: any finite
  score). The one rule of the writer, this reader and predict's npz."""
  label = np.asarray(label)
  if num_classes:
    ok = (label >= 0) & (label < num_classes) & (label == np.round(label))
    return ~ok, f"a class index in [0, {num_classes})"
  lo, hi = label_range or (-math.inf, math.inf)
  ok = np.isfinite(label) & (label >= lo) & (label <= hi)
  return ~ok, f"a finite score in [{lo}, {hi}]"


def carve_groups(groups: Sequence[str], fraction: float, seed: int) -> set[str]:
  """A fixed-seed subset of whole groups: the first round(fraction * n) of
  the sorted unique groups permuted by `np.random.RandomState(seed)`.

  This is how `poria_split.json` carves validation videos out of the Poria
  test videos, and how IEMOCAP folds carve validation dialogues out of the
  training sessions.
  """
  unique = np.array(sorted(set(groups)))
  order = np.random.RandomState(seed).permutation(len(unique))
  return set(unique[order[:round(fraction * len(unique))]].tolist())


def fold_assignment(group_id: np.ndarray, fold_key: np.ndarray, fold,
                    valid_fraction: float, seed: int, source: str,
                    valid_fold=None) -> np.ndarray:
  """Split name per row for cross-validation fold `fold`.

  test = rows whose `fold_key` (the session) equals `fold`; valid = whole
  groups (dialogues) carved from the rest by `carve_groups`, or with
  `valid_fold` the rows whose `fold_key` equals it (a whole session);
  train = the rest.

  Raises:
    schema.DataError: a part is empty (naming `source`, the file the
      sessions come from): too few groups outside the held-out session.
  """
  test = fold_key == fold
  if valid_fold is None:
    valid_groups = carve_groups(group_id[~test], valid_fraction, seed)
    valid = ~test & np.isin(group_id, list(valid_groups))
  else:
    valid = fold_key == valid_fold
  names = np.where(test, "test", np.where(valid, "valid", "train"))
  for part in schema.SPLITS:
    if not (names == part).any():
      raise schema.DataError(
          source, "session", f"fold {fold}: no {part} utterances (from the "
          f"{len(set(group_id[~test].tolist()))} groups outside session "
          f"{fold}, validation takes round({valid_fraction} x groups)): "
          "cross-validation over sessions needs more groups per session")
  return names


def next_fold(values: Sequence, fold):
  """The fold after `fold` in `values`, cyclically (the validation session
  of `validation="session"`: fold 5's is session 1)."""
  return values[(list(values).index(fold) + 1) % len(values)]


def train_stats(directory: str | os.PathLike, fold=None,
                validation: str = "groups") -> dict:
  """The statistics `load` standardises a fold's (or the fixed splits')
  features with (`Dataset.stats`): the manifest's, or with
  `validation="session"` those of the fold's training part (which reads
  the data)."""
  manifest = schema.Manifest.load(directory)
  if manifest.folds and validation == "session":
    return load(directory, fold, validation=validation).stats
  return normalization.normalization_stats(
      directory, manifest, schema.fold_name(fold) if fold else "train")


def load(directory: str | os.PathLike, fold=None, normalized: bool = True,
         reader=read_split, speaker_norm: Sequence[str] = (),
         validation: str = "groups", stats=None) -> Dataset:
  """Reads a prepared directory into train/valid/test `Split`s.

  Args:
    directory: made by `python -m data_prep.convert` or `data_prep.synthetic`.
    fold: for datasets with folds (IEMOCAP), the held-out session; required
      there, and an error elsewhere.
    normalized: standardise features with the manifest's train statistics.
    speaker_norm: modalities standardised per speaker instead
      (`normalization.normalize_per_speaker`; only with `normalized`):
      names, or a config's comma-separated string ("audio").
    reader: `read_split` or a function of the same signature (the tf.data
      reader of `mcur_jax.data_tf`).
    validation: with folds, the validation part: "groups" (the manifest's
      `valid_fraction` of the training sessions' dialogues, spoken by the
      training speakers) or "session" (the whole session after the test one,
      `next_fold`: new speakers, as test has; the training part is then
      the other sessions, standardised with their own statistics instead
      of the manifest's). Fixed splits ignore it.
    stats: standardise with these statistics instead of the directory's
      own (a trained model's, `train_stats` of its data).
  """
  if validation not in VALIDATION:
    raise ValueError(f"validation={validation!r}, not one of {VALIDATION}")
  try:
    speaker_norm = schema.modality_names(
        speaker_norm if isinstance(speaker_norm, str)
        else ",".join(speaker_norm or ()))
  except ValueError as e:
    raise ValueError(f"speaker_norm: {e}") from None
  manifest = schema.Manifest.load(directory)
  path = os.path.join(directory, schema.MANIFEST)
  if manifest.folds:
    values = manifest.folds["values"]
    if fold not in values:
      raise schema.DataError(path, "folds", f"fold={fold!r}: pass one of "
                             f"{values} (the held-out {manifest.folds['key']})")
    everything = reader(directory, manifest, schema.ALL_SPLIT)
    session = validation == "session"
    names = fold_assignment(everything.group_id,
                            getattr(everything, manifest.folds["key"]), fold,
                            manifest.folds["valid_fraction"],
                            manifest.folds["seed"], path,
                            next_fold(values, fold) if session else None)
    parts = {s: everything.take(names == s) for s in schema.SPLITS}
    if stats is None and session:
      stats = normalization.as_arrays(
          normalization.feature_stats(parts["train"]))
    elif stats is None:
      stats = normalization.normalization_stats(directory, manifest,
                                                schema.fold_name(fold))
  else:
    if fold is not None:
      raise schema.DataError(path, "folds", f"fold={fold!r} given, but this "
                             "dataset has fixed train/valid/test splits")
    parts = {s: reader(directory, manifest, s) for s in schema.SPLITS}
    if stats is None:
      stats = normalization.normalization_stats(directory, manifest,
                                                "train")
  if normalized:
    parts = normalization.standardize(parts, stats, speaker_norm,
                                      str(directory))
  return Dataset(manifest=manifest, **parts,
                 stats=stats if normalized else None)
