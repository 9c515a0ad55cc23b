"""data_prep/formats/npz.py: synthetic files and the real MOSI .npz, through the CLI."""

import json

import numpy as np
import pytest

from data_prep import convert
from data_prep import inspect
from mcur_jax import data
from mcur_jax import npz_columns
from mcur_jax import schema
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
  line = cli.assert_failed_cleanly(capsys, tmp_path / "bad", path, "text")
  assert line.endswith("; see --nan_policy)")
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
    (_drop("group_id"), "group_id"),
    (_drop("split"), "split"),
    (_put("video", lambda c: c["video"][:-1]), "video"),
    (_put("text", lambda c: c["text"][:, 0]), "text"),
    (_put("label", lambda c: c["label"].astype(str)), "label"),
    (_put("label", lambda c: c["label"][:, None]), "label"),
    (_put("label", lambda c: c["label"] * 2), "label"),
    (_put("label", lambda c: np.full(len(c["label"]), -4.0)), "label"),
    (_put("group_id", lambda c: c["group_id"][:3]), "group_id"),
    (_put("split", lambda c: np.full(len(c["label"]), 3)), "split"),
    (_put("position", lambda c: -np.ones(len(c["label"]), int)), "position"),
    # Without utt_id the ids are derived from group and position: a repeated
    # position is named as such, not as a repeated id.
    (_put("position", lambda c: np.zeros(len(c["label"]), int)), "position"),
    # Positions order a group for the context: none may repeat in a group.
    (lambda c: c.update(utt_id=np.arange(len(c["label"])).astype(str),
                        position=np.arange(len(c["label"])) // 2 % 2),
     "position"),
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


def test_missing_modality_key_means_the_dataset_has_none(tmp_path, capsys):
  columns = _columns()
  del columns["video"]
  n = len(columns["label"])
  columns["available_video"] = np.zeros(n, bool)  # consistent: never present
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 0
  note = "video: no 'video' key in data.npz: the dataset has no video"
  assert f"note: {note}" in capsys.readouterr().out
  dataset = data.load(tmp_path / "out")
  assert dataset.manifest.dims == {**DIMS, "video": 0}
  assert note in dataset.manifest.notes
  for s in SPLITS:
    part = getattr(dataset, s)
    assert part.features["video"].shape == (len(part), 0)
    assert not part.available[:, 2].any() and part.available[:, :2].all()
  assert dataset.manifest.normalization["train"]["video"] == {"mean": [],
                                                              "std": []}
  assert inspect.main([str(tmp_path / "out")]) == 0
  out = capsys.readouterr().out
  assert "dims: audio 7, text 12, video 0" in out
  assert "available: audio 12, text 12, video 0" in out
  assert f"OK: {n} records verified" in out


def test_available_without_a_feature_key_is_an_error(tmp_path, capsys):
  columns = _columns()
  del columns["text"]
  columns["available_text"] = np.arange(len(columns["label"])) % 2
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", path,
                                   "available_text")
  assert "18 utterances marked available" in line


def test_a_file_without_any_modality_is_an_error(tmp_path, capsys):
  columns = _columns()
  for m in DIMS:
    del columns[m]
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path,
                            "audio/text/video")


def test_a_mapped_modality_key_that_is_missing_stays_an_error(tmp_path,
                                                              capsys):
  path = _save(tmp_path, _columns())
  assert _convert(path, tmp_path / "out", "--key", "video=vid") == 2
  cli.assert_failed_cleanly(capsys, tmp_path / "out", path,
                            "vid (--key video=vid)")


def _iemocap_columns(n_groups=10, per_group=4):
  """An IEMOCAP-like file: 4 classes, sessions 1..5, no split key."""
  columns = _columns(n_groups=n_groups, per_group=per_group)
  n = len(columns["label"])
  del columns["split"]
  columns.update(session=np.repeat(np.arange(n_groups) % 5 + 1, per_group),
                 label=np.arange(n) % 4)
  return columns


def test_iemocap_without_a_split_gets_session_folds(tmp_path):
  path = _save(tmp_path, _iemocap_columns())
  assert _convert(path, tmp_path / "out", dataset="iemocap6") == 0
  dataset = data.load(tmp_path / "out", fold=3, normalized=False)
  manifest = dataset.manifest
  assert manifest.folds["key"] == "session"
  assert manifest.folds["values"] == [1, 2, 3, 4, 5]
  assert list(manifest.splits) == ["all"]
  assert "leave-one-session-out" in manifest.split_source
  assert set(dataset.test.session) == {3}
  assert sum(len(getattr(dataset, s)) for s in SPLITS) == 40


@pytest.mark.parametrize("edit,message", [
    (lambda c: c.update(session=c["session"] - 1),
     "session 0: sessions are the folds, numbered from 1"),
    (lambda c: c.update(session=np.arange(len(c["label"])) % 5 + 1),
     "group 'vid0' is in sessions 1 and 2"),
    # One group per session: a fold's 2 training groups give round(0.2 x 2)
    # = 0 validation groups.
    (lambda c: [c.__setitem__(k, v[:12]) for k, v in list(c.items())]
     and c.update(session=np.repeat([1, 2, 3], 4)),
     "fold 1: no valid utterances (from the 2 groups outside session 1"),
])
def test_session_folds_that_cannot_be_made_are_errors(tmp_path, capsys, edit,
                                                       message):
  """Sessions are fold numbers (fold 0 means all), a group lies in one
  session, and every fold has training, validation and test utterances."""
  columns = _iemocap_columns()
  edit(columns)
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out", dataset="iemocap4") == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "session")
  assert message in line


@pytest.mark.parametrize("content,field,message", [
    ({"train": [0, 1, 2, 3, 4], "valid": [5, 6], "test": [7, 8, 1]}, "test",
     "group '1' is also in 'train'"),
    ({"train": [[0, 1, 2, 3, 4]], "valid": [5, 6], "test": [7, 8]}, "train",
     "[0, 1, 2, 3, 4] is not a group id"),
    ({"train": [0, 1, 2, 3, 4], "dev": [5, 6], "test": [7, 8]}, "split_file",
     "unknown split names ['dev'] (known: train, valid, test)"),
])
def test_bad_split_file(tmp_path, capsys, content, field, message):
  """Integer group ids are the same groups as their strings (a group listed
  twice is an error either way); an entry that is no id is an error."""
  columns = _columns()
  columns["group_id"] = np.repeat(np.arange(9), 4)
  del columns["split"]
  path = _save(tmp_path, columns)
  split_file = tmp_path / "split.json"
  split_file.write_text(json.dumps(content))
  assert _convert(path, tmp_path / "out", "--split_file",
                  str(split_file)) == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", split_file,
                                   field)
  assert message in line


def test_a_class_without_utterances_is_noted(tmp_path, capsys):
  """iemocap4 labels that never use a class (a 3-class set converted as
  IEMOCAP-4, say) are converted, with a note naming the class."""
  columns = _iemocap_columns()
  columns["label"] = columns["label"] % 3
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out", dataset="iemocap4") == 0
  note = ("label: no utterance of class angry (of happy, sad, neutral, "
          "angry): check the label key (--key label=...) and the dataset's "
          "classes")
  assert note in schema.Manifest.load(tmp_path / "out").notes
  assert f"note: {note}" in capsys.readouterr().out


def test_iemocap_without_split_or_session_is_an_error(tmp_path, capsys):
  """Without a split and a session column the error lists the file's keys
  and both ways out."""
  columns = _iemocap_columns()
  del columns["session"]
  columns["part"] = np.repeat(["train", "valid", "test", "train"], 10)
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out", dataset="iemocap4") == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "session")
  assert "part" in line and "--key split=KEY" in line


def test_an_unknown_split_name_is_named(tmp_path, capsys):
  """A split column saying "dev" is named as unknown (it used to be
  reported as "no 'valid' utterances"), as a plain string, with its row
  count; so is a typo on one row ("tset"), once reported as its group
  lying in two splits."""
  columns = _columns()
  columns["split"][columns["split"] == "valid"] = "dev"
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "split")
  assert line.endswith("unknown split names ['dev'] (known: train, valid, "
                       "test; rows: {'dev': 12})")
  columns = _columns()
  columns["split"][3] = "tset"
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "split")
  assert line.endswith("unknown split names ['tset'] (known: train, valid, "
                       "test; rows: {'tset': 1})")


@pytest.mark.parametrize("low,high,sign", [(0, 1, "positive"),
                                            (-3, -0.5, "negative")])
def test_regression_labels_of_one_sign_are_refused(tmp_path, capsys, low,
                                                   high, sign):
  """Scores of one sign (a [0, 1] valence, say) would make the sign metrics,
  the headline among them, 1.0 whatever the model does: refused, with how
  to centre them."""
  columns = _columns()
  columns["label"] = np.linspace(low, high, len(columns["label"]),
                                 dtype=np.float32)
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "label")
  assert f"non-zero labels are {sign}" in line and "label - 0.5" in line


def test_unlabelled_utterances_are_left_out_and_positions_renumbered(
    tmp_path, capsys):
  columns = _iemocap_columns(n_groups=10, per_group=6)
  n = len(columns["label"])
  # Positions in the file run backwards within each group; -1 drops rows
  # 0, 3 of group 0, every row of group 1 but one, and a few more.
  columns["position"] = np.tile(np.arange(6)[::-1], 10) + 2
  columns["utt_id"] = np.array([f"u{i}" for i in range(n)])
  unlabelled = np.zeros(n, bool)
  unlabelled[[0, 3, 6, 7, 8, 9, 10, 20, 59]] = True
  columns["label"] = np.where(unlabelled, -1, columns["label"])
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out", dataset="iemocap4") == 0
  note = ("label: 9 utterances with label -1 (not labelled for this task) "
          "left out")
  assert f"note: {note}" in capsys.readouterr().out
  manifest = schema.Manifest.load(tmp_path / "out")
  assert manifest.notes == [note]
  rows = data.read_split(tmp_path / "out", manifest, "all")
  assert len(rows) == n - 9
  assert set(rows.utt_id) == {f"u{i}" for i in np.flatnonzero(~unlabelled)}
  for g in set(columns["group_id"]):
    here = rows.group_id == g
    # 0..k-1, in the order of the file's positions.
    by_new_position = rows.utt_id[here][np.argsort(rows.position[here])]
    kept = np.flatnonzero((columns["group_id"] == g) & ~unlabelled)
    by_old_position = [f"u{i}" for i in
                       kept[np.argsort(columns["position"][kept])]]
    assert sorted(rows.position[here]) == list(range(len(kept)))
    assert by_new_position.tolist() == by_old_position
  i = {u: k for k, u in enumerate(rows.utt_id)}["u11"]
  assert rows.label[i] == columns["label"][11]


def test_minus_one_is_a_score_in_a_regression_dataset(tmp_path, capsys):
  columns = _columns()
  columns["label"][::5] = -1.0
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 0
  assert "left out" not in capsys.readouterr().out
  dataset = data.load(tmp_path / "out", normalized=False)
  rows = _all_rows(dataset)
  assert len(rows) == len(columns["label"])
  assert not dataset.manifest.notes
  for i, g in enumerate(columns["group_id"]):
    _, part, j = rows[f"{g}_{i % 4}"]
    assert part.label[j] == columns["label"][i]


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


@pytest.mark.parametrize("content,message", [
    (b"not a zip file", "not an .npz file (not a zip archive)"),
    (b"group_id,label\nvid0,1.5\n", "not an .npz file (not a zip archive)"),
    (None, "a single .npy array, not an .npz archive of named arrays"),
    ("cut", "a damaged .npz (a zip archive cut short: no directory at its "
     "end)")])
def test_not_an_npz(tmp_path, capsys, content, message):
  """A file that is not a zip archive (a CSV, say) is named so, not as the
  pickled data `np.load` takes it for; a zip cut short is named damaged."""
  path = tmp_path / "x.npz"
  if content is None:  # a lone .npy array under an .npz name
    with open(path, "wb") as f:
      np.save(f, np.zeros(3))
  elif content == "cut":
    whole = _save(tmp_path, _columns(), "whole.npz").read_bytes()
    path.write_bytes(whole[:len(whole) // 2])
  else:
    path.write_bytes(content)
  assert _convert(path, tmp_path / "out") == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "--input")
  assert line == f"error: {path}: --input: {message}"


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


def _own_columns(n_groups=12, per_group=5):
  """A dataset of one's own: text and video only, string class labels (''
  = not labelled), sessions 1-3 and no split key."""
  columns = _columns(n_groups=n_groups, per_group=per_group)
  n = len(columns["label"])
  del columns["split"], columns["audio"]
  names = np.array(["neg", "neu", "pos", ""])
  columns.update(label=names[np.arange(n) % 4],
                 session=np.repeat(np.arange(n_groups) % 3 + 1, per_group))
  return columns


def test_a_dataset_of_ones_own_takes_its_classes(tmp_path):
  """--dataset NAME --classes a,b,c: class names as labels become their
  indices, '' is left out as not labelled, and a file without a split
  key but with sessions gets leave-one-session-out folds."""
  columns = _own_columns()
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out", "--classes", "neg,neu,pos",
                  dataset="own3") == 0
  manifest = schema.Manifest.load(tmp_path / "out")
  assert (manifest.dataset, manifest.task, manifest.classes) == (
      "own3", "classification", ["neg", "neu", "pos"])
  assert manifest.folds["values"] == [1, 2, 3]
  assert manifest.dims["audio"] == 0
  dataset = data.load(tmp_path / "out", fold=2, normalized=False)
  kept = columns["label"] != ""
  position = np.tile(np.arange(5), 12).astype(str)  # Row order in a group.
  by_id = dict(zip(np.char.add(np.char.add(columns["group_id"], "_"),
                               position), columns["label"]))
  for split in SPLITS:
    part = getattr(dataset, split)
    assert all(["neg", "neu", "pos"][int(y)] == by_id[u]
               for u, y in zip(part.utt_id, part.label))
  assert sum(len(getattr(dataset, s)) for s in SPLITS) == kept.sum()


def test_a_regression_dataset_of_ones_own(tmp_path):
  path = _save(tmp_path, _columns())
  assert _convert(path, tmp_path / "out", "--task", "regression",
                  dataset="valence") == 0
  manifest = schema.Manifest.load(tmp_path / "out")
  assert (manifest.task, manifest.classes) == ("regression", None)


@pytest.mark.parametrize("flags,dataset,field,message", [
    ((), "own3", "--dataset", "unknown 'own3' (known: mosi, mosei, "
     "iemocap4, iemocap6); a dataset of your own (--format npz) needs "
     "--classes NAME,NAME,... (classification) or --task regression"),
    (("--task", "classification"), "own3", "--classes", "missing"),
    (("--classes", "neg"), "own3", "--classes", "give two or more"),
    (("--classes", "a,b,a"), "own3", "--classes", "give two or more"),
    (("--task", "regression", "--classes", "a,b"), "own3", "--classes",
     "given with --task regression"),
    (("--classes", "a,b,c,d"), "iemocap4", "--classes", "iemocap4 is "
     "classification over happy,sad,neutral,angry; a dataset of your own "
     "needs a name of its own"),
    (("--task", "classification"), "mosi", "--task", "mosi is regression"),
    (("--classes", "neg,neu,pos"), "own-3", "--dataset", "'own-3' is not a TFDS "
     "dataset name"),
])
def test_a_dataset_of_ones_own_needs_its_task(tmp_path, capsys, flags,
                                               dataset, field, message):
  path = _save(tmp_path, _own_columns())
  assert _convert(path, tmp_path / "out", *flags, dataset=dataset) == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", "command line",
                                   field)
  assert message in line


def test_an_unknown_class_name_is_named(tmp_path, capsys):
  columns = _own_columns()
  columns["label"][3] = "Pos"
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out", "--classes", "neg,neu,pos",
                  dataset="own3") == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", path, "label")
  assert line.endswith("1 label(s) not among the classes neg,neu,pos: 'Pos' "
                       "('' = not labelled)")


def test_classes_are_for_npz_files_only(tmp_path, capsys):
  assert convert.main(["--format", "mmsa", "--dataset", "own3", "--classes",
                       "a,b", "--input", str(tmp_path / "x.pkl"), "--out",
                       str(tmp_path / "out")]) == 2
  line = cli.assert_failed_cleanly(capsys, tmp_path / "out", "command line",
                                   "--classes")
  assert "--format npz" in line


def test_keys_no_field_reads_are_named(tmp_path, capsys):
  """A misspelt key would silently be no column (`available_audi`: every
  audio row taken as present); the conversion succeeds and a note, printed
  and kept in the manifest, names it."""
  columns = _columns()
  columns["available_audi"] = np.zeros(len(columns["label"]), np.int64)
  path = _save(tmp_path, columns)
  assert _convert(path, tmp_path / "out") == 0
  note = (f"data.npz: keys not read: available_audi (the fields are "
          f"{', '.join(npz_columns.FIELDS)}; --key FIELD=KEY maps one)")
  assert f"note: {note}" in capsys.readouterr().out
  assert schema.Manifest.load(tmp_path / "out").notes == [note]


def test_integral_floats_are_integers(tmp_path, capsys):
  """Integer columns read from pandas arrive as floats (3.0): those are
  the integers they hold; a fraction, or NaN, is refused naming the key."""
  columns = _columns()
  n = len(columns["label"])
  columns["position"] = np.tile(np.arange(4), n // 4)[::-1].copy()
  columns["available_video"] = (np.arange(n) % 3 > 0).astype(np.int64)
  assert _convert(_save(tmp_path, columns), tmp_path / "ints") == 0
  floats = {**columns, "position": columns["position"].astype(np.float64),
            "available_video": columns["available_video"].astype(np.float32)}
  assert _convert(_save(tmp_path, floats, "f.npz"), tmp_path / "floats") == 0
  ints, from_floats = (_all_rows(data.load(tmp_path / d, normalized=False))
                       for d in ("ints", "floats"))
  for utt, (split, part, j) in ints.items():
    _, other, k = from_floats[utt]
    assert other.position[k] == part.position[j]
    assert (other.available[k] == part.available[j]).all()
  for bad in (0.5, np.nan):
    floats["position"][5] = bad
    assert _convert(_save(tmp_path, floats, "f.npz"), tmp_path / "x") == 2
    line = cli.assert_failed_cleanly(capsys, tmp_path / "x",
                                     tmp_path / "f.npz", "position")
    assert "float64 array of shape (36,), expected 1-D integers" in line
