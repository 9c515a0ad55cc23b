"""The prepared-dataset schema: record fields, `manifest.json`, and its errors.

A prepared directory holds `{split}-NNNNN-of-MMMMM.tfrecord` shards, one
`tf.train.Example` per utterance, and `manifest.json`. Record fields:

| field               | Example list | meaning                                      |
|---------------------|--------------|----------------------------------------------|
| `utt_id`            | bytes        | utterance id, unique in the dataset          |
| `group_id`          | bytes        | video (MOSI/MOSEI) or dialogue (IEMOCAP)     |
| `position`          | int64        | 0-based position of the utterance in group   |
| `speaker`           | bytes        | speaker ('' when the source has none)        |
| `session`           | int64        | recording session (IEMOCAP 1..5, else 0)     |
| `label`             | float / int64| score (regression) or class index            |
| `audio` `text` `video` | float    | the feature vector; EMPTY when absent        |
| `available_<m>`     | int64        | 1 if modality m is natively present          |
| extra fields        | int64        | listed in the manifest (`corrupted`, ...)    |

A natively absent modality is stored as an empty list with `available_<m>`
= 0, never as a zero vector, so nothing downstream can mistake it for data.
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


class DataError(ValueError):
  """Bad input or a bad prepared directory; the message names file and field."""

  def __init__(self, file: str | os.PathLike, field: str, problem: str):
    self.file, self.field, self.problem = os.fspath(file), field, problem
    super().__init__(f"{self.file}: {field}: {problem}")


def available_field(modality: str) -> str:
  return f"available_{modality}"


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
    return manifest
