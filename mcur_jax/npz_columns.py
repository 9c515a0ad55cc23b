"""The arrays of an .npz of utterances by field, checked as they are read.

The reading core of the npz format (`data_prep/formats/npz.py` documents
the format): its field names, `--key FIELD=NPZKEY` maps, the archive, its
columns by field and the feature matrices with their availability. Shared
by that converter and `predict`'s npz input; errors name the file and the
npz key.
"""

import contextlib
import os
import zipfile
import zlib

import numpy as np

from mcur_jax import utterance_rows
from mcur_jax import schema

AVAILABLE_FIELDS = tuple(schema.available_field(m) for m in schema.MODALITIES)
FIELDS = (schema.MODALITIES + ("label", "split", "utt_id", "group_id",
                               "position", "speaker", "session")
          + AVAILABLE_FIELDS)
# The label of an utterance not labelled for a classification task.
UNLABELLED = -1
# Allowed `dtype.kind` letters of the columns, and how errors name them.
NUMBERS, INTEGERS, IDS = "biuf", "biu", "USiu"
# A classification label: a class index, or a class name.
LABELS = NUMBERS + "US"
_KIND_NAMES = {NUMBERS: "numbers", INTEGERS: "integers",
               IDS: "strings or integers", LABELS: "numbers or class names"}
# What reading a damaged zip archive raises: BadZipFile; NotImplementedError
# for an unknown version or compression; RuntimeError for an "encrypted"
# flag; zlib.error for bad deflated data; OSError for a seek to a damaged
# offset.
_ZIP_ERRORS = (zipfile.BadZipFile, NotImplementedError, RuntimeError,
               zlib.error, OSError)


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
  is ours: `np.load` leaves its own open when the zip is damaged).

  An .npz is a zip archive: any other file is named so first, since
  `np.load` takes whatever is not a zip or an .npy (a CSV, say) for a
  pickle and would complain of `allow_pickle`; a zip without the directory
  at its end (cut short) is named damaged."""
  try:
    f = open(path, "rb")
  except OSError as e:
    raise schema.DataError(path, "--input", f"unreadable ({e})") from None
  with f:
    if not zipfile.is_zipfile(f):
      f.seek(0)
      head = f.read(6)
      raise schema.DataError(path, "--input", (
          "a single .npy array, not an .npz archive of named arrays"
          if head == b"\x93NUMPY" else
          "a damaged .npz (a zip archive cut short: no directory at its end)"
          if head.startswith(b"PK") else
          "not an .npz file (not a zip archive)"))
    f.seek(0)
    try:
      archive = np.load(f, allow_pickle=False)
    except (*utterance_rows.NPY_ERRORS, *_ZIP_ERRORS) as e:
      raise schema.DataError(path, "--input", f"not an .npz file ({e!r})"
                             ) from None
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

  def unread_note(self) -> list[str]:
    """A note naming the file's keys that no field reads (a misspelt key,
    `available_audi`, would otherwise silently be no column), if any."""
    unread = sorted(set(self.files) - set(self.keys.values()))
    return [f"{os.path.basename(self.path)}: keys not read: "
            f"{', '.join(unread)} (the fields are {', '.join(FIELDS)}; "
            "--key FIELD=KEY maps one)"] if unread else []

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
    except (*utterance_rows.NPY_ERRORS, *_ZIP_ERRORS) as e:
      raise schema.DataError(self.path, self.name(field), f"unreadable "
                             f"({e!r}): a damaged file, or an object array "
                             "(store numbers or NumPy str arrays)") from None
    if (kinds == INTEGERS and value.dtype.kind == "f" and value.ndim == ndim
        and np.isfinite(value).all() and (value == np.round(value)).all()):
      value = value.astype(np.int64)  # 3.0 from pandas is the integer 3.
    if value.dtype.kind not in kinds or value.ndim != ndim:
      raise schema.DataError(self.path, self.name(field), f"{value.dtype} "
                             f"array of shape {value.shape}, expected "
                             f"{ndim}-D {_KIND_NAMES[kinds]}")
    if n is not None and len(value) != n:
      raise schema.DataError(self.path, self.name(field), f"{len(value)} "
                             f"rows, but {self.name(self.rows_from)} has {n}")
    return value

  def positions_and_ids(self, group_id: np.ndarray):
    """(position, utt_id, whether the file gave positions) of the rows of
    `group_id`: positions default to the rows' order within each group,
    ids to `<group_id>_<position>`."""
    n = len(group_id)
    position = self.get("position", INTEGERS, n, required=False)
    given = position is not None
    if not given:
      position = utterance_rows.positions_in_group(group_id, np.arange(n))
    elif (position < 0).any():
      raise schema.DataError(self.path, self.name("position"),
                             "negative values")
    utt_id = self.text("utt_id", n, required=False)
    if utt_id is None:
      utt_id = np.char.add(np.char.add(group_id, "_"), position.astype(str))
    return position, utt_id, given

  def labels(self, classes, n=None, required=True):
    """The label column: numbers, or for a classification set (`classes`,
    None for scores) class indices or names, names made indices
    (`class_indices`); None if optional and absent."""
    value = self.get("label", LABELS if classes else NUMBERS, n,
                     required=required)
    if value is not None and value.dtype.kind in "US":
      value = class_indices(value, classes, self.path, self.name("label"))
    return value

  def text(self, field, n, required=True):
    """The ids of `field` (str, bytes or integers) as a str array, or None
    if optional and absent."""
    value = self.get(field, IDS, n, required=required)
    return (None if value is None
            else utterance_rows.text_column(value, self.path,
                                            self.name(field)))


def class_indices(label: np.ndarray, classes: list[str], path: str,
                  field: str) -> np.ndarray:
  """Class names -> their indices in `classes`; "" -> -1 (not labelled)."""
  names = utterance_rows.text_column(label, path, field)
  index = {c: i for i, c in enumerate(classes)}
  index[""] = UNLABELLED
  unknown = sorted({x for x in names.tolist() if x not in index})
  if unknown:
    raise schema.DataError(path, field, f"{len(unknown)} label(s) not among "
                           f"the classes {','.join(classes)}: "
                           f"{', '.join(map(repr, unknown[:5]))} ('' = not "
                           "labelled)")
  return np.array([index[x] for x in names.tolist()], np.int64)
