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
| `label`           | [N] numbers, or str | yes      | score in [-3, 3], 0     |
|                   | class names         |          | neutral (mosi, mosei,   |
|                   |                     |          | --task regression) or   |
|                   |                     |          | class index or name     |
|                   |                     |          | (iemocap4, iemocap6,    |
|                   |                     |          | --classes); -1 or '' =  |
|                   |                     |          | not labelled for the    |
|                   |                     |          | task (classes only)     |
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

- Integer columns (`position`, `session`, `available_<m>`) may be floats
  holding integers (3.0, as pandas writes them); a fraction is an error.
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
  same, and so does a dataset of your own with a `session` key. mosi and
  mosei need a split.
- A dataset of your own: `--dataset NAME` (a letter, then letters, digits
  or _) with `--classes NAME,NAME,...` (classification; the label is the
  index into these names, or the name itself) or `--task regression`
  (scores in [-3, 3], 0 neutral: the sign metrics score the sign).
- Classification: a label of -1 means the utterance is not labelled for this
  task (the project's IEMOCAP file holds both the 6-way and the 4-way
  labels, -1 in `label4` for frustrated utterances): it is left out, the
  manifest's notes count it, and the positions of the rest are renumbered
  0..k-1 within each group, in their order. For regression -1 is a score.
- Keys the fields do not use are ignored, and a note names them (a
  misspelt key would otherwise silently be no column).
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

import os

import numpy as np

from data_prep import common
from data_prep import writer
from mcur_jax import npz_columns
from mcur_jax import schema
from mcur_jax import utterance_rows

# Integer split codes.
SPLIT_CODES = dict(enumerate(schema.SPLITS))
# Provisional split of every row when --split_file assigns the real one.
PLACEHOLDER_SPLIT = "train"


def add_arguments(group):
  group.add_argument("--key", action="append", metavar="FIELD=NPZKEY",
                     help="npz: read FIELD from key NPZKEY (repeatable); "
                     f"fields: {', '.join(npz_columns.FIELDS)}")


def read(args) -> writer.Table:
  """Reads `args.input` and returns its table (see the module docstring)."""
  task, classes = common.dataset_task(args.dataset, args.task, args.classes)
  keys, mapped = npz_columns.key_map(args.key or [])
  path = common.require(args.input, "npz", "--input", "FILE.npz")
  with npz_columns.open_archive(path) as archive:
    columns = npz_columns.Columns(path, archive, keys, mapped)
    label = columns.labels(classes)
    n = len(label)
    group_id = columns.text("group_id", n)
    position, utt_id, _ = columns.positions_and_ids(group_id)
    speaker = columns.text("speaker", n, required=False)
    session = columns.get("session", npz_columns.INTEGERS, n, required=False)
    # Without a split key: IEMOCAP, or a dataset of your own with sessions,
    # is split by session.
    split, folds, split_source = _split(
        columns, n, bool(args.split_file), session,
        args.dataset.startswith("iemocap") or (
            args.dataset not in common.DATASETS and session is not None))
    features, available, notes = npz_columns.read_features(columns, n)
    notes += columns.unread_note()
  # Classification: a label of -1 = not labelled for this task (IEMOCAP's
  # 4-way label of a frustrated utterance): the utterance is left out.
  keep = (label != npz_columns.UNLABELLED if task == "classification"
          else np.ones(n, bool))
  label, group_id, position, utt_id, split, available = (
      x[keep] for x in (label, group_id, position, utt_id, split, available))
  speaker, session = (x if x is None else x[keep] for x in (speaker, session))
  if not keep.all():
    notes.insert(0, f"{keys['label']}: {int((~keep).sum())} utterances with "
                 f"label {npz_columns.UNLABELLED} (not labelled for this "
                 "task) left out")
    # 0..k-1 within each group again, in the order of the kept positions.
    position = utterance_rows.positions_in_group(group_id, position)
  for j, m in enumerate(schema.MODALITIES):
    features[m], available[:, j], nan_notes = (
        utterance_rows.apply_nan_policy(
            features[m][keep], available[:, j], args.nan_policy, path,
            columns.name(m), utt_id))
    notes += nan_notes
  rows = utterance_rows.make_rows(
      utt_id=utt_id, group_id=group_id, position=position, label=label,
      features=features, available=available, speaker=speaker,
      session=session)
  return writer.Table(
      dataset=args.dataset, task=task, classes=classes, rows=rows,
      split=split, origin={f: path for f in npz_columns.FIELDS},
      format="npz",
      split_source=split_source,
      sources=[writer.sha256_source(path, "features, labels and ids")],
      notes=notes, session_folds=folds)


def _split(columns: npz_columns.Columns, n: int, split_file: bool, session,
           by_session: bool):
  """(split name per row, session folds?, where the split comes from).

  Without --split_file the split is the `split` column; without one, a
  dataset split `by_session` gets leave-one-session-out folds over
  `session`.
  """
  name = os.path.basename(columns.path)
  if split_file:  # convert.py assigns the split and names its source
    return np.full(n, PLACEHOLDER_SPLIT), False, ""
  if by_session and not columns.has("split"):
    split = np.full(n, schema.ALL_SPLIT)
    source = (f"leave-one-session-out folds ({columns.name('session')} of "
              f"{name}; no {columns.name('split')} key)")
  else:
    split = columns.get("split", npz_columns.IDS, n)
    source = f"{columns.name('split')} of {name}"
    if split.dtype.kind in npz_columns.INTEGERS:
      unknown = sorted(set(split.tolist()) - SPLIT_CODES.keys())
      if unknown:
        raise schema.DataError(columns.path, columns.name("split"), f"codes "
                               f"{unknown}; use 0/1/2 = train/valid/test")
      split = np.array([SPLIT_CODES[c] for c in split.tolist()], str)
      return split, False, source
    split = utterance_rows.text_column(split, columns.path,
                                       columns.name("split"))
  folds = bool(n) and (split == schema.ALL_SPLIT).all()
  if folds and session is None:
    raise schema.DataError(
        columns.path, columns.name("session"), "missing, but split "
        f"{schema.ALL_SPLIT!r} (cross-validation over sessions) needs it; "
        f"keys in the file: {', '.join(columns.files)}: map a session "
        "column with --key session=KEY, or a train/valid/test column with "
        "--key split=KEY")
  return split, folds, source
