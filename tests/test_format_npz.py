"""data_prep/formats/npz.py: synthetic files and the real MOSI .npz, through the CLI."""

import json

import numpy as np
import pytest

from data_prep import convert
from mcur_jax import data
from tests import cli

DIMS = {"audio": 7, "text": 12, "video": 9}
SPLITS = ("train", "valid", "test")


def _columns(n_groups=9, per_group=4, seed=0):
  """A valid npz content: groups of utterances, split by group."""
  rng = np.random.default_rng(seed)
  n = n_groups * per_group
  group = np.repeat([f"vid{g}" for g in range(n_groups)], per_group)
  columns = {m: rng.normal(size=(n, d)).astype(np.float32)
             for m, d in DIMS.items()}
  columns.update(
      label=rng.uniform(-3, 3, n).astype(np.float32), group_id=group,
      split=np.repeat([SPLITS[g % 3] for g in range(n_groups)], per_group))
  return columns


def _save(tmp_path, columns, name="data.npz"):
  path = tmp_path / name
  np.savez(path, **columns)
  return path


def _convert(path, out, *extra, dataset="mosi"):
  return convert.main(["--format", "npz", "--dataset", dataset,
                       "--input", str(path), "--out", str(out), *extra])


def _all_rows(dataset):
  """utt_id -> (split name, Split, row)."""
  return {u: (s, getattr(dataset, s), i) for s in SPLITS
          for i, u in enumerate(getattr(dataset, s).utt_id)}


def test_minimal_file_and_defaults(tmp_path):
  columns = _columns()
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 0
  dataset = data.load(tmp_path / "out", normalized=False)
  rows = _all_rows(dataset)
  assert len(rows) == len(columns["label"])
  for i, g in enumerate(columns["group_id"]):
    utt = f"{g}_{i % 4}"  # default utt_id and position: row order in group
    split, part, j = rows[utt]
    assert split == columns["split"][i]
    assert part.group_id[j] == g and part.position[j] == i % 4
    assert part.speaker[j] == "" and part.session[j] == 0
    assert part.available[j].all()
    assert part.label[j] == columns["label"][i]
    for m in DIMS:
      np.testing.assert_array_equal(part.features[m][j], columns[m][i])
  assert dataset.manifest.dims == DIMS
  assert dataset.manifest.format == "npz"


def test_all_optional_keys_and_int_splits(tmp_path):
  columns = _columns()
  n = len(columns["label"])
  rng = np.random.default_rng(1)
  columns.update(
      utt_id=np.array([f"u{i}" for i in range(n)]),
      position=np.arange(n)[::-1] % 4, speaker=np.where(np.arange(n) % 2,
                                                        "F", "M"),
      session=np.arange(n) // 5 + 1,
      split=np.array([SPLITS.index(s) for s in columns["split"]], np.int8),
      available_audio=rng.random(n) < 0.7,
      available_text=np.ones(n, np.int64),
      available_video=rng.random(n) < 0.5)
  columns["video"][~columns["available_video"]] = np.nan  # ignored: absent
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 0
  rows = _all_rows(data.load(tmp_path / "out", normalized=False))
  for i in range(n):
    split, part, j = rows[f"u{i}"]
    assert split == SPLITS[columns["split"][i]]
    assert part.position[j] == columns["position"][i]
    assert part.speaker[j] == columns["speaker"][i]
    assert part.session[j] == columns["session"][i]
    for k, m in enumerate(DIMS):
      present = bool(columns[f"available_{m}"][i])
      assert part.available[j, k] == present
      want = columns[m][i] if present else np.zeros(DIMS[m])
      np.testing.assert_array_equal(part.features[m][j], want)


def test_key_mapping_and_split_file(tmp_path):
  columns = _columns()
  columns["score"] = columns.pop("label")
  columns["video_id"] = columns.pop("group_id")
  del columns["split"]
  path = _save(tmp_path, columns)
  split_file = tmp_path / "split.json"
  groups = sorted(set(columns["video_id"]))
  split_file.write_text(json.dumps(
      {"train": groups[:5], "valid": groups[5:7], "test": groups[7:]}))
  assert _convert(path, tmp_path / "out", "--key", "label=score",
                  "--key", "group_id=video_id",
                  "--split_file", str(split_file)) == 0
  dataset = data.load(tmp_path / "out", normalized=False)
  assert [len(getattr(dataset, s)) for s in SPLITS] == [20, 8, 8]
  assert set(dataset.valid.group_id) == set(groups[5:7])
  assert "split.json" in dataset.manifest.split_source


def test_session_folds(tmp_path):
  columns = _columns(n_groups=10)
  n = len(columns["label"])
  columns.update(split=np.full(n, "all"),
                 session=np.repeat(np.arange(10) % 5 + 1, 4),
                 label=np.arange(n) % 4)
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out", dataset="iemocap4") == 0
  dataset = data.load(tmp_path / "out", fold=2, normalized=False)
  assert set(dataset.test.session) == {2}
  assert dataset.manifest.task == "classification"


def test_nan_policy_zero(tmp_path, capsys):
  columns = _columns()
  columns["text"][5, 3] = np.inf
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "bad") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "bad", path, "text")
  assert _convert(path, tmp_path / "out", "--nan_policy", "zero") == 0
  assert "text: 1 vectors with NaN/inf" in capsys.readouterr().out
  _, part, j = _all_rows(data.load(tmp_path / "out", normalized=False))[
      "vid1_1"]
  assert part.available[j].tolist() == [True, False, True]


def _drop(key):
  return lambda c: c.pop(key)


def _put(key, value):
  return lambda c: c.__setitem__(key, value(c))


@pytest.mark.parametrize("edit,field", [
    (_drop("label"), "label"),
    (_drop("audio"), "audio"),
    (_drop("group_id"), "group_id"),
    (_drop("split"), "split"),
    (_put("video", lambda c: c["video"][:-1]), "video"),
    (_put("text", lambda c: c["text"][:, 0]), "text"),
    (_put("label", lambda c: c["label"].astype(str)), "label"),
    (_put("label", lambda c: c["label"][:, None]), "label"),
    (_put("label", lambda c: c["label"] * 2), "label"),
    (_put("group_id", lambda c: c["group_id"][:3]), "group_id"),
    (_put("split", lambda c: np.full(len(c["label"]), 3)), "split"),
    (_put("position", lambda c: -np.ones(len(c["label"]), int)), "position"),
    (_put("position", lambda c: np.zeros(len(c["label"]), int)), "utt_id"),
    (_put("available_text", lambda c: np.full(len(c["label"]), 2)),
     "available_text"),
    (_put("audio", lambda c: np.where(c["audio"] > 2, np.nan, c["audio"])),
     "audio"),
])
def test_bad_file(tmp_path, capsys, edit, field):
  columns = _columns()
  edit(columns)
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path, field)


def test_mapped_key_missing(tmp_path, capsys):
  path = _save(tmp_path, _columns())
  assert _convert(path, tmp_path / "out", "--key", "label=label_reg") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "label_reg (--key label=label_reg)")


@pytest.mark.parametrize("keys", [["loudness=audio"], ["label"], ["label="],
                                  ["label=a", "label=b"]])
def test_bad_key_argument(tmp_path, capsys, keys):
  path = _save(tmp_path, _columns())
  args = [a for k in keys for a in ("--key", k)]
  assert _convert(path, tmp_path / "out", *args) == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", "command line", "--key")


@pytest.mark.parametrize("content", [b"not a zip file", None])
def test_not_an_npz(tmp_path, capsys, content):
  path = tmp_path / "x.npz"
  if content is None:  # a lone .npy array under an .npz name
    with open(path, "wb") as f:
      np.save(f, np.zeros(3))
  else:
    path.write_bytes(content)
  assert _convert(path, tmp_path / "out") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "--input")


def test_object_array(tmp_path, capsys):
  columns = _columns()
  columns["group_id"] = columns["group_id"].astype(object)
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "group_id")


def test_real_mosi_file(tmp_path, shared_data):
  path = shared_data / "CMUMOSI/mosi_poria2017_utterance_features.npz"
  out = tmp_path / "mosi"
  assert _convert(path, out, "--key", "label=label_reg",
                  "--key", "group_id=video_id", "--key", "position=utt_pos",
                  "--split_file",
                  str(shared_data / "CMUMOSI/poria_split.json")) == 0
  dataset = data.load(out, normalized=False)
  assert [len(getattr(dataset, s)) for s in SPLITS] == [1447, 241, 511]
  assert dataset.manifest.dims == {"audio": 73, "text": 100, "video": 100}
  with np.load(path) as archive:
    raw = dict(archive)
  rows = _all_rows(dataset)
  assert len(rows) == len(raw["utt_id"]) == 2199
  for i, utt in enumerate(raw["utt_id"]):
    _, part, j = rows[utt]
    assert part.group_id[j] == raw["video_id"][i]
    assert part.position[j] == raw["utt_pos"][i]
    assert part.label[j] == raw["label_reg"][i]
    assert part.available[j].all()
    for m in DIMS:
      np.testing.assert_array_equal(part.features[m][j], raw[m][i])
