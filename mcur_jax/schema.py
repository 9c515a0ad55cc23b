"""The prepared-dataset schema: record fields, `manifest.json`, and its errors.

A prepared directory holds TFRecord shards named in TFDS's template,
`{dataset}-{split}.tfrecord-NNNNN-of-MMMMM` (`shard_name`; directories written
before name them `{split}-NNNNN-of-MMMMM.tfrecord`, and readers take the names
the manifest lists), one `tf.train.Example` per utterance, `manifest.json`,
and the TFDS metadata (`data_prep/tfds_metadata.py`). The record fields are
the table `FIELDS` below (name, Example list, per record or per modality,
meaning), plus the int64 extra fields the manifest lists (`corrupted`, ...).
The writer (`data_prep/writer.py`), the NumPy reader (`data.read_split`) and
the tf.data reader (`data_tf.read_split`) all derive from that table: a new
per-record field is one row there and the `data.Split` attribute that holds
it.

A natively absent modality is stored as an empty list with `available_<m>`
= 0, never as a zero vector, so nothing downstream can mistake it for data.
A dataset without a modality at all has `dims[m]` = 0 and every record
stores that modality as absent.
"""

import dataclasses
import json
import os
import re
import reprlib
from typing import Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# Fixed modality order; bit m of a combination mask is MODALITIES[m]
# (audio = 1, text = 2, video = 4), as in DESIGN section 2.
MODALITIES = ("audio", "text", "video")
SPLITS = ("train", "valid", "test")
# Split name of datasets with cross-validation folds (IEMOCAP): every record
# lives in `all` and the fold is chosen at load time.
ALL_SPLIT = "all"
# TFDS reserves `all` for the union of a dataset's splits, so the shards and
# the TFDS metadata name the `all` split this way; the manifest keeps `all`.
TFDS_ALL_SPLIT = "sessions"
TASKS = ("regression", "classification")


# Example list kinds. LABEL is float for regression, int64 for classification.
BYTES, INT64, FLOAT, LABEL = "bytes", "int64", "float", "label"
# A field holds one value per record, or one per record and modality.
PER_RECORD, PER_MODALITY = "record", "modality"


@dataclasses.dataclass(frozen=True)
class Field:
  """One record field. Per-modality names are templates over `{m}`."""

  name: str
  kind: str
  per: str
  meaning: str

  def key(self, modality: str | None = None) -> str:
    """The field's key in the Example (of `modality` if per modality)."""
    if self.per == PER_MODALITY:
      return self.name.format(m=modality)
    return self.name

  def list_kind(self, task: str) -> str:
    """The Example list holding it for `task`: "bytes", "int64" or "float"."""
    if self.kind == LABEL:
      return FLOAT if task == "regression" else INT64
    return self.kind


# The feature vector: `dims[m]` floats when present, EMPTY when absent.
FEATURES = Field("{m}", FLOAT, PER_MODALITY,
                 "the feature vector of modality m, raw; EMPTY when absent")
AVAILABLE = Field("available_{m}", INT64, PER_MODALITY,
                  "1 if modality m is natively present, else 0")
# Every per-record field is one value, held by the `data.Split` attribute of
# the same name.
FIELDS = (
    Field("utt_id", BYTES, PER_RECORD, "utterance id, unique in the dataset"),
    Field("group_id", BYTES, PER_RECORD,
          "video (MOSI/MOSEI) or dialogue (IEMOCAP)"),
    Field("position", INT64, PER_RECORD,
          "0-based position of the utterance in its group"),
    Field("speaker", BYTES, PER_RECORD,
          "speaker ('' when the source has none)"),
    Field("session", INT64, PER_RECORD,
          "recording session (IEMOCAP 1..5, else 0)"),
    Field("label", LABEL, PER_RECORD,
          "score (regression, float) or class index (classification, int64)"),
    FEATURES,
    AVAILABLE,
)
RECORD_FIELDS = tuple(f for f in FIELDS if f.per == PER_RECORD)
# Every key of a record's Example but the extra fields.
_EXAMPLE_KEYS = frozenset(f.key(m) for f in FIELDS for m in MODALITIES)
# Extra fields (listed in the manifest's `extra_fields`) are one int64 each.
EXTRA_KIND = INT64


class DataError(ValueError):
  """Bad input or a bad prepared directory; the message names file and field."""

  def __init__(self, file: str | os.PathLike, field: str, problem: str):
    self.file, self.field, self.problem = os.fspath(file), field, problem
    # One printable line whatever the input held: line breaks as \n, lone
    # surrogates (undecodable bytes of a name) as \udcxx.
    message = "\\n".join(f"{self.file}: {field}: {problem}".splitlines())
    super().__init__(message.encode("utf-8", "backslashreplace").decode())


def modality_names(text: str) -> tuple[str, ...]:
  """A comma-separated list of modalities ("audio,text"; "" = none) as a
  tuple; ValueError naming an unknown one."""
  names = tuple(m.strip() for m in text.split(",") if m.strip())
  for m in names:
    if m not in MODALITIES:
      raise ValueError(f"{m!r}, not one of {MODALITIES}")
  return names


def available_field(modality: str) -> str:
  return AVAILABLE.key(modality)


def tfds_split(split: str) -> str:
  """The TFDS split name of manifest split `split`."""
  return TFDS_ALL_SPLIT if split == ALL_SPLIT else split


def shard_name(dataset: str, split: str, index: int, count: int) -> str:
  """Shard `index` of `count` of `split`, named in TFDS's default template."""
  return (f"{dataset}-{tfds_split(split)}.tfrecord-"
          f"{index:05d}-of-{count:05d}")


def is_shard_name(name: str) -> bool:
  """Whether a file name looks like a shard, in the TFDS template or the
  `{split}-NNNNN-of-MMMMM.tfrecord` of directories written before."""
  return name.endswith(".tfrecord") or ".tfrecord-" in name


# The keys of the manifest's objects: `folds`, each `splits` entry, each
# modality's `normalization` entry; `folds.key` is one of _FOLD_FIELDS.
_FOLD_KEYS = ("key", "values", "valid_fraction", "seed")
_SPLIT_KEYS = ("count", "groups", "files", "available")
_STATS = ("mean", "std")
_FOLD_FIELDS = tuple(f.name for f in RECORD_FIELDS if f.kind == INT64)
_FLOAT32_MAX = 3.4028234663852886e38


@dataclasses.dataclass(frozen=True)
class Manifest:
  """`manifest.json` of a prepared directory (its layout: the fields below,
  checked by `check_layout`)."""

  dataset: str
  task: str
  classes: list[str] | None
  dims: dict[str, int]
  # split -> {"count": int, "groups": int, "files": [...],
  #           "available": {modality: count}}
  splits: dict[str, dict[str, Any]]
  # "train" (or "fold<k>" with folds) -> modality -> {"mean": [...], "std": [...]}
  normalization: dict[str, dict[str, dict[str, list[float]]]]
  # Cross-validation over a record field, or None for fixed splits:
  # {"key": "session", "values": [1, 2, ...], "valid_fraction": f, "seed": s}
  folds: dict[str, Any] | None = None
  label_range: list[float] | None = None
  extra_fields: list[str] = dataclasses.field(default_factory=list)
  format: str = ""
  split_source: str = ""
  sources: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  schema_version: int = SCHEMA_VERSION

  @property
  def num_classes(self) -> int:
    """Logits of the task head: the class count, or 1 for regression."""
    return len(self.classes) if self.classes else 1

  def to_json(self) -> str:
    """Indented JSON with each list of numbers on one line."""
    text = json.dumps(dataclasses.asdict(self), indent=1)
    return re.sub(r"\[[-+.\deE,\s]*\]",
                  lambda m: re.sub(r"\s+", " ", m.group(0)), text) + "\n"

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "Manifest":
    """Reads and checks `directory/manifest.json` (see `check_layout`)."""
    path = os.path.join(directory, MANIFEST)
    try:
      with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    except (FileNotFoundError, NotADirectoryError):
      what = ("a file, not a prepared directory" if os.path.isfile(directory)
              else "not found: not a prepared directory")
      raise DataError(path, "manifest", f"{what} (make one with `python -m "
                      "data_prep.convert`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DataError(path, "manifest", f"not valid JSON ({e})") from None
    if not isinstance(raw, dict):
      raise DataError(path, "manifest", "not a JSON object")
    version = raw.get("schema_version")
    if not _is_int(version) or version != SCHEMA_VERSION:
      raise DataError(path, "schema_version",
                      f"{version!r}, this reader needs {SCHEMA_VERSION}")
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    for key in sorted(required - raw.keys()):
      raise DataError(path, key, "missing")
    for key in sorted(raw.keys() - names):
      raise DataError(path, "manifest", f"unknown field {key!r}")
    check_layout(path, raw)
    return cls(**raw)


def fold_name(fold) -> str:
  """The name of cross-validation fold `fold`: its `normalization` key in
  the manifest, and its workdir under a cross-validated run."""
  return f"fold{fold}"


def fold_of(name: str) -> int:
  """The fold a `fold_name` (a fold's workdir, its path's last part) names."""
  return int(os.path.basename(name)[len(fold_name("")):])


def _is_str(value) -> bool:
  return isinstance(value, str)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  """A JSON number (not a bool) that is finite as a float32, the precision
  the readers compute in."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return False
  try:
    return abs(float(value)) <= _FLOAT32_MAX
  except OverflowError:  # an integer beyond the float range
    return False


def _is_list_of(value, ok) -> bool:
  return isinstance(value, list) and all(ok(v) for v in value)


def _is_object_over(value, keys) -> bool:
  """A JSON object whose keys are exactly `keys`."""
  return isinstance(value, dict) and sorted(value) == sorted(keys)


def _is_file_name(value) -> bool:
  """A plain file name in the prepared directory (no path)."""
  return (isinstance(value, str) and value not in ("", ".", "..")
          and os.path.basename(value) == value)


def check_layout(path: str, raw: dict[str, Any]) -> None:
  """Checks the types and consistency of a parsed manifest whose keys are
  `Manifest` fields, so that a damaged one never trips up a reader.

  Raises:
    DataError: naming `path` and the first field (a dotted path) that is not
      what the writer (`data_prep/writer.py`) writes.
  """
  def expect(field, value, ok, expected):
    if not ok:
      raise DataError(path, field,
                      f"{reprlib.repr(value)}, expected {expected}")

  for key in ("dataset", "format", "split_source"):
    expect(key, raw.get(key), isinstance(raw.get(key, ""), str), "a string")
  task, classes = raw["task"], raw["classes"]
  expect("task", task, task in TASKS, f"one of {TASKS}")
  if task == "classification":
    expect("classes", classes, _is_list_of(classes, _is_str) and classes,
           "a non-empty list of class names")
  else:
    expect("classes", classes, classes is None, "null for regression")
  label_range = raw.get("label_range")
  expect("label_range", label_range, label_range is None or (
      _is_list_of(label_range, _is_number) and len(label_range) == 2
      and label_range[0] <= label_range[1]), "null or [low, high]")
  dims = raw["dims"]
  if not _is_object_over(dims, MODALITIES):
    raise DataError(path, "dims", f"needs exactly {MODALITIES}")
  for m, d in dims.items():
    if not _is_int(d) or d < 0:
      raise DataError(path, f"dims.{m}", f"{d!r}, expected an integer >= 0"
                      " (0: the dataset has no such modality)")
  if not any(dims.values()):
    raise DataError(path, "dims", "every modality has dimension 0")
  extra = raw.get("extra_fields", [])
  expect("extra_fields", extra, _is_list_of(extra, _is_str)
         and len(set(extra)) == len(extra) and not _EXAMPLE_KEYS & set(extra),
         "a list of distinct names, none of them a record field")
  folds = raw.get("folds")
  if folds is not None:
    expect("folds", folds, _is_object_over(folds, _FOLD_KEYS),
           f"null or an object over {_FOLD_KEYS}")
    expect("folds.key", folds["key"], folds["key"] in _FOLD_FIELDS,
           f"one of {_FOLD_FIELDS}")
    values = folds["values"]
    expect("folds.values", values, _is_list_of(values, _is_int) and values
           and len(set(values)) == len(values), "distinct integers")
    fraction, seed = folds["valid_fraction"], folds["seed"]
    expect("folds.valid_fraction", fraction,
           _is_number(fraction) and 0 <= fraction <= 1, "a number in [0, 1]")
    expect("folds.seed", seed, _is_int(seed) and 0 <= seed < 2**32,
           "an integer in [0, 2**32)")
  split_names = (ALL_SPLIT,) if folds else SPLITS
  expect("splits", raw["splits"], _is_object_over(raw["splits"], split_names),
         f"an object over {split_names}")
  for s, info in raw["splits"].items():
    field = f"splits.{s}"
    expect(field, info, _is_object_over(info, _SPLIT_KEYS),
           f"an object over {_SPLIT_KEYS}")
    count, groups, available = info["count"], info["groups"], info["available"]
    expect(f"{field}.count", count, _is_int(count) and count >= 0,
           "an integer >= 0")
    expect(f"{field}.groups", groups, _is_int(groups) and 0 <= groups <= count,
           f"an integer in [0, {count}]")
    expect(f"{field}.files", info["files"],
           _is_list_of(info["files"], _is_file_name),
           "a list of shard file names")
    expect(f"{field}.available", available,
           _is_object_over(available, MODALITIES) and all(
               _is_int(a) and 0 <= a <= count for a in available.values()),
           f"an object of counts in [0, {count}] over {MODALITIES}")
  stats_names = ([fold_name(v) for v in folds["values"]] if folds
                 else ["train"])
  expect("normalization", raw["normalization"],
         _is_object_over(raw["normalization"], stats_names),
         f"an object over {stats_names}")
  for name, stats in raw["normalization"].items():
    field = f"normalization.{name}"
    expect(field, stats, _is_object_over(stats, MODALITIES),
           f"an object over {MODALITIES}")
    for m in MODALITIES:
      expect(f"{field}.{m}", stats[m], _is_object_over(stats[m], _STATS),
             f"an object over {_STATS}")
      for key in _STATS:
        values = stats[m][key]
        expect(f"{field}.{m}.{key}", values, _is_list_of(values, _is_number),
               "a list of finite numbers")
  sources = raw.get("sources", [])
  expect("sources", sources, _is_list_of(
      sources, lambda s: isinstance(s, dict) and isinstance(
          s.get("role"), str) and isinstance(s.get("name"), str)),
         "a list of objects with a role and a name")
  notes = raw.get("notes", [])
  expect("notes", notes, _is_list_of(notes, _is_str), "a list of strings")
