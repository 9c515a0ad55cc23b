"""data_prep/formats/mmsa.py: synthetic MMSA pickles of both layouts, through the CLI."""

import pickle

import numpy as np
import pytest

from data_prep import convert
from mcur_jax import data
from tests import cli

T = 50
DIMS = {"text": 768, "audio": 5, "vision": 20}  # BERT MOSI
# Frames of the unaligned version (MOSI's unaligned_50.pkl); text keeps T.
UNALIGNED_FRAMES = {"audio": 375, "vision": 500}
# Videos per split and clips per video: a few dozen utterances in all.
VIDEOS = {"train": 4, "valid": 2, "test": 2}
CLIPS = 4


def _split(rng, split, aligned):
  """One split of an MMSA pickle, padded to T frames the way MMSA pads."""
  ids = [f"{split}vid{v}$_${c}" for v in range(VIDEOS[split])
         for c in range(CLIPS, 0, -1)]  # clips out of order on purpose
  n = len(ids)
  words = rng.integers(3, T + 1, n)
  words[1] = 0  # no valid text token: text absent
  # BERT features are not zero at padding tokens: only the mask tells.
  text = rng.normal(size=(n, T, DIMS["text"])).astype(np.float32)
  text_bert = np.zeros((n, 3, T), np.float32)
  text_bert[:, 0] = rng.integers(100, 30000, (n, T))
  text_bert[:, 1] = np.arange(T) < words[:, None]
  part = {"id": np.array(ids, object), "text": text, "text_bert": text_bert,
          "raw_text": np.array(["some words"] * n, object),
          "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
          "classification_labels": np.zeros(n, np.float32)}
  for key in ("audio", "vision"):
    t = T if aligned else UNALIGNED_FRAMES[key]
    lengths = words if aligned else rng.integers(1, t + 1, n)
    if not aligned:
      lengths[2] = 0  # no valid frame: modality absent
      lengths[3] = t // 2
    frames = rng.normal(size=(n, t, DIMS[key])).astype(np.float32)
    frames[np.arange(t) >= lengths[:, None]] = 0
    part[key] = frames
    if not aligned:
      part[f"{key}_lengths"] = lengths
  # -inf in audio (log features of silence), as in the real pickles.
  part["audio"][0, 0, :2] = -np.inf
  if not aligned:
    part["audio"][3, -1] = -np.inf  # in the padding, beyond audio_lengths
  return part


def _pickle(tmp_path, aligned=True, edit=None, name="data.pkl"):
  rng = np.random.default_rng(0 if aligned else 1)
  raw = {s: _split(rng, s, aligned) for s in VIDEOS}
  if edit:
    edit(raw)
  path = tmp_path / name
  with open(path, "wb") as f:
    pickle.dump(raw, f)
  return path, raw


def _convert(path, out, *extra):
  return convert.main(["--format", "mmsa", "--dataset", "mosi",
                       "--input", str(path), "--out", str(out), *extra])


def _by_id(dataset):
  """utt_id -> (split name, Split, row) over the loaded dataset."""
  rows = {}
  for s in ("train", "valid", "test"):
    part = getattr(dataset, s)
    for i, u in enumerate(part.utt_id):
      rows[u] = (s, part, i)
  return rows


def _expected(frames, valid):
  """The plain mean of the valid frames after -inf -> 0 (None if none)."""
  x = np.where(frames == -np.inf, 0, frames).astype(np.float64)
  if valid is None:
    valid = (x != 0).any(1)
  return x[valid].mean(0) if valid.any() else None


@pytest.mark.parametrize("aligned", [True, False])
def test_pooled_values(tmp_path, aligned):
  path, raw = _pickle(tmp_path, aligned)
  assert _convert(path, tmp_path / "out") == 0
  dataset = data.load(tmp_path / "out", normalized=False)
  rows = _by_id(dataset)
  assert len(rows) == sum(len(p["id"]) for p in raw.values())
  modality = {"audio": "audio", "text": "text", "vision": "video"}
  for s, part in raw.items():
    for i, utt in enumerate(part["id"]):
      split, loaded, j = rows[utt]
      assert split == s
      assert loaded.label[j] == pytest.approx(part["regression_labels"][i])
      for key, m in modality.items():
        if key == "text":
          valid = part["text_bert"][i, 1] == 1
        elif aligned:
          valid = None
        else:
          valid = np.arange(UNALIGNED_FRAMES[key]) < part[f"{key}_lengths"][i]
        want = _expected(part[key][i], valid)
        col = ("audio", "text", "video").index(m)
        assert loaded.available[j, col] == (want is not None), (utt, key)
        if want is not None:
          np.testing.assert_allclose(loaded.features[m][j], want, rtol=1e-5,
                                     atol=1e-6, err_msg=f"{utt} {key}")
  assert dataset.manifest.dims == {"audio": 5, "text": 768, "video": 20}
  assert dataset.manifest.task == "regression"
  assert any("-inf values set to 0" in n for n in dataset.manifest.notes)


def test_absent_modalities(tmp_path):
  path, raw = _pickle(tmp_path, aligned=False)
  assert _convert(path, tmp_path / "out") == 0
  rows = _by_id(data.load(tmp_path / "out", normalized=False))
  # Row 1 of each split has no text token, row 2 no audio or vision frame.
  for part in raw.values():
    _, loaded, j = rows[part["id"][1]]
    assert loaded.available[j].tolist() == [True, False, True]
    _, loaded, j = rows[part["id"][2]]
    assert loaded.available[j].tolist() == [False, True, False]
    assert not loaded.features["audio"][j].any()


def test_ids_groups_and_positions(tmp_path):
  def underscore_ids(raw):
    raw["test"]["id"] = np.array([u.replace("$_$", "_")
                                  for u in raw["test"]["id"]])
  path, _ = _pickle(tmp_path, edit=underscore_ids)
  assert _convert(path, tmp_path / "out") == 0
  dataset = data.load(tmp_path / "out", normalized=False)
  train = dataset.train
  i = list(train.utt_id).index("trainvid1$_$3")
  assert train.group_id[i] == "trainvid1" and train.position[i] == 2
  i = list(dataset.test.utt_id).index("testvid0_1")
  assert dataset.test.group_id[i] == "testvid0"
  assert dataset.test.position[i] == 0
  assert dataset.manifest.splits["train"]["groups"] == VIDEOS["train"]


def test_text_key_and_nonzero_text(tmp_path):
  """Without text_bert, text frames that are all zeros are padding."""
  def glove(raw):
    for part in raw.values():
      words = part.pop("text_bert")[:, 1]
      glove = np.random.default_rng(2).normal(size=(len(words), T, 300))
      part["glove"] = np.where(words[..., None] == 1, glove, 0)
  path, raw = _pickle(tmp_path, edit=glove)
  assert _convert(path, tmp_path / "out", "--text_key", "glove") == 0
  dataset = data.load(tmp_path / "out", normalized=False)
  rows = _by_id(dataset)
  assert dataset.manifest.dims["text"] == 300
  for part in raw.values():
    for i, utt in enumerate(part["id"]):
      _, loaded, j = rows[utt]
      want = _expected(part["glove"][i], None)
      assert loaded.available[j, 1] == (want is not None)
      if want is not None:
        np.testing.assert_allclose(loaded.features["text"][j], want, rtol=1e-5)


def test_nan_policy_zero(tmp_path, capsys):
  def nan(raw):
    raw["valid"]["vision"][0, 0, 3] = np.nan
  path, raw = _pickle(tmp_path, edit=nan)
  assert _convert(path, tmp_path / "bad") == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {path}: vision: NaN or inf")
  assert _convert(path, tmp_path / "out", "--nan_policy", "zero") == 0
  assert "vision: 1 vectors with NaN/inf" in capsys.readouterr().out
  rows = _by_id(data.load(tmp_path / "out", normalized=False))
  _, loaded, j = rows[raw["valid"]["id"][0]]
  assert loaded.available[j].tolist() == [True, True, False]


def _delete(split, key=None):
  """An edit removing `raw[split][key]`, or the whole split."""
  def edit(raw):
    if key:
      del raw[split][key]
    else:
      del raw[split]
  return edit


def _set(split, key, change):
  def edit(raw):
    raw[split][key] = change(raw[split][key])
  return edit


def _only_text_bert(raw):
  for part in raw.values():
    del part["text"]


def _duplicate_id(raw):
  raw["train"]["id"][1] = raw["train"]["id"][0]


@pytest.mark.parametrize("edit,field", [
    (_delete("valid"), "valid"),
    (_delete("train", "regression_labels"), "train.regression_labels"),
    (_delete("test", "id"), "test.id"),
    (_delete("train", "audio"), "train.audio"),
    (_set("valid", "vision", lambda x: x[:-1]), "valid.vision"),
    (_set("train", "audio", lambda x: x[:, :, :4]), "valid.audio"),
    (_set("test", "text_bert", lambda x: x[:, :2]), "test.text_bert"),
    (_set("valid", "regression_labels", lambda x: x.astype(str)),
     "valid.regression_labels"),
    (_set("train", "regression_labels", lambda x: x + 3.5), "label"),
    (_set("train", "id", lambda x: np.array(["novideo"] * len(x))),
     "train.id"),
    # A digit that is no decimal digit (int() refuses it).
    (_set("train", "id", lambda x: np.array(["v$_$\u00b2"] * len(x))),
     "train.id"),
    (_duplicate_id, "utt_id"),
    (_only_text_bert, "train.text"),
])
def test_bad_pickle(tmp_path, capsys, edit, field):
  path, _ = _pickle(tmp_path, edit=edit)
  assert _convert(path, tmp_path / "out") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path, field)


@pytest.mark.parametrize("args,field", [
    (["--text_key", "text_bert"], "--text_key"),
    (["--dataset", "iemocap4"], "--dataset"),
])
def test_bad_arguments(tmp_path, capsys, args, field):
  path, _ = _pickle(tmp_path)
  assert _convert(path, tmp_path / "out", *args) == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", "command line", field)


def test_lengths_out_of_range(tmp_path, capsys):
  path, _ = _pickle(tmp_path, aligned=False,
                    edit=_set("test", "vision_lengths",
                              lambda x: x + UNALIGNED_FRAMES["vision"]))
  assert _convert(path, tmp_path / "out") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "test.vision_lengths")


@pytest.mark.parametrize("content,field", [
    ([1, 2, 3], "pickle"),
    ({"train": {}, "valid": {}}, "test"),
    ({"train": {}, "valid": {}, "test": [1]}, "test"),
])
def test_not_an_mmsa_pickle(tmp_path, capsys, content, field):
  path = tmp_path / "x.pkl"
  with open(path, "wb") as f:
    pickle.dump(content, f)
  assert _convert(path, tmp_path / "out") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path, field)


def test_not_a_pickle(tmp_path, capsys):
  path = tmp_path / "x.pkl"
  path.write_bytes(b"not a pickle at all")
  assert _convert(path, tmp_path / "out") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "pickle")
