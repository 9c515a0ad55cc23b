"""Tests of data_prep.synthetic: shapes, determinism and the planted structure."""

import collections
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from data_prep import synthetic
from data_prep import writer
from mcur_jax import data
from mcur_jax import schema

_VIDEO = schema.MODALITIES.index("video")


def _write(tmp_path, like, seed=0, scale=1.0, name=None):
  out = tmp_path / (name or f"{like}-{seed}-{scale}")
  writer.write(synthetic.generate(like, seed, scale), out)
  return out


def _files(directory) -> dict[str, bytes]:
  return {f: (directory / f).read_bytes()
          for f in sorted(os.listdir(directory))}


def _ridge_predict(x_train, y_train, x_test, alpha=10.0):
  """Closed-form ridge (dual form, intercept via centred targets).

  The penalty is alpha * dim: standardised features make the kernel's
  diagonal about dim.
  """
  x_train = x_train.astype(np.float64)
  mean = y_train.mean(0)
  kernel = x_train @ x_train.T
  kernel[np.diag_indices_from(kernel)] += alpha * x_train.shape[1]
  coef = np.linalg.solve(kernel, y_train - mean)
  return x_test.astype(np.float64) @ (x_train.T @ coef) + mean


def _probe_accuracy(train: data.Split, test: data.Split, modalities,
                    num_classes: int) -> float:
  """A linear probe on `modalities`, trained on `train`, scored on `test`:
  accuracy (classes) or sign accuracy on non-zero scores (Acc-2 Non0)."""
  def stack(split):
    return np.concatenate([split.features[m] for m in modalities], 1)
  if num_classes > 1:
    target = np.eye(num_classes)[train.label]
    predicted = _ridge_predict(stack(train), target, stack(test)).argmax(1)
    return float((predicted == test.label).mean())
  predicted = _ridge_predict(stack(train), train.label[:, None],
                             stack(test))[:, 0]
  nonzero = test.label != 0
  return float(((predicted > 0) == (test.label > 0))[nonzero].mean())


def _majority(test: data.Split, num_classes: int) -> float:
  if num_classes > 1:
    return np.bincount(test.label).max() / len(test)
  positive = (test.label[test.label != 0] > 0).mean()
  return max(positive, 1 - positive)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
  first = _files(_write(tmp_path, "mosi", 0, 0.2, "a"))
  again = _files(_write(tmp_path, "mosi", 0, 0.2, "b"))
  other = _files(_write(tmp_path, "mosi", 1, 0.2, "c"))
  assert first == again
  shards = [f for f in first if schema.is_shard_name(f)]
  assert shards and all(first[f] != other.get(f) for f in shards)
  assert first[schema.MANIFEST] != other[schema.MANIFEST]


def test_same_seed_gives_identical_bytes_in_another_process(tmp_path):
  here = _write(tmp_path, "iemocap4", 3, 0.1, "here")
  there = tmp_path / "there"
  subprocess.run([sys.executable, "-m", "data_prep.synthetic", "--like",
                  "iemocap4", "--seed", "3", "--scale", "0.1", "--out",
                  str(there)], check=True, capture_output=True,
                 cwd=os.path.dirname(os.path.dirname(__file__)))
  assert _files(here) == _files(there)


def test_mosi_has_the_real_split_sizes_ids_and_score_grid():
  table = synthetic.generate("mosi")
  rows = table.rows
  for split, count, videos in (("train", 1284, 52), ("valid", 229, 10),
                               ("test", 686, 31)):
    here = table.split == split
    assert here.sum() == count
    assert len(set(rows.group_id[here].tolist())) == videos
  assert table.task == "regression" and not table.session_folds
  for utt, video, position in zip(rows.utt_id, rows.group_id, rows.position):
    assert utt == f"{video}_{position + 1}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{11}", video)
  assert (np.abs(rows.label) <= 3).all()
  np.testing.assert_allclose(rows.label * 5, np.round(rows.label * 5),
                             atol=1e-9)
  # Valid and test labels are never corrupted: their 7-class counts are a
  # share of the real ones, and about 4 % of scores are exactly 0.
  clean = table.split != "train"
  bins = np.bincount(np.round(rows.label[clean]).astype(int) + 3, minlength=7)
  real = np.array([80, 385, 404, 403, 379, 463, 85])
  np.testing.assert_allclose(bins / bins.sum(), real / real.sum(), atol=0.04)
  assert 0.02 < (rows.label == 0).mean() < 0.06


def test_iemocap4_has_the_real_sessions_dialogues_and_class_counts():
  table = synthetic.generate("iemocap4")
  rows = table.rows
  assert table.session_folds and set(table.split.tolist()) == {"all"}
  assert len(rows) == 5531
  real = {1: [278, 194, 384, 229], 2: [327, 197, 362, 137],
          3: [286, 305, 320, 240], 4: [303, 143, 258, 327],
          5: [442, 245, 384, 170]}
  dialogues = {1: 28, 2: 30, 3: 32, 4: 30, 5: 31}
  for session in range(1, 6):
    here = rows.session == session
    assert np.bincount(rows.label[here]).tolist() == real[session]
    assert len(set(rows.group_id[here].tolist())) == dialogues[session]
  sizes = collections.Counter(rows.group_id.tolist())
  assert 5 <= min(sizes.values()) and max(sizes.values()) <= 110
  assert 30 < np.mean(list(sizes.values())) < 43
  for utt, dialogue, speaker, session in zip(rows.utt_id, rows.group_id,
                                             rows.speaker, rows.session):
    assert re.fullmatch(rf"Ses0{session}[FM]_(impro|script)\d\d", dialogue)
    assert re.fullmatch(rf"{dialogue}_{speaker}\d{{3}}", utt)
  for dialogue, size in sizes.items():
    positions = rows.position[rows.group_id == dialogue]
    assert sorted(positions.tolist()) == list(range(size))


def test_iemocap6_has_the_real_class_totals():
  table = synthetic.generate("iemocap6")
  assert table.classes[4:] == ["excited", "frustrated"]
  assert np.bincount(table.rows.label).tolist() == [648, 1084, 1708, 1103,
                                                    1041, 1849]
  assert sorted(set(table.rows.session.tolist())) == [1, 2, 3, 4, 5]


def test_scale_shrinks_every_split_and_keeps_a_few_groups():
  table = synthetic.generate("mosei", scale=0.02)
  for split, count in (("train", 16326), ("valid", 1871), ("test", 4659)):
    here = table.split == split
    assert abs(here.sum() - count * 0.02) <= 1
    assert len(set(table.rows.group_id[here].tolist())) >= 3
  tiny = synthetic.generate("iemocap4", scale=0.01)
  for session in range(1, 6):
    here = tiny.rows.session == session
    assert len(set(tiny.rows.group_id[here].tolist())) >= 3
    assert len(np.unique(tiny.rows.label[here])) == 4


@pytest.mark.parametrize("like", ["mosi", "iemocap4"])
def test_absent_video_is_zeros_and_marked_absent(tmp_path, like):
  table = synthetic.generate(like, scale=0.3)
  rows = table.rows
  absent = ~rows.available[:, _VIDEO]
  assert rows.available[:, :_VIDEO].all()
  assert not rows.features["video"][absent].any()
  assert (np.abs(rows.features["video"][~absent]).sum(1) > 0).all()
  strata = rows.session if table.session_folds else table.split
  for stratum in np.unique(strata):
    here = strata == stratum
    assert absent[here].sum() == round(0.1 * here.sum())
  out = tmp_path / like
  manifest = writer.write(table, out)
  assert sum(s["available"]["video"] for s in manifest.splits.values()) == (
      len(rows) - absent.sum())
  split = schema.ALL_SPLIT if table.session_folds else "train"
  loaded = data.read_split(out, manifest, split)
  gone = ~loaded.available[:, _VIDEO]
  assert gone.any() and not loaded.features["video"][gone].any()


def test_mosi_corrupts_exactly_a_tenth_of_train_only():
  table = synthetic.generate("mosi")
  corrupted = table.rows.extras["corrupted"]
  assert set(np.unique(corrupted).tolist()) == {0, 1}
  train = table.split == "train"
  assert corrupted[train].sum() == round(0.1 * train.sum())
  assert not corrupted[~train].any()
  assert (table.rows.label[corrupted == 1] != 0).all()


def test_iemocap_corrupts_a_tenth_of_every_session():
  table = synthetic.generate("iemocap4")
  corrupted = table.rows.extras["corrupted"]
  for session in range(1, 6):
    here = table.rows.session == session
    assert corrupted[here].sum() == round(0.1 * here.sum())


@pytest.mark.parametrize("like,scale,fold", [("mosi", 1.0, None),
                                             ("iemocap4", 0.5, 1)])
def test_corrupted_labels_disagree_with_the_features(tmp_path, like, scale,
                                                     fold):
  """A probe fit on clean training rows recovers the TRUE label, which the
  stored label of a corrupted row contradicts."""
  dataset = data.load(_write(tmp_path, like, scale=scale), fold=fold)
  train, k = dataset.train, dataset.manifest.num_classes
  corrupted = train.extras["corrupted"] == 1
  clean = train.take(~corrupted)
  modalities = list(schema.MODALITIES)
  held_out = _probe_accuracy(clean, dataset.test, modalities, k)
  agreement = _probe_accuracy(clean, train.take(corrupted), modalities, k)
  assert held_out > 0.75
  assert agreement < 0.25


@pytest.mark.parametrize("like,scale,fold", [("mosi", 1.0, None),
                                             ("iemocap4", 0.5, 1)])
def test_linear_probe_orders_text_audio_video_chance(tmp_path, like, scale,
                                                     fold):
  dataset = data.load(_write(tmp_path, like, scale=scale), fold=fold)
  k = dataset.manifest.num_classes

  def accuracy(*modalities):
    return _probe_accuracy(dataset.train, dataset.test, modalities, k)

  text, audio, video = accuracy("text"), accuracy("audio"), accuracy("video")
  combined = accuracy(*schema.MODALITIES)
  chance = _majority(dataset.test, k)
  margins = (text - audio, audio - video, video - chance)
  assert min(margins) > 0.03, (text, audio, video, chance)
  assert combined >= text, (combined, text)


def test_round_trip_through_load_keeps_every_value(tmp_path):
  table = synthetic.generate("mosi", scale=0.2)
  dataset = data.load(_write(tmp_path, "mosi", scale=0.2), normalized=False)
  for split in schema.SPLITS:
    loaded = getattr(dataset, split)
    rows = table.rows.take(table.split == split)
    order = np.argsort(rows.utt_id)
    mine = rows.take(order)
    theirs = loaded.take(np.argsort(loaded.utt_id))
    np.testing.assert_array_equal(theirs.utt_id, mine.utt_id)
    np.testing.assert_array_equal(theirs.label, mine.label.astype(np.float32))
    np.testing.assert_array_equal(theirs.available, mine.available)
    np.testing.assert_array_equal(theirs.extras["corrupted"],
                                  mine.extras["corrupted"])
    for m in schema.MODALITIES:
      np.testing.assert_array_equal(theirs.features[m], mine.features[m])


def test_iemocap_fold_tests_one_session_and_keeps_dialogues_whole(tmp_path):
  out = _write(tmp_path, "iemocap4", scale=0.3)
  dataset = data.load(out, fold=1)
  assert set(dataset.test.session.tolist()) == {1}
  for split in (dataset.train, dataset.valid):
    assert len(split) and 1 not in set(split.session.tolist())
  groups = [set(getattr(dataset, s).group_id.tolist()) for s in schema.SPLITS]
  assert not (groups[0] & groups[1] or groups[0] & groups[2]
              or groups[1] & groups[2])
  assert sum(len(getattr(dataset, s)) for s in schema.SPLITS) == (
      schema.Manifest.load(out).splits["all"]["count"])
  for s in schema.SPLITS:
    assert "corrupted" in getattr(dataset, s).extras


def test_cli_writes_a_directory_that_loads(tmp_path, capsys):
  out = tmp_path / "cli"
  argv = ["--like", "iemocap6", "--out", str(out), "--seed", "7", "--scale",
          "0.1"]
  assert synthetic.main(argv) == 0
  assert "synthetic iemocap6" in capsys.readouterr().out
  manifest = json.loads((out / schema.MANIFEST).read_text())
  assert manifest["format"] == "synthetic"
  assert "generated" in manifest["split_source"]
  source = manifest["sources"][0]
  assert (source["like"], source["seed"], source["scale"]) == (
      "iemocap6", 7, 0.1)
  assert any("SYNTHETIC" in note for note in manifest["notes"])
  assert manifest["extra_fields"] == ["corrupted"]
  dataset = data.load(out, fold=5)
  assert dataset.manifest.dims == {"audio": 512, "text": 1024, "video": 1024}
  assert len(dataset.test) and len(dataset.valid) and len(dataset.train)
  assert synthetic.main(argv) == 2  # exists, no --overwrite
  assert synthetic.main(argv + ["--overwrite"]) == 0
  assert synthetic.main(["--like", "mosi", "--out", str(tmp_path / "x"),
                         "--scale", "0"]) == 2
  assert "--scale" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()


def test_group_sizes_sum_to_the_total_within_bounds():
  rng = np.random.default_rng(0)
  for total, groups, low, high in ((5531, 151, 5, 110), (40, 3, 5, 110),
                                   (12, 3, 5, 110), (1000, 3, 5, 110)):
    sizes = synthetic.group_sizes(rng, total, groups, low, high)
    assert len(sizes) == groups and sizes.sum() == total
    assert sizes.min() >= min(low, total // groups)
    assert sizes.max() <= max(high, -(-total // groups))
  assert synthetic.apportion(10, [1, 1, 1]).tolist() == [4, 3, 3]
