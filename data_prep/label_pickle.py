"""The GCNet/MoMKE/SDR-GNN label pickle: ids, labels, speakers and splits.

`pickle.load(f, encoding="latin1")` gives a list:

* MOSI/MOSEI, 7 items: videoIDs, videoLabels, videoSpeakers, videoSentences,
  trainVids, valVids, testVids (the standard CMU-SDK folds).
* IEMOCAP, 6 items: videoIDs, videoLabels, videoSpeakers, videoSentences,
  trainVid, testVid. The two sets are ignored: IEMOCAP is evaluated by
  leave-one-session-out, session = int(dialogue_id[4]).

The four dicts map a video/dialogue id to per-utterance lists. Only load
pickles you trust: unpickling can run code.
"""

import dataclasses

import numpy as np

from data_prep import common
from mcur_jax import schema
from mcur_jax import utterance_rows

_DICTS = ("videoIDs", "videoLabels", "videoSpeakers", "videoSentences")
_SETS = {7: ("trainVids", "valVids", "testVids"), 6: ("trainVid", "testVid")}


@dataclasses.dataclass
class Labels:
  """One row per utterance, in pickle order (videos sorted by id)."""

  utt_id: np.ndarray
  group_id: np.ndarray
  position: np.ndarray
  label: np.ndarray
  speaker: np.ndarray
  session: np.ndarray
  # train/valid/test from the pickle's sets, or "all" for session folds.
  split: np.ndarray
  session_folds: bool


def _per_utterance(path: str, field: str, video: str, values) -> list:
  """The per-utterance list of `field` for one video; DataError if it is
  not a list (or tuple, or 1-D array)."""
  if isinstance(values, np.ndarray) and values.ndim == 1:
    return values.tolist()
  if not isinstance(values, (list, tuple)):
    raise schema.DataError(path, field, f"video {video!r}: a "
                           f"{type(values).__name__}, expected a list with "
                           "one entry per utterance")
  return list(values)


def read(path: str, dataset: str) -> Labels:
  """Reads and checks a label pickle; `dataset` decides 7 (mosi, mosei) or
  6 items (iemocap4, iemocap6)."""
  iemocap = dataset.startswith("iemocap")
  want = 6 if iemocap else 7
  raw = common.load_pickle(path, "--labels", encoding="latin1")
  if not isinstance(raw, (list, tuple)) or len(raw) != want:
    got = f"{type(raw).__name__} of {len(raw)}" if isinstance(
        raw, (list, tuple)) else type(raw).__name__
    raise schema.DataError(path, "pickle", f"expected a list of {want} "
                           f"({', '.join(_DICTS + _SETS[want])}) for "
                           f"{dataset}, got {got}")
  fields = dict(zip(_DICTS + _SETS[want], raw))
  ids = fields["videoIDs"]
  for name in _DICTS:
    if not isinstance(fields[name], dict):
      raise schema.DataError(path, name, f"expected a dict, got "
                             f"{type(fields[name]).__name__}")
    missing = sorted(ids.keys() - fields[name].keys(), key=repr)
    if missing:
      raise schema.DataError(path, name, f"no entry for {len(missing)} "
                             f"videos, e.g. {missing[0]!r}")
  split_of = {}
  if not iemocap:
    for name, split in zip(_SETS[7], schema.SPLITS):
      try:
        members = set(fields[name])
      except TypeError:
        raise schema.DataError(path, name, "not a collection of video ids") \
            from None
      for vid in members:
        if vid in split_of:
          raise schema.DataError(path, name, f"video {vid!r} is also in "
                                 f"{split_of[vid]!r}")
        split_of[vid] = split
  cols = {k: [] for k in ("utt_id", "group_id", "position", "label",
                          "speaker", "session", "split")}
  names = {vid: utterance_rows.text(vid, path, "videoIDs") for vid in ids}
  for vid in sorted(ids, key=names.get):
    name = names[vid]
    utts = _per_utterance(path, "videoIDs", name, ids[vid])
    speakers = _per_utterance(path, "videoSpeakers", name,
                              fields["videoSpeakers"][vid])
    try:
      labels = np.asarray(fields["videoLabels"][vid]).reshape(-1)
    except ValueError:  # ragged nested lists
      raise schema.DataError(path, "videoLabels", f"video {name!r}: not a "
                             "list of numbers") from None
    for field, values in (("videoLabels", labels),
                          ("videoSpeakers", speakers)):
      if len(values) != len(utts):
        raise schema.DataError(path, field, f"video {name!r} has "
                               f"{len(values)} entries for {len(utts)} "
                               "utterances")
    if iemocap:
      if len(name) < 5 or not name[4].isdecimal():
        raise schema.DataError(path, "videoIDs", f"dialogue id {name!r} has "
                               "no session digit at position 4 (Ses0N...)")
      session, split = int(name[4]), schema.ALL_SPLIT
    else:
      if vid not in split_of:
        raise schema.DataError(path, "/".join(_SETS[7]),
                               f"video {name!r} is in no split")
      session, split = 0, split_of[vid]
    for pos, utt in enumerate(utts):
      cols["utt_id"].append(utterance_rows.text(utt, path, "videoIDs"))
      cols["group_id"].append(name)
      cols["position"].append(pos)
      cols["speaker"].append(utterance_rows.text(speakers[pos], path,
                                                 "videoSpeakers"))
      cols["session"].append(session)
      cols["split"].append(split)
    cols["label"].extend(labels.tolist())
  try:
    label = np.asarray(cols["label"], np.float64)
  except (TypeError, ValueError):
    raise schema.DataError(path, "videoLabels", "labels are not numbers") \
        from None
  return Labels(utt_id=np.asarray(cols["utt_id"], str),
                group_id=np.asarray(cols["group_id"], str),
                position=np.asarray(cols["position"], np.int64), label=label,
                speaker=np.asarray(cols["speaker"], str),
                session=np.asarray(cols["session"], np.int64),
                split=np.asarray(cols["split"], str), session_folds=iemocap)
