"""The Poria et al. (2017) CMU-MOSI CSV folder.

Files (CSV, no header; docs/data.md, "Formats"; their origin: the README,
"Real data"):

* `transcripts.csv`: every utterance: `utt_id, transcript, video number,
  binary label` (1 = sentiment score >= 0).
* `text_{train,test}.csv`: column 0 = row of the utterance in
  `transcripts.csv`, then the text features. This is what names the rows of
  the other files.
* `{text,audio,video}_{train,test}0.csv`: one row per utterance in the row
  order of `text_{split}.csv`; the last column is the binary label again.

Labels: with `--labels` (the GCNet MOSI label pickle) the continuous score in
[-3, 3] (regression), matched by utterance id; without it, the binary label
as a 2-class task (0 = negative, 1 = score >= 0). Either way the binary labels
of every file must agree, so a misaligned file fails loudly.

Split: the Poria train videos are `train`. The text and video extractors were
trained on them, so validation must never come from them: `valid` is carved
from the Poria test videos (`VALID_FRACTION`, `VALID_SEED`, by
`mcur_jax.data.carve_groups`: the same 10 videos as the project's
`poria_split.json`) and the rest is `test`. `--split_file` overrides this.
"""

import csv
import os

import numpy as np

from data_prep import common
from data_prep import label_pickle
from data_prep import writer
from mcur_jax import data
from mcur_jax import schema
from mcur_jax import utterance_rows

POSITIVE_CLASSES = ["negative", "positive"]
VALID_FRACTION = 0.33
VALID_SEED = 0
_PORIA_SPLITS = ("train", "test")


def add_arguments(group) -> None:
  del group  # Uses only the shared --input, --labels and --split_file.


def _read_csv(path: str) -> list[list[str]]:
  try:
    with open(path, newline="", encoding="utf-8") as f:
      return list(csv.reader(f))
  except FileNotFoundError:
    raise schema.DataError(path, "file", "not found (is --input the Poria "
                           "CSV folder?)") from None
  except UnicodeDecodeError as e:
    raise schema.DataError(path, "file", f"not UTF-8 text ({e})") from None
  except csv.Error as e:
    raise schema.DataError(path, "file", f"not CSV ({e})") from None


def _floats(path: str, rows: list[list[str]], field: str) -> np.ndarray:
  """The rows of a numeric CSV file as a [rows, columns] array."""
  if not rows:
    raise schema.DataError(path, field, "no rows: the file is empty")
  widths = {len(r) for r in rows}
  if len(widths) != 1:
    raise schema.DataError(path, field, f"rows of different lengths {sorted(widths)}")
  if not rows[0]:
    raise schema.DataError(path, field, "empty rows")
  try:
    return np.array(rows, np.float64)
  except ValueError as e:
    raise schema.DataError(path, field, f"non-numeric value ({e})") from None


def _read_poria_split(folder: str, split: str, transcripts: dict):
  """Utterance ids, features and binary labels of one Poria split."""
  index_path = os.path.join(folder, f"text_{split}.csv")
  index = _floats(index_path, _read_csv(index_path), "row")[:, 0]
  names = list(transcripts)
  if not ((index >= 0) & (index < len(names)) & (index % 1 == 0)).all():
    raise schema.DataError(index_path, "row", "column 0 is not a row number "
                           "of transcripts.csv")
  utt = [names[int(i)] for i in index]
  features, binary = {}, {}
  for m in schema.MODALITIES:
    path = os.path.join(folder, f"{m}_{split}0.csv")
    values = _floats(path, _read_csv(path), m)
    if len(values) != len(utt):
      raise schema.DataError(path, m, f"{len(values)} rows, "
                             f"text_{split}.csv has {len(utt)}")
    features[m], binary[path] = values[:, :-1], values[:, -1]
  expected = np.array([transcripts[u] for u in utt], np.float64)
  for path, labels in binary.items():
    wrong = np.flatnonzero(labels != expected)
    if len(wrong):
      raise schema.DataError(path, "label", f"binary label of {utt[wrong[0]]!r}"
                             " disagrees with transcripts.csv: rows misaligned")
  return utt, features, expected


def _clip_number(path: str, utt: str) -> int:
  """k of an utterance id `<video>_<k>`, which orders a video's utterances."""
  clip = utt.rpartition("_")[2]
  if not clip.isdecimal():
    raise schema.DataError(path, "utt_id", f"{utt!r} is not <video>_<number>"
                           " (pass --labels to take the order from there)")
  return int(clip)


def read(args) -> writer.Table:
  folder = common.require(args.input, "poria", "--input", "CSV_FOLDER")
  task, classes = common.dataset_task(args.dataset)
  if task != "regression":
    raise schema.DataError("command line", "--dataset", "the Poria CSVs hold "
                           "CMU-MOSI: use --dataset mosi")
  if os.path.isfile(folder):
    raise schema.DataError(folder, "--input", "a file; --format poria reads "
                           "the folder of the Poria CSVs (an .npz is "
                           "--format npz)")
  transcripts_path = os.path.join(folder, "transcripts.csv")
  transcripts = {}
  for row in _read_csv(transcripts_path):
    if len(row) != 4 or row[3] not in ("0", "1"):
      raise schema.DataError(transcripts_path, "label",
                             f"row {row[:1]} is not utt_id,text,video,0|1")
    if row[0] in transcripts:
      raise schema.DataError(transcripts_path, "utt_id",
                             f"{row[0]!r} is on more than one row")
    transcripts[row[0]] = float(row[3])

  utt, features, binary, poria_split = [], {m: [] for m in schema.MODALITIES}, [], []
  for split in _PORIA_SPLITS:
    u, f, b = _read_poria_split(folder, split, transcripts)
    utt += u
    binary.append(b)
    poria_split += [split] * len(u)
    for m in schema.MODALITIES:
      features[m].append(f[m])
  features = {m: np.concatenate(v).astype(np.float32) for m, v in features.items()}
  binary = np.concatenate(binary)
  n = len(utt)
  available = np.ones((n, len(schema.MODALITIES)), bool)
  notes = []
  origin = {"utt_id": transcripts_path, "group_id": transcripts_path,
            "position": transcripts_path, "label": transcripts_path}
  for j, m in enumerate(schema.MODALITIES):
    origin[m] = os.path.join(folder, f"{m}_{{train,test}}0.csv")
    features[m], available[:, j], note = utterance_rows.apply_nan_policy(
        features[m], available[:, j], args.nan_policy, origin[m], m, utt)
    notes += note

  group = np.array([u.rsplit("_", 1)[0] for u in utt])
  speaker = np.array([""] * n)
  if args.labels:
    labels = label_pickle.read(args.labels, args.dataset)
    row_of = {u: i for i, u in enumerate(labels.utt_id.tolist())}
    missing = [u for u in utt if u not in row_of]
    if missing:
      raise schema.DataError(args.labels, "videoIDs", f"no label for "
                             f"{len(missing)} utterances of the CSVs, e.g. "
                             f"{missing[0]!r}")
    rows = np.array([row_of[u] for u in utt])
    label, group = labels.label[rows], labels.group_id[rows]
    position, speaker = labels.position[rows], labels.speaker[rows]
    disagree = np.flatnonzero((label >= 0) != (binary == 1))
    if len(disagree):
      raise schema.DataError(args.labels, "videoLabels", f"sign of the score of"
                             f" {utt[disagree[0]]!r} disagrees with the Poria "
                             "binary label")
    origin.update(label=args.labels, group_id=args.labels,
                  position=args.labels)
  else:
    task, classes, label = "classification", POSITIVE_CLASSES, binary
    notes.append("no --labels: binary labels (1 = score >= 0) as a 2-class task")
    suffix = np.array([_clip_number(transcripts_path, u) for u in utt])
    position = utterance_rows.positions_in_group(group, suffix)

  poria_split = np.array(poria_split)
  valid = data.carve_groups(group[poria_split == "test"], VALID_FRACTION,
                            VALID_SEED)
  split = np.where(np.isin(group, list(valid)), "valid", poria_split)
  if not args.split_file:
    notes.append(f"valid = {len(valid)} of the Poria test videos (the feature "
                 "extractors saw the Poria train videos, so validation never "
                 "comes from them)")
  origin["split"] = os.path.join(folder, "text_{train,test}.csv")
  sources = [writer.sha256_source(folder, "poria_csv_folder")]
  if args.labels:
    sources.append(writer.sha256_source(args.labels, "labels"))
  return writer.Table(
      dataset=args.dataset, task=task, classes=classes,
      rows=utterance_rows.make_rows(
          utt_id=utt, group_id=group, position=position, label=label,
          features=features, available=available, speaker=speaker),
      split=split, origin=origin, format="poria",
      split_source=(f"Poria train videos = train; valid carved from the Poria "
                    f"test videos (fraction {VALID_FRACTION}, seed "
                    f"{VALID_SEED})"),
      sources=sources, notes=notes)
