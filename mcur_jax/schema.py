"""The prepared-dataset schema: record fields, `manifest.json`, and its errors.

A prepared directory holds `{split}-NNNNN-of-MMMMM.tfrecord` shards, one
`tf.train.Example` per utterance, and `manifest.json`. The record fields are
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
# Extra fields (listed in the manifest's `extra_fields`) are one int64 each.
EXTRA_KIND = INT64


class DataError(ValueError):
  """Bad input or a bad prepared directory; the message names file and field."""

  def __init__(self, file: str | os.PathLike, field: str, problem: str):
    self.file, self.field, self.problem = os.fspath(file), field, problem
    super().__init__(f"{self.file}: {field}: {problem}")


def available_field(modality: str) -> str:
  return AVAILABLE.key(modality)


def shard_name(split: str, index: int, count: int) -> str:
  return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


@dataclasses.dataclass(frozen=True)
class Manifest:
  """`manifest.json` of a prepared directory (see `to_json` for the layout)."""

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
    """Reads and checks `directory/manifest.json`."""
    path = os.path.join(directory, MANIFEST)
    try:
      with open(path) as f:
        raw = json.load(f)
    except FileNotFoundError:
      raise DataError(path, "manifest", "not found: not a prepared directory"
                      " (make one with `python -m data_prep.convert`)") from None
    except json.JSONDecodeError as e:
      raise DataError(path, "manifest", f"not valid JSON ({e})") from None
    if not isinstance(raw, dict):
      raise DataError(path, "manifest", "not a JSON object")
    if raw.get("schema_version") != SCHEMA_VERSION:
      raise DataError(path, "schema_version",
                      f"{raw.get('schema_version')!r}, this reader needs "
                      f"{SCHEMA_VERSION}")
    names = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING}
    for key in sorted(required - raw.keys()):
      raise DataError(path, key, "missing")
    for key in sorted(raw.keys() - names):
      raise DataError(path, key, "unknown field")
    manifest = cls(**raw)
    if manifest.task not in TASKS:
      raise DataError(path, "task", f"{manifest.task!r} not in {TASKS}")
    if sorted(manifest.dims) != sorted(MODALITIES):
      raise DataError(path, "dims", f"needs exactly {MODALITIES}")
    for m, d in manifest.dims.items():
      if not isinstance(d, int) or d < 0:
        raise DataError(path, f"dims.{m}", f"{d!r}, expected an integer >= 0"
                        " (0: the dataset has no such modality)")
    if not any(manifest.dims.values()):
      raise DataError(path, "dims", "every modality has dimension 0")
    return manifest
