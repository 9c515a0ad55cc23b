"""A plain interchange format: one `.npz` of utterance-level arrays -> a `writer.Table`.

    python -m data_prep.convert --format npz --dataset mosi \\
        --input features.npz --out prepared/mosi

Use it for features from any extractor: pool them to one vector per
utterance and modality, and save the columns below with `np.savez` (or
`np.savez_compressed`). Row i of every array is utterance i. Strings must be
NumPy str (or bytes) arrays, not object arrays: the file is read with
`allow_pickle=False`.

| key               | shape, dtype        | required | meaning                 |
|-------------------|---------------------|----------|-------------------------|
| `audio`, `text`,  | [N, d_m] numbers    | at least | one feature vector per  |
| `video`           |                     | one      | utterance; d_m free; a  |
|                   |                     |          | missing key: the data   |
|                   |                     |          | set has no such         |
|                   |                     |          | modality (see below)    |
| `label`           | [N] numbers         | yes      | score in [-3, 3] (mosi, |
|                   |                     |          | mosei) or class index   |
|                   |                     |          | (iemocap4, iemocap6);   |
|                   |                     |          | -1 = not labelled for   |
|                   |                     |          | the task (classes only) |
| `split`           | [N] str or int      | yes, but | `train`/`valid`/`test`, |
|                   |                     | see below| or 0/1/2 for the same   |
| `group_id`        | [N] str or int      | yes      | video or dialogue       |
| `utt_id`          | [N] str or int      | no       | default `<group_id>_<   |
|                   |                     |          | position in the file>`  |
| `position`        | [N] int >= 0        | no       | place in the group;     |
|                   |                     |          | default: row order      |
|                   |                     |          | within the group        |
| `speaker`         | [N] str or int      | no       | default ''              |
| `session`         | [N] int             | no       | default 0               |
| `available_audio`,| [N] bool (or 0/1)   | no       | modality natively       |
| `available_text`, |                     |          | present; default all    |
| `available_video` |                     |          | True                    |

- A row whose modality is not available may hold anything (zeros, say) in
  that modality's array: it is ignored and stored as absent.
- A modality key that is missing from the file (and not mapped with
  `--key`) means the dataset has no such modality: every utterance stores it
  as absent, the manifest's `dims` is 0 for it, and its notes say so. An
  `available_<m>` of 1 for such a modality is an error, and so is a file
  with no modality key at all or a key mapped with `--key` that is missing.
- `split`: with `--split_file` (JSON lists of group ids) the key is not read
  at all; every row is provisionally "train" and the split file assigns the
  real split. A `split` of `all` on every row asks for cross-validation over
  `session` instead (IEMOCAP's leave-one-session-out folds), which needs the
  `session` key; an iemocap4/iemocap6 file without a `split` key gets the
  same. mosi and mosei need a split.
- Classification: a label of -1 means the utterance is not labelled for this
  task (the project's IEMOCAP file holds both the 6-way and the 4-way
  labels, -1 in `label4` for frustrated utterances): it is left out, the
  manifest's notes count it, and the positions of the rest are renumbered
  0..k-1 within each group, in their order. For regression -1 is a score.
- Keys the fields do not use are ignored.
- `--key FIELD=NPZKEY` (repeatable) reads FIELD from another key, e.g. the
  project's derived files (see shared/data/SOURCES.md) convert with

      --dataset iemocap4 --input iemocap_egemaps_mpnet.npz --key label=label4
      --dataset iemocap6 --input iemocap_egemaps_mpnet.npz --key label=label6
      --dataset mosi --input mosi_standard_mpnet.npz --key label=label_reg \\
      --key group_id=video_id --key position=utt_pos --key split=split_standard

Errors name the file and the npz key: a missing key, a wrong shape or dtype,
a row count that differs from `label`'s, NaN or inf features (see
`--nan_policy`); out-of-range labels and duplicate ids are caught by the
writer.
"""

import contextlib
import os
import zipfile
import zlib

import numpy as np

from data_prep import common
from data_prep import writer
from mcur_jax import schema

AVAILABLE_FIELDS = tuple(schema.available_field(m) for m in schema.MODALITIES)
FIELDS = (schema.MODALITIES + ("label", "split", "utt_id", "group_id",
                               "position", "speaker", "session")
          + AVAILABLE_FIELDS)
# Integer split codes.
SPLIT_CODES = dict(enumerate(schema.SPLITS))
# Provisional split of every row when --split_file assigns the real one.
PLACEHOLDER_SPLIT = "train"
# The label of an utterance not labelled for a classification task.
UNLABELLED = -1
# Allowed `dtype.kind` letters of the columns, and how errors name them.
NUMBERS, INTEGERS, IDS = "biuf", "biu", "USiu"
_KIND_NAMES = {NUMBERS: "numbers", INTEGERS: "integers",
               IDS: "strings or integers"}
# What reading a damaged zip archive raises: BadZipFile; NotImplementedError
# for an unknown version or compression; RuntimeError for an "encrypted"
# flag; zlib.error for bad deflated data; OSError for a seek to a damaged
# offset.
_ZIP_ERRORS = (zipfile.BadZipFile, NotImplementedError, RuntimeError,
               zlib.error, OSError)


def add_arguments(group):
  group.add_argument("--key", action="append", metavar="FIELD=NPZKEY",
                     help="npz: read FIELD from key NPZKEY (repeatable); "
                     f"fields: {', '.join(FIELDS)}")


def read(args) -> writer.Table:
  """Reads `args.input` and returns its table (see the module docstring)."""
  task, classes = common.dataset_task(args.dataset)
  keys, mapped = key_map(args.key or [])
  path = common.require(args.input, "npz", "--input", "FILE.npz")
  with open_archive(path) as archive:
    columns = Columns(path, archive, keys, mapped)
    label = columns.get("label", NUMBERS)
    n = len(label)
    group_id = columns.text("group_id", n)
    position = columns.get("position", INTEGERS, n, required=False)
    if position is None:
      position = common.positions_in_group(group_id, np.arange(n))
    elif (position < 0).any():
      raise schema.DataError(path, columns.name("position"), "negative values")
    utt_id = columns.text("utt_id", n, required=False)
    if utt_id is None:
      utt_id = np.char.add(np.char.add(group_id, "_"), position.astype(str))
    speaker = columns.text("speaker", n, required=False)
    session = columns.get("session", INTEGERS, n, required=False)
    split, folds, split_source = _split(
        columns, n, bool(args.split_file), session,
        args.dataset.startswith("iemocap"))
    features, available, notes = read_features(columns, n)
  # Classification: a label of -1 = not labelled for this task (IEMOCAP's
  # 4-way label of a frustrated utterance): the utterance is left out.
  keep = (label != UNLABELLED if task == "classification"
          else np.ones(n, bool))
  label, group_id, position, utt_id, split, available = (
      x[keep] for x in (label, group_id, position, utt_id, split, available))
  speaker, session = (x if x is None else x[keep] for x in (speaker, session))
  if not keep.all():
    notes.insert(0, f"{keys['label']}: {int((~keep).sum())} utterances with "
                 f"label {UNLABELLED} (not labelled for this task) left out")
    # 0..k-1 within each group again, in the order of the kept positions.
    position = common.positions_in_group(group_id, position)
  for j, m in enumerate(schema.MODALITIES):
    features[m], available[:, j], nan_notes = common.apply_nan_policy(
        features[m][keep], available[:, j], args.nan_policy, path,
        columns.name(m), utt_id)
    notes += nan_notes
  rows = common.make_rows(
      utt_id=utt_id, group_id=group_id, position=position, label=label,
      features=features, available=available, speaker=speaker,
      session=session)
  return writer.Table(
      dataset=args.dataset, task=task, classes=classes, rows=rows,
      split=split, origin={f: path for f in FIELDS}, format="npz",
      split_source=split_source,
      sources=[writer.sha256_source(path, "features, labels and ids")],
      notes=notes, session_folds=folds)


def read_features(columns: "Columns", n: int):
  """The feature matrices with their availability, before the NaN policy.

  Returns ({modality: [n, d] float32}, [n, 3] bool available, notes). Rows
  of an absent modality are zeroed, whatever the file holds there. A
  modality whose key is missing (and not mapped with --key) is absent from
  the dataset: [n, 0] features, never available, and a note says so.
  """
  missing = [m for m in schema.MODALITIES if not columns.has(m)]
  if len(missing) == len(schema.MODALITIES):
    raise schema.DataError(
        columns.path, "/".join(columns.name(m) for m in missing),
        f"no modality key in the file (keys: {', '.join(columns.files)}; "
        "map one with --key audio=KEY)")
  features, available, notes = {}, [], []
  for m, field in zip(schema.MODALITIES, AVAILABLE_FIELDS):
    present = columns.get(field, INTEGERS, n, required=False)
    if present is not None and not np.isin(present, (0, 1)).all():
      raise schema.DataError(columns.path, columns.name(field),
                             "values other than 0/1 (True/False)")
    if m in missing:
      if present is not None and present.any():
        raise schema.DataError(
            columns.path, columns.name(field), f"{int(present.sum())} "
            f"utterances marked available, but the file has no "
            f"{columns.keys[m]!r} key (map one with --key {m}=KEY)")
      features[m] = np.zeros((n, 0), np.float32)
      available.append(np.zeros(n, bool))
      notes.append(f"{m}: no {columns.keys[m]!r} key in "
                   f"{os.path.basename(columns.path)}: the dataset has no {m}")
      continue
    present = np.ones(n, bool) if present is None else present.astype(bool)
    features[m] = np.where(present[:, None],
                           columns.get(m, NUMBERS, n, ndim=2),
                           0).astype(np.float32)
    available.append(present)
  return features, np.stack(available, 1), notes


def key_map(pairs: list[str]) -> tuple[dict[str, str], set[str]]:
  """`--key FIELD=NPZKEY` arguments -> ({field: npz key} for every field,
  the fields mapped explicitly)."""
  keys = {f: f for f in FIELDS}
  mapped = set()
  for pair in pairs:
    field, sep, key = pair.partition("=")
    if not (sep and key):
      raise schema.DataError("command line", "--key",
                             f"{pair!r} is not FIELD=NPZKEY")
    if field not in keys:
      raise schema.DataError("command line", "--key", f"unknown field "
                             f"{field!r} (fields: {', '.join(FIELDS)})")
    if field in mapped:
      raise schema.DataError("command line", "--key",
                             f"field {field!r} mapped twice")
    keys[field] = key
    mapped.add(field)
  return keys, mapped


@contextlib.contextmanager
def open_archive(path: str):
  """The npz archive at `path`; it and its file are closed on exit (the file
  is ours: `np.load` leaves its own open when the zip is damaged)."""
  try:
    f = open(path, "rb")
  except OSError as e:
    raise schema.DataError(path, "--input", f"unreadable ({e})") from None
  with f:
    try:
      archive = np.load(f, allow_pickle=False)
    except (*common.NPY_ERRORS, *_ZIP_ERRORS) as e:
      raise schema.DataError(path, "--input", f"not an .npz file ({e!r})"
                             ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise schema.DataError(path, "--input", "a single .npy array, not an "
                             ".npz archive of named arrays")
    with archive:
      yield archive


class Columns:
  """The arrays of an npz archive by field, checked as they are read."""

  def __init__(self, path: str, archive, keys: dict[str, str],
               mapped: set[str], rows_from: str = "label"):
    """`rows_from`: the field whose length the others' row count is checked
    against (named in that error)."""
    self.path, self.archive, self.keys = path, archive, keys
    self.mapped, self.files, self.rows_from = mapped, archive.files, rows_from

  def has(self, field: str) -> bool:
    """Whether the file holds `field`'s key, or the command line mapped it
    (then a missing key is an error when the field is read)."""
    return self.keys[field] in self.files or field in self.mapped

  def name(self, field: str) -> str:
    """How errors name a field: its npz key, and the field if mapped."""
    key = self.keys[field]
    return key if key == field else f"{key} (--key {field}={key})"

  def get(self, field, kinds, n=None, ndim=1, required=True):
    """The array of `field`, or None if optional and absent.

    Args:
      field: one of FIELDS.
      kinds: the allowed `dtype.kind` letters.
      n: the row count it must have (None: any).
      ndim: its number of dimensions.
      required: a missing key is an error (else None).
    """
    key = self.keys[field]
    if key not in self.files:
      if not required and field not in self.mapped:
        return None
      also = " or pass --split_file" if field == "split" else ""
      raise schema.DataError(self.path, self.name(field), "missing (keys in "
                             f"the file: {', '.join(self.files)}; "
                             f"map one with --key {field}=KEY{also})")
    try:
      value = self.archive[key]
    # A bad .npy or an object array (it needs pickle: ValueError).
    except (*common.NPY_ERRORS, *_ZIP_ERRORS) as e:
      raise schema.DataError(self.path, self.name(field), f"unreadable "
                             f"({e!r}): a damaged file, or an object array "
                             "(store numbers or NumPy str arrays)") from None
    if value.dtype.kind not in kinds or value.ndim != ndim:
      raise schema.DataError(self.path, self.name(field), f"{value.dtype} "
                             f"array of shape {value.shape}, expected "
                             f"{ndim}-D {_KIND_NAMES[kinds]}")
    if n is not None and len(value) != n:
      raise schema.DataError(self.path, self.name(field), f"{len(value)} "
                             f"rows, but {self.name(self.rows_from)} has {n}")
    return value

  def text(self, field, n, required=True):
    """The ids of `field` (str, bytes or integers) as a str array, or None
    if optional and absent."""
    value = self.get(field, IDS, n, required=required)
    return (None if value is None
            else common.text_column(value, self.path, self.name(field)))


def _split(columns: Columns, n: int, split_file: bool, session,
           iemocap: bool):
  """(split name per row, session folds?, where the split comes from).

  Without --split_file the split is the `split` column; an IEMOCAP dataset
  without one gets leave-one-session-out folds over `session`.
  """
  name = os.path.basename(columns.path)
  if split_file:  # convert.py assigns the split and names its source
    return np.full(n, PLACEHOLDER_SPLIT), False, ""
  if iemocap and not columns.has("split"):
    split = np.full(n, schema.ALL_SPLIT)
    source = (f"leave-one-session-out folds ({columns.name('session')} of "
              f"{name}; no {columns.name('split')} key)")
  else:
    split = columns.get("split", IDS, n)
    source = f"{columns.name('split')} of {name}"
    if split.dtype.kind in INTEGERS:
      unknown = sorted(set(split.tolist()) - SPLIT_CODES.keys())
      if unknown:
        raise schema.DataError(columns.path, columns.name("split"), f"codes "
                               f"{unknown}; use 0/1/2 = train/valid/test")
      split = np.array([SPLIT_CODES[c] for c in split.tolist()], str)
      return split, False, source
    split = common.text_column(split, columns.path, columns.name("split"))
  folds = bool(n) and (split == schema.ALL_SPLIT).all()
  if folds and session is None:
    raise schema.DataError(columns.path, columns.name("session"), "missing, "
                           f"but split {schema.ALL_SPLIT!r} (cross-validation "
                           "over sessions) needs it")
  return split, folds, source
