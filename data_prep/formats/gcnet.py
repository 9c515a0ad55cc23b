"""GCNet / MoMKE / SDR-GNN layout: a label pickle plus one .npy per utterance.

    --labels        <DS>_features_raw_{2,4,6}way.pkl (data_prep.label_pickle)
    --features_dir  <audio_feature>/<utt_id>.npy     [D] or [T, D]
                    <text_feature>/<utt_id>.npy      [D] or [T, D]
                    <video_feature>/<utt_id>/*.npy   one [D] per face frame

Every entry may be a `<utt_id>.npy` file or a `<utt_id>/` folder of frame
files; a file is squeezed and averaged over T, a folder's frames are stacked
and averaged, as GCNet's loaders do. Where GCNet turns "no face detected"
into a zero vector, this reader marks the modality natively absent
(available=False): an EMPTY folder, and an all-zero video vector (what
GCNet's compression step stores for a speaker without faces).

IEMOCAP after GCNet's `feature_compressed_iemocap`: the video folder of an
utterance holds `compress_F.npy` and `compress_M.npy`, the faces of each
person in the clip. An utterance uses the frames of its own speaker (the
pickle's videoSpeakers); GCNet's rule assigns a frame file to F if its name
holds an 'F', else to M if it holds an 'M'. No file of the speaker: absent.

Entries are matched by exact name (GCNet's IEMOCAP loader globs `<utt_id>*`
and asserts one hit, which is the same for its files). Feature dimensions come
from the files; every file of a modality must agree. `write_layout` is the
inverse, for tests and benchmarks.
"""

import collections
import os
import pickle

import numpy as np

from data_prep import common
from data_prep import label_pickle
from data_prep import writer
from mcur_jax import schema
from mcur_jax import utterance_rows

# The feature folders of every GCNet/MoMKE run script.
DEFAULT_FEATURES = {"audio": "wav2vec-large-c-UTT",
                    "text": "deberta-large-4-UTT", "video": "manet_UTT"}
IEMOCAP_SPEAKERS = ("F", "M")
# write_layout: IEMOCAP sessions of the pickle's trainVid; the rest is testVid.
_IEMOCAP_TRAIN_SESSIONS = (1, 2, 3, 4)


def add_arguments(group) -> None:
  group.add_argument("--features_dir", help="folder holding one sub-folder "
                     "per feature (gcnet)")
  for m in schema.MODALITIES:
    group.add_argument(f"--{m}_feature", default=DEFAULT_FEATURES[m],
                       help=f"{m} feature folder under --features_dir "
                       "(default: %(default)s)")


def read(args) -> writer.Table:
  """Reads `--labels` and the three feature folders under `--features_dir`."""
  labels_path = common.require(args.labels, "gcnet", "--labels", "PICKLE")
  features_dir = common.require(args.features_dir, "gcnet", "--features_dir",
                                "DIR")
  task, classes = common.dataset_task(args.dataset)
  labels = label_pickle.read(labels_path, args.dataset)
  speakers = labels.speaker if labels.session_folds else None
  origin = {f: labels_path for f in ("utt_id", "group_id", "position",
                                     "label", "speaker", "session", "split")}
  sources = [writer.sha256_source(labels_path, "labels")]
  features, available, notes = {}, [], []
  for m in schema.MODALITIES:
    folder = os.path.join(features_dir, getattr(args, f"{m}_feature"))
    matrix, present, zeros, paths = _read_modality(folder, m, labels.utt_id,
                                                   speakers)
    if zeros:
      notes.append(f"{m}: {zeros} all-zero vectors in "
                   f"{os.path.basename(folder)} (GCNet's 'no face') marked "
                   "absent")
    matrix, present, nan_notes = utterance_rows.apply_nan_policy(
        matrix, present, args.nan_policy, paths, m, labels.utt_id)
    features[m] = matrix
    available.append(present)
    notes.extend(nan_notes)
    origin[m] = folder
    sources.append(writer.sha256_source(folder, f"{m} features"))
  rows = utterance_rows.make_rows(
      utt_id=labels.utt_id, group_id=labels.group_id,
      position=labels.position, label=labels.label, features=features,
      available=np.stack(available, 1), speaker=labels.speaker,
      session=labels.session)
  name = os.path.basename(labels_path)
  split_source = (f"leave-one-session-out folds (sessions of {name})"
                  if labels.session_folds else
                  f"trainVids/valVids/testVids of {name}")
  return writer.Table(dataset=args.dataset, task=task, classes=classes,
                      rows=rows, split=labels.split, origin=origin,
                      format="gcnet", split_source=split_source,
                      sources=sources, notes=notes,
                      session_folds=labels.session_folds)


def _read_modality(folder: str, modality: str, utt_ids: np.ndarray,
                   speakers: np.ndarray | None):
  """The [N, D] features of one folder, in `utt_ids` order.

  Returns (matrix, available, zeros, paths): absent rows are zeros, `zeros`
  counts the all-zero video vectors read as absent, `paths` names the file or
  frame folder of each row.
  """
  try:
    names = set(os.listdir(folder))
  except OSError as e:
    raise schema.DataError(folder, modality, "feature folder unreadable "
                           f"({e.strerror})") from None
  vectors, paths, zeros = [], [], 0
  for i, utt in enumerate(utt_ids.tolist()):
    speaker = speakers[i] if speakers is not None else None
    path, vector = _read_entry(folder, names, utt, modality, speaker)
    if modality == "video" and vector is not None and not vector.any():
      vector, zeros = None, zeros + 1
    vectors.append(vector)
    paths.append(path)
  matrix, available = _stack(vectors, paths, folder, modality)
  return matrix, available, zeros, paths


def _read_entry(folder: str, names: set[str], utt: str, modality: str,
                speaker: str | None):
  """(path, vector) of one utterance: `<utt>.npy` or the folder `<utt>/`;
  the vector is None when the folder holds no frames (of `speaker`)."""
  if os.sep in utt or utt in ("", ".", ".."):
    raise schema.DataError(folder, modality, f"utterance id {utt!r} cannot "
                           "name a file in this folder")
  if utt + ".npy" in names:
    path = os.path.join(folder, utt + ".npy")
    return path, _load_rows(path, modality).mean(0)
  if utt in names:
    path = os.path.join(folder, utt)
    return path, _read_frames(path, modality, speaker)
  raise schema.DataError(os.path.join(folder, utt + ".npy"), modality,
                         f"no feature file (nor folder) for utterance {utt!r}")


def _read_frames(path: str, modality: str, speaker: str | None):
  """Mean of the frame files in folder `path` (of `speaker` where given);
  None when there are none."""
  try:
    names = sorted(n for n in os.listdir(path) if n.endswith(".npy"))
  except OSError as e:
    raise schema.DataError(path, modality,
                           f"neither a .npy file nor a readable folder "
                           f"({e.strerror})") from None
  if speaker is not None:
    names = [n for n in names if _frame_speaker(path, n, modality) == speaker]
  if not names:
    return None
  frames = [_load_rows(os.path.join(path, n), modality) for n in names]
  dim = frames[0].shape[1]
  for n, f in zip(names, frames):
    if f.shape[1] != dim:
      raise schema.DataError(os.path.join(path, n), modality,
                             f"frame dimension {f.shape[1]}, frame "
                             f"{names[0]!r} of the same folder has {dim}")
  return np.concatenate(frames).mean(0)


def _frame_speaker(folder: str, name: str, modality: str) -> str:
  """GCNet's rule: 'F' if the file name holds an F, else 'M' if an M."""
  stem = name[:-len(".npy")]
  for speaker in IEMOCAP_SPEAKERS:
    if speaker in stem:
      return speaker
  raise schema.DataError(os.path.join(folder, name), modality,
                         "IEMOCAP frame file name holds neither 'F' nor 'M' "
                         "(expected compress_F.npy / compress_M.npy)")


def _load_rows(path: str, modality: str) -> np.ndarray:
  """A .npy file as a [T, D] array (squeezed; [D] becomes [1, D])."""
  try:
    with open(path, "rb") as f:
      x = np.lib.format.read_array(f, allow_pickle=False)
  except (OSError, *utterance_rows.NPY_ERRORS) as e:
    raise schema.DataError(path, modality, f"unreadable .npy ({e!r})"
                           ) from None
  x = np.atleast_2d(np.squeeze(x))
  if x.ndim != 2 or x.dtype.kind not in "fiu" or not x.size:
    raise schema.DataError(path, modality, f"expected a numeric [D] or [T, D]"
                           f" array, got {x.dtype} of shape {x.shape}")
  return x


def _stack(vectors: list, paths: list, folder: str, modality: str):
  """[N, D] float32 matrix and availability; every vector must have the
  dimension most files have."""
  dims = collections.Counter(len(v) for v in vectors if v is not None)
  if not dims:
    raise schema.DataError(folder, modality, "no utterance has features "
                           "(every entry is empty)")
  dim = dims.most_common(1)[0][0]
  matrix = np.zeros((len(vectors), dim), np.float32)
  available = np.zeros(len(vectors), bool)
  for i, v in enumerate(vectors):
    if v is None:
      continue
    if len(v) != dim:
      raise schema.DataError(paths[i], modality, f"dimension {len(v)}, "
                             f"{dims[dim]} other files of {modality} have "
                             f"{dim}")
    matrix[i], available[i] = v, True
  return matrix, available


def write_layout(table: writer.Table, out_dir: str | os.PathLike, *,
                 audio_feature: str = DEFAULT_FEATURES["audio"],
                 text_feature: str = DEFAULT_FEATURES["text"],
                 video_feature: str = DEFAULT_FEATURES["video"],
                 video_frames: int = 2) -> tuple[str, str]:
  """Writes `table` in the GCNet layout that `read` reads back; for tests and
  benchmarks.

  The label pickle is GCNet's list of 7 (mosi, mosei: sets from the table's
  train/valid/test split) or of 6 (iemocap: trainVid = sessions 1-4, testVid
  = session 5). Audio and text are one [D] file per utterance. Video is a
  folder of `video_frames` frames whose mean is the table's vector (IEMOCAP:
  compress_<own speaker>.npy, plus the other speaker's file holding the
  negated vector); an absent modality is an empty folder.

  Returns:
    (pickle path, features dir), the `--labels` and `--features_dir` to pass.
  """
  out_dir = os.fspath(out_dir)
  iemocap = table.dataset.startswith("iemocap")
  features_dir = os.path.join(out_dir, "features")
  folders = {"audio": audio_feature, "text": text_feature,
             "video": video_feature}
  rows = table.rows
  for j, m in enumerate(schema.MODALITIES):
    folder = os.path.join(features_dir, folders[m])
    os.makedirs(folder, exist_ok=True)
    for i, utt in enumerate(rows.utt_id.tolist()):
      x = rows.features[m][i] if rows.available[i, j] else None
      if m == "video" and iemocap:
        _write_speaker_faces(os.path.join(folder, utt), x, rows.speaker[i])
      elif m == "video":
        _write_frames(os.path.join(folder, utt), x, video_frames)
      elif x is None:
        os.mkdir(os.path.join(folder, utt))
      else:
        np.save(os.path.join(folder, utt + ".npy"), x)
  pickle_path = os.path.join(out_dir, f"{table.dataset}_labels.pkl")
  with open(pickle_path, "wb") as f:
    pickle.dump(_label_lists(table, iemocap), f)
  return pickle_path, features_dir


def _write_frames(folder: str, x: np.ndarray | None, count: int) -> None:
  """`count` frames x * (1 + d_k) with sum_k d_k = 0: their mean is x."""
  os.mkdir(folder)
  if x is None:
    return
  for k, d in enumerate(np.linspace(-0.5, 0.5, count) if count > 1 else [0]):
    np.save(os.path.join(folder, f"frame_{k:03d}.npy"),
            (x * (1 + d)).astype(np.float32))


def _write_speaker_faces(folder: str, x: np.ndarray | None, speaker: str):
  """IEMOCAP compressed faces: own speaker x, the other person -x."""
  os.mkdir(folder)
  if x is None:
    return
  for s in IEMOCAP_SPEAKERS:
    np.save(os.path.join(folder, f"compress_{s}.npy"),
            x if s == speaker else -x)


def _label_lists(table: writer.Table, iemocap: bool) -> list:
  """GCNet's pickle content: four dicts group -> per-utterance lists, then
  the split sets."""
  rows = table.rows
  ids, labels, speakers, sentences = {}, {}, {}, {}
  groups, group_id = {}, rows.group_id.tolist()
  for i in np.lexsort((rows.position, rows.group_id)).tolist():
    groups.setdefault(group_id[i], []).append(i)
  for g, index in groups.items():
    ids[g] = rows.utt_id[index].tolist()
    labels[g] = (rows.label[index].astype(int).tolist() if iemocap
                 else rows.label[index].astype(float).tolist())
    speakers[g] = rows.speaker[index].tolist()
    sentences[g] = np.array([f"sentence {p}" for p in rows.position[index]])
  if iemocap:
    train = {g for g, index in groups.items()
             if rows.session[index[0]] in _IEMOCAP_TRAIN_SESSIONS}
    return [ids, labels, speakers, sentences, train, set(groups) - train]
  split_sets = [{g for g, index in groups.items()
                 if table.split[index[0]] == s} for s in schema.SPLITS]
  return [ids, labels, speakers, sentences, *split_sets]
