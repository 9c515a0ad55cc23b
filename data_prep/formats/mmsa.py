"""MMSA `aligned_50.pkl` / `unaligned_50.pkl` (MMSA, IMDer, DiCMoR) -> a `writer.Table`.

    python -m data_prep.convert --format mmsa --dataset mosi \\
        --input unaligned_50.pkl --out prepared/mosi_mmsa

The pickle is a dict with keys `train`, `valid` and `test`, each a dict of
arrays over its N utterances:

| key                  | shape       | meaning                                   |
|----------------------|-------------|-------------------------------------------|
| `audio`              | [N, Ta, da] | frame-level audio features (COVAREP)      |
| `vision`             | [N, Tv, dv] | frame-level video features (Facet)        |
| `text`               | [N, Tt, dt] | token features (BERT or GloVe); another   |
|                      |             | key can be named with `--text_key`        |
| `text_bert`          | [N, 3, Tt]  | optional: BERT token ids, attention mask, |
|                      |             | segment ids; NOT features                 |
| `regression_labels`  | [N]         | sentiment score in [-3, 3]                |
| `id`                 | [N] str     | `videoid$_$clipid`                        |
| `audio_lengths`,     | [N] int     | optional (the unaligned version): valid   |
| `vision_lengths`     |             | frames of audio and vision                |

Other keys (`raw_text`, `classification_labels`, ...) are ignored.

Pooling. The model takes one vector per modality and utterance, so each
modality is the mean over its VALID frames:

- audio, vision: frames [0, length) when `<modality>_lengths` is given, else
  every frame that is not all zeros (the padding of the aligned version);
- text: the tokens of the `text_bert` attention mask (row 1) when
  `text_bert` is present (BERT features are not zero at padding tokens),
  else every frame that is not all zeros. The mask is used whatever
  `--text_key` names, so it must describe that key's tokens.

`-inf` in audio (the log features of silence) is set to 0 before pooling, as
MMSA's own loader does; it therefore counts as zeros inside a valid frame,
and a frame of nothing but `-inf` is padding under the all-zeros rule. An
utterance whose modality has no valid frame has that modality natively
absent. NaN or inf left in a pooled vector follows `--nan_policy`.

Ids. The group (video) is the part of `id` before `$_$` and the clip number
after it orders the utterances of the group: `position` is the 0-based rank of
the clip number within the group over all three splits (MOSI clip k ->
position k - 1). Ids without `$_$` are split on their last `_`. `utt_id` is
the id unchanged. There is no speaker or session.

The split is the pickle's own (`--split_file` overrides it). The labels are
sentiment scores, so only regression datasets (mosi, mosei) are accepted.

The pickle is trusted input: unpickling runs code, so only convert files from
a source you trust.
"""

import os

import numpy as np

from data_prep import common
from data_prep import writer
from mcur_jax import schema
from mcur_jax import utterance_rows

LABEL_KEY = "regression_labels"
ID_KEY = "id"
TOKENS_KEY = "text_bert"
# Schema modality -> key of its frames in the pickle (text: --text_key).
FRAME_KEYS = {"audio": "audio", "video": "vision"}
# Row of `text_bert` that holds the attention mask.
MASK_ROW = 1
# Utterances pooled at a time: bounds the float64 temporaries (the unaligned
# MOSEI audio alone is gigabytes).
CHUNK = 256
NONZERO_RULE = "the frames that are not all zeros"
ORIGIN_FIELDS = ("utt_id", "group_id", "position", "speaker", "session",
                 "label", "split") + schema.MODALITIES


def add_arguments(group):
  group.add_argument("--text_key", default="text",
                     help="mmsa: the key of the text features (default text;"
                     " never text_bert, which holds token ids)")


def read(args) -> writer.Table:
  """Reads `args.input`, pools every modality and returns the table."""
  task, classes = common.dataset_task(args.dataset)
  if task != "regression":
    raise schema.DataError("command line", "--dataset", f"{args.dataset!r} is "
                           "a classification dataset; mmsa pickles hold "
                           "sentiment scores (use mosi or mosei)")
  common.require(args.input, "mmsa", "--input", "PICKLE")
  if args.text_key == TOKENS_KEY:
    raise schema.DataError("command line", "--text_key",
                           f"{TOKENS_KEY} holds BERT token ids, not features")
  path = args.input
  raw = _load(path)
  parts = [_read_split(path, raw, s, args.text_key) for s in schema.SPLITS]
  _check_dims(path, parts, args.text_key)
  ids = np.concatenate([p["id"] for p in parts])
  features, available, notes = {}, {}, [_pooling_note(parts, args.text_key)]
  for m in schema.MODALITIES:
    features[m], available[m], nan_notes = utterance_rows.apply_nan_policy(
        np.concatenate([p["features"][m] for p in parts]),
        np.concatenate([p["available"][m] for p in parts]),
        args.nan_policy, path, _frame_key(m, args.text_key), ids)
    notes += nan_notes
  neg_inf = sum(p["neg_inf"] for p in parts)
  if neg_inf:
    notes.append(f"audio: {neg_inf} -inf values set to 0 before pooling "
                 "(as MMSA's loader does)")
  groups = np.concatenate([p["group"] for p in parts])
  rows = utterance_rows.make_rows(
      utt_id=ids, group_id=groups,
      position=utterance_rows.positions_in_group(
          groups, np.concatenate([p["clip"] for p in parts])),
      label=np.concatenate([p["label"] for p in parts]), features=features,
      available=np.stack([available[m] for m in schema.MODALITIES], 1))
  split = np.concatenate([np.full(len(p["id"]), s)
                          for s, p in zip(schema.SPLITS, parts)])
  return writer.Table(
      dataset=args.dataset, task=task, classes=classes, rows=rows, split=split,
      origin={f: path for f in ORIGIN_FIELDS}, format="mmsa",
      split_source=f"train/valid/test of {os.path.basename(path)}",
      sources=[writer.sha256_source(path, "features, labels and split")],
      notes=notes)


def _frame_key(modality: str, text_key: str) -> str:
  return text_key if modality == "text" else FRAME_KEYS[modality]


def _load(path: str) -> dict:
  """The unpickled dict, checked to hold a dict per split."""
  raw = common.load_pickle(path, "--input")
  if not isinstance(raw, dict):
    raise schema.DataError(path, "pickle", f"a {type(raw).__name__}, not a "
                           "dict with train/valid/test")
  for split in schema.SPLITS:
    if not isinstance(raw.get(split), dict):
      raise schema.DataError(path, split, "missing or not a dict of arrays "
                             f"(keys: {', '.join(sorted(map(str, raw)))})")
  return raw


def _array(path, split_dict, split, key, n=None) -> np.ndarray:
  """`split_dict[key]` as an array, which must exist (and have n rows)."""
  if key not in split_dict:
    raise schema.DataError(path, f"{split}.{key}", "missing (keys: "
                           f"{', '.join(sorted(map(str, split_dict)))})")
  try:
    value = np.asarray(split_dict[key])
  except ValueError as e:  # ragged nested lists
    raise schema.DataError(path, f"{split}.{key}", f"not an array ({e})"
                           ) from None
  if n is not None and (value.ndim == 0 or len(value) != n):
    raise schema.DataError(path, f"{split}.{key}", f"shape {value.shape}, "
                           f"but {LABEL_KEY} has {n} rows")
  return value


def _numeric(path, split, key, value: np.ndarray, ndim: int) -> np.ndarray:
  if value.dtype.kind not in "biuf" or value.ndim != ndim:
    raise schema.DataError(path, f"{split}.{key}", f"{value.dtype} array of "
                           f"shape {value.shape}, expected {ndim}-D numbers")
  return value


def _read_split(path, raw, split, text_key) -> dict:
  """One split's ids, labels and pooled features, checked."""
  part = raw[split]
  if text_key not in part and TOKENS_KEY in part:
    raise schema.DataError(path, f"{split}.{text_key}", f"missing; only "
                           f"{TOKENS_KEY} (BERT token ids, not features) is "
                           "there: convert a pickle with text features")
  label = _array(path, part, split, LABEL_KEY)
  if label.dtype.kind not in "biuf" or label.ndim == 0 or (
      label.size != len(label)):
    raise schema.DataError(path, f"{split}.{LABEL_KEY}", f"{label.dtype} "
                           f"array of shape {label.shape}, expected [N] "
                           "numbers")
  label = label.reshape(-1)
  n = len(label)
  ids = _array(path, part, split, ID_KEY, n)
  if ids.ndim != 1:
    raise schema.DataError(path, f"{split}.{ID_KEY}",
                           f"shape {ids.shape}, expected [N] strings")
  ids = utterance_rows.text_column(ids, path, f"{split}.{ID_KEY}")
  group, clip = _parse_ids(path, split, ids)
  features, available, rules, neg_inf = {}, {}, {}, 0
  for m in schema.MODALITIES:
    key = _frame_key(m, text_key)
    frames = _numeric(path, split, key, _array(path, part, split, key, n), 3)
    valid, rules[m] = _valid_frames(path, part, split, m, n, frames.shape[1])
    features[m], available[m], count = _pool(frames, valid, m == "audio")
    neg_inf += count
  return {"id": ids, "group": group, "clip": clip, "label": label,
          "features": features, "available": available, "rules": rules,
          "neg_inf": neg_inf}


def _valid_frames(path, part, split, modality, n, frames):
  """The frames to average and the rule in words.

  Returns ([n, frames] bool, or None for "every frame not all zeros"; the
  rule for the manifest's note).
  """
  if modality == "text":
    if TOKENS_KEY not in part:
      return None, NONZERO_RULE
    tokens = _numeric(path, split, TOKENS_KEY,
                      _array(path, part, split, TOKENS_KEY, n), 3)
    if tokens.shape[1:] != (3, frames):
      raise schema.DataError(path, f"{split}.{TOKENS_KEY}", f"shape "
                             f"{tokens.shape}, expected [N, 3, {frames}] "
                             "(ids, mask, segments over the text frames)")
    return tokens[:, MASK_ROW] != 0, f"the {TOKENS_KEY} attention mask"
  key = f"{FRAME_KEYS[modality]}_lengths"
  if key not in part:
    return None, NONZERO_RULE
  lengths = _numeric(path, split, key, _array(path, part, split, key, n), 1)
  if not ((lengths >= 0) & (lengths <= frames) & (lengths % 1 == 0)).all():
    raise schema.DataError(path, f"{split}.{key}", "lengths must be integers "
                           f"in [0, {frames}] (the frames of the features)")
  return np.arange(frames) < lengths[:, None], f"frames [0, {key})"


def _pool(frames: np.ndarray, valid: np.ndarray | None, zero_neg_inf: bool):
  """Mean over each row's valid frames.

  Args:
    frames: [N, T, d] numbers.
    valid: [N, T] bool, the frames to average; None takes every frame that is
      not all zeros.
    zero_neg_inf: set -inf to 0 first (MMSA's treatment of audio).

  Returns:
    ([N, d] float32 means, zeros where no frame is valid; [N] bool "has a
    valid frame"; the number of -inf values zeroed).
  """
  n, _, d = frames.shape
  pooled = np.zeros((n, d), np.float32)
  count = np.zeros(n, np.int64)
  neg_inf = 0
  for lo in range(0, n, CHUNK):
    x = frames[lo:lo + CHUNK].astype(np.float64)
    if zero_neg_inf:
      bad = x == -np.inf
      neg_inf += int(bad.sum())
      x[bad] = 0
    keep = (x != 0).any(2) if valid is None else valid[lo:lo + CHUNK]
    count[lo:lo + CHUNK] = keep.sum(1)
    total = np.where(keep[..., None], x, 0).sum(1)
    pooled[lo:lo + CHUNK] = total / np.maximum(count[lo:lo + CHUNK], 1)[:, None]
  return pooled, count > 0, neg_inf


def _parse_ids(path, split, ids):
  """(group, clip number) of every `videoid$_$clip` (or `videoid_clip`) id."""
  groups, clips = [], []
  for utt in ids:
    group, sep, clip = utt.partition("$_$")
    if not sep:
      group, sep, clip = utt.rpartition("_")
    if not (sep and group and clip.isdecimal()):
      raise schema.DataError(path, f"{split}.{ID_KEY}", f"{utt!r} is not "
                             "'videoid$_$clip' (or 'videoid_clip') with an "
                             "integer clip number")
    groups.append(group)
    clips.append(int(clip))
  return np.array(groups, str), np.array(clips, np.int64)


def _check_dims(path, parts, text_key):
  """Every split must have the feature dimensions of `train`."""
  for m in schema.MODALITIES:
    dim = parts[0]["features"][m].shape[1]
    for split, part in zip(schema.SPLITS[1:], parts[1:]):
      if part["features"][m].shape[1] != dim:
        raise schema.DataError(
            path, f"{split}.{_frame_key(m, text_key)}",
            f"feature dimension {part['features'][m].shape[1]}, but train "
            f"has {dim}")


def _pooling_note(parts, text_key) -> str:
  """How each modality was pooled, for the manifest."""
  rules = []
  for m in schema.MODALITIES:
    used = sorted({p["rules"][m] for p in parts})
    rules.append(f"{_frame_key(m, text_key)} over {' or '.join(used)}")
  return ("pooled to one vector per utterance by the mean over valid frames: "
          + "; ".join(rules))
