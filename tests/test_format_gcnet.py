"""The gcnet format: label pickle + per-utterance .npy folders -> TFRecords.

Round trips run on the real GCNet label pickles (skipped where the shared data
is absent) with generated features of the real dimensions; the other tests use
a tiny generated layout.
"""

import os
import shutil

import numpy as np
import pytest

from data_prep import common
from data_prep import convert
from data_prep import label_pickle
from data_prep import writer
from data_prep.formats import gcnet
from mcur_jax import data
from tests import cli
from mcur_jax import schema
from mcur_jax import utterance_rows

GCNET_DIMS = {"audio": 512, "text": 1024, "video": 1024}
TINY_DIMS = {"audio": 3, "text": 4, "video": 5}
MOSI_PICKLE = "CMUMOSI/gcnet_labels/CMUMOSI_features_raw_2way.pkl"
IEMOCAP_PICKLE = "IEMOCAP/gcnet_labels/IEMOCAP_features_raw_{}way.pkl"
# SOURCES.md: utterance counts, and per session for 4-way.
IEMOCAP_COUNTS = {"iemocap4": 5531, "iemocap6": 7433}
IEMOCAP4_SESSIONS = {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241}


def _table(dataset: str, labels: label_pickle.Labels, dims: dict,
           seed: int = 0, video_absent: float = 0.1) -> writer.Table:
  """The utterances of `labels` with random features; some video absent."""
  rng = np.random.default_rng(seed)
  n = len(labels.utt_id)
  available = np.ones((n, 3), bool)
  available[:, 2] = rng.random(n) >= video_absent
  features = {m: rng.standard_normal((n, d)).astype(np.float32)
              for m, d in dims.items()}
  features["video"][~available[:, 2]] = 0
  task, classes = common.dataset_task(dataset)
  rows = utterance_rows.make_rows(
      utt_id=labels.utt_id, group_id=labels.group_id,
      position=labels.position, label=labels.label, features=features,
      available=available, speaker=labels.speaker, session=labels.session)
  return writer.Table(dataset=dataset, task=task, classes=classes, rows=rows,
                      split=labels.split, origin={}, format="test",
                      split_source="test", sources=[],
                      session_folds=labels.session_folds)


def _tiny_labels(dataset: str) -> label_pickle.Labels:
  """3 utterances in each of 3 videos (mosi) or 5 one-per-session dialogues."""
  if dataset == "mosi":
    groups = [("vidA", "train", 0), ("vidB", "valid", 0), ("vidC", "test", 0)]
    speakers = ["", "", ""]
  else:
    groups = [(f"Ses0{s}F_impro01", schema.ALL_SPLIT, s) for s in range(1, 6)]
    speakers = ["F", "M", "F"]
  cols = {k: [] for k in ("utt_id", "group_id", "position", "label",
                          "speaker", "session", "split")}
  for k, (g, split, session) in enumerate(groups):
    for p, s in enumerate(speakers):
      cols["utt_id"].append(f"{g}_{s}{p:03d}")
      cols["group_id"].append(g)
      cols["position"].append(p)
      cols["label"].append((k + p) % 4 if session else 0.5 * p - 0.5)
      cols["speaker"].append(s)
      cols["session"].append(session)
      cols["split"].append(split)
  return label_pickle.Labels(**{k: np.asarray(v) for k, v in cols.items()},
                             session_folds=dataset != "mosi")


@pytest.fixture
def tiny(tmp_path):
  """(table, pickle path, features dir) of a tiny MOSI-like layout."""
  table = _table("mosi", _tiny_labels("mosi"), TINY_DIMS, video_absent=0)
  pickle_path, features_dir = gcnet.write_layout(table, tmp_path / "layout")
  return table, pickle_path, features_dir


def _convert(out, dataset, labels, features_dir, *extra) -> int:
  argv = ["--format", "gcnet", "--dataset", dataset, "--out", str(out)]
  if labels is not None:
    argv += ["--labels", str(labels)]
  if features_dir is not None:
    argv += ["--features_dir", str(features_dir)]
  return convert.main(argv + list(extra))


def _all_rows(dataset: data.Dataset) -> data.Split:
  """train + valid + test, sorted by utterance id."""
  parts = [dataset.train, dataset.valid, dataset.test]
  order = np.argsort(np.concatenate([p.utt_id for p in parts]))
  merged = {f: np.concatenate([getattr(p, f) for p in parts])[order]
            for f in ("label", "available", "utt_id", "group_id", "speaker",
                      "position", "session")}
  merged["features"] = {m: np.concatenate([p.features[m] for p in parts])[
      order] for m in schema.MODALITIES}
  return data.Split(**merged)


def _assert_rows_equal(loaded: data.Split, expected: data.Split):
  expected = expected.take(np.argsort(expected.utt_id))
  np.testing.assert_array_equal(loaded.utt_id, expected.utt_id)
  np.testing.assert_array_equal(loaded.available, expected.available)
  for m in schema.MODALITIES:
    np.testing.assert_allclose(loaded.features[m], expected.features[m],
                               rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(loaded.label, expected.label, rtol=1e-6)
  for f in ("group_id", "speaker", "position", "session"):
    np.testing.assert_array_equal(getattr(loaded, f), getattr(expected, f))


def _assert_same_labels(pickle_path: str, expected: label_pickle.Labels,
                        dataset: str):
  got = label_pickle.read(pickle_path, dataset)
  for f in ("utt_id", "group_id", "position", "label", "speaker", "session",
            "split"):
    np.testing.assert_array_equal(getattr(got, f), getattr(expected, f))


def _convert_real(tmp_path, dataset, real_pickle, features_dir):
  """Converts with the real pickle; checks the manifest; all rows, raw."""
  out = tmp_path / f"prepared_{dataset}"
  assert _convert(out, dataset, real_pickle, features_dir) == 0
  loaded = data.load(out, fold=1 if dataset != "mosi" else None,
                     normalized=False)
  manifest = loaded.manifest
  assert manifest.dims == GCNET_DIMS
  assert manifest.format == "gcnet"
  assert [s["role"] for s in manifest.sources] == [
      "labels", "audio features", "text features", "video features"]
  assert manifest.sources[0]["sha256"] == writer.sha256_source(
      real_pickle, "labels")["sha256"]
  rows = _all_rows(loaded)
  assert 0 < (~rows.available[:, 2]).sum() < len(rows)
  assert not rows.features["video"][~rows.available[:, 2]].any()
  return loaded, rows


def test_round_trip_real_mosi_pickle(shared_data, tmp_path):
  real_pickle = shared_data / MOSI_PICKLE
  labels = label_pickle.read(str(real_pickle), "mosi")
  table = _table("mosi", labels, GCNET_DIMS)
  written_pickle, features_dir = gcnet.write_layout(table, tmp_path / "layout")
  _assert_same_labels(written_pickle, labels, "mosi")
  loaded, rows = _convert_real(tmp_path, "mosi", real_pickle, features_dir)
  assert {s: len(getattr(loaded, s)) for s in schema.SPLITS} == {
      "train": 1284, "valid": 229, "test": 686}
  for s in schema.SPLITS:
    expected = set(labels.utt_id[labels.split == s].tolist())
    assert set(getattr(loaded, s).utt_id.tolist()) == expected
  _assert_rows_equal(rows, table.rows)


def test_round_trip_real_iemocap_pickles(shared_data, tmp_path):
  """Both pickles read one features folder written for the 6-way
  utterances, a superset of the 4-way ones (as in GCNet's dataset folder)."""
  pickles = {f"iemocap{k}": shared_data / IEMOCAP_PICKLE.format(k)
             for k in (4, 6)}
  labels6 = label_pickle.read(str(pickles["iemocap6"]), "iemocap6")
  table6 = _table("iemocap6", labels6, GCNET_DIMS)
  written_pickle, features_dir = gcnet.write_layout(table6, tmp_path / "layout")
  _assert_same_labels(written_pickle, labels6, "iemocap6")
  row_of = {u: i for i, u in enumerate(table6.rows.utt_id.tolist())}
  for dataset, real_pickle in pickles.items():
    labels = label_pickle.read(str(real_pickle), dataset)
    source = table6.rows.take(np.array([row_of[u] for u in labels.utt_id]))
    expected = utterance_rows.make_rows(
        utt_id=labels.utt_id, group_id=labels.group_id,
        position=labels.position, label=labels.label,
        features=source.features, available=source.available,
        speaker=labels.speaker, session=labels.session)
    loaded, rows = _convert_real(tmp_path, dataset, real_pickle, features_dir)
    assert loaded.manifest.splits[schema.ALL_SPLIT]["count"] == len(expected)
    assert set(loaded.test.session.tolist()) == {1}
    assert len(loaded.test) == (labels.session == 1).sum()
    _assert_rows_equal(rows, expected)
    assert len(rows) == IEMOCAP_COUNTS[dataset]
    if dataset == "iemocap4":
      assert dict(zip(*np.unique(rows.session, return_counts=True))) == (
          IEMOCAP4_SESSIONS)


def test_time_series_features_are_averaged_over_time(tiny, tmp_path):
  table, pickle_path, features_dir = tiny
  utt = table.rows.utt_id[0]
  series = np.random.default_rng(1).standard_normal((7, 1, 3))
  np.save(os.path.join(features_dir, "wav2vec-large-c-UTT", utt + ".npy"),
          series)
  out = tmp_path / "prepared"
  assert _convert(out, "mosi", pickle_path, features_dir) == 0
  rows = _all_rows(data.load(out, normalized=False))
  i = list(rows.utt_id).index(utt)
  np.testing.assert_allclose(rows.features["audio"][i],
                             series[:, 0].mean(0), rtol=1e-6)


def test_video_file_and_empty_folder(tiny, tmp_path):
  table, pickle_path, features_dir = tiny
  video = os.path.join(features_dir, "manet_UTT")
  as_file, empty = table.rows.utt_id[1], table.rows.utt_id[2]
  vector = np.arange(5, dtype=np.float32) + 1
  shutil.rmtree(os.path.join(video, as_file))
  np.save(os.path.join(video, as_file + ".npy"), vector[None])
  shutil.rmtree(os.path.join(video, empty))
  os.mkdir(os.path.join(video, empty))
  out = tmp_path / "prepared"
  assert _convert(out, "mosi", pickle_path, features_dir) == 0
  rows = _all_rows(data.load(out, normalized=False))
  ids = list(rows.utt_id)
  np.testing.assert_array_equal(rows.features["video"][ids.index(as_file)],
                                vector)
  assert not rows.available[ids.index(empty), 2]
  assert rows.available[:, :2].all() and rows.available[:, 2].sum() == 8


def test_iemocap_uses_own_speaker_faces(tmp_path):
  table = _table("iemocap4", _tiny_labels("iemocap4"), TINY_DIMS,
                 video_absent=0)
  pickle_path, features_dir = gcnet.write_layout(table, tmp_path / "layout")
  video = os.path.join(features_dir, "manet_UTT")
  ids, speakers = table.rows.utt_id, table.rows.speaker
  os.remove(os.path.join(video, ids[0], f"compress_{speakers[0]}.npy"))
  np.save(os.path.join(video, ids[1], f"compress_{speakers[1]}.npy"),
          np.zeros(5, np.float32))
  for f in os.listdir(os.path.join(video, ids[2])):
    os.remove(os.path.join(video, ids[2], f))
  out = tmp_path / "prepared"
  assert _convert(out, "iemocap4", pickle_path, features_dir) == 0
  loaded = data.load(out, fold=1, normalized=False)
  assert any("all-zero" in note for note in loaded.manifest.notes)
  expected = table.rows
  expected.available[:3, 2] = False
  expected.features["video"][:3] = 0
  _assert_rows_equal(_all_rows(loaded), expected)


def _remove_labels(_, argv):
  argv["labels"] = None
  return "command line", "--labels"


def _remove_features_dir(_, argv):
  argv["features_dir"] = None
  return "command line", "--features_dir"


def _missing_folder(table, argv):
  path = os.path.join(argv["features_dir"], "manet_UTT")
  shutil.rmtree(path)
  return path, "video"


def _missing_file(table, argv):
  path = os.path.join(argv["features_dir"], "wav2vec-large-c-UTT",
                      table.rows.utt_id[4] + ".npy")
  os.remove(path)
  return path, "audio"


def _wrong_dimension(table, argv):
  path = os.path.join(argv["features_dir"], "deberta-large-4-UTT",
                      table.rows.utt_id[0] + ".npy")
  np.save(path, np.ones(TINY_DIMS["text"] + 1, np.float32))
  return path, "text"


def _nan(table, argv):
  path = os.path.join(argv["features_dir"], "wav2vec-large-c-UTT",
                      table.rows.utt_id[3] + ".npy")
  np.save(path, np.full(TINY_DIMS["audio"], np.nan, np.float32))
  return path, "audio"


def _unreadable(table, argv):
  path = os.path.join(argv["features_dir"], "deberta-large-4-UTT",
                      table.rows.utt_id[5] + ".npy")
  with open(path, "wb") as f:
    f.write(b"not a numpy file")
  return path, "text"


def _frames_disagree(table, argv):
  path = os.path.join(argv["features_dir"], "manet_UTT",
                      table.rows.utt_id[2], "frame_001.npy")
  np.save(path, np.ones(TINY_DIMS["video"] + 2, np.float32))
  return path, "video"


@pytest.mark.parametrize("breakage", [
    _remove_labels, _remove_features_dir, _missing_folder, _missing_file,
    _wrong_dimension, _nan, _unreadable, _frames_disagree,
], ids=lambda f: f.__name__.lstrip("_"))
def test_bad_input_fails_with_one_line(tiny, tmp_path, capsys, breakage):
  table, pickle_path, features_dir = tiny
  argv = {"labels": pickle_path, "features_dir": features_dir}
  file, field = breakage(table, argv)
  out = tmp_path / "prepared"
  capsys.readouterr()
  assert _convert(out, "mosi", argv["labels"], argv["features_dir"]) == 2
  cli.assert_failed_cleanly(capsys, out, file, field)


def test_nan_policy_zero_marks_absent(tiny, tmp_path, capsys):
  table, pickle_path, features_dir = tiny
  utt = table.rows.utt_id[3]
  bad = np.ones(TINY_DIMS["audio"], np.float32)
  bad[1] = np.inf
  np.save(os.path.join(features_dir, "wav2vec-large-c-UTT", utt + ".npy"), bad)
  out = tmp_path / "prepared"
  assert _convert(out, "mosi", pickle_path, features_dir,
                  "--nan_policy", "zero") == 0
  assert "--nan_policy zero" in capsys.readouterr().out
  loaded = data.load(out, normalized=False)
  assert any("audio" in n and "--nan_policy zero" in n
             for n in loaded.manifest.notes)
  rows = _all_rows(loaded)
  i = list(rows.utt_id).index(utt)
  assert not rows.available[i, 0] and not rows.features["audio"][i].any()
  assert rows.available[:, 0].sum() == len(rows) - 1
