"""Reading prepared directories: schema checks, normalisation, folds, tf.data equality."""

import dataclasses
import json

import numpy as np
import pytest

from data_prep import writer
from mcur_jax import data
from mcur_jax import normalization
from mcur_jax import schema
from mcur_jax import tfrecord
from mcur_jax import utterance_rows

DIMS = {"audio": 3, "text": 4, "video": 2}
# Where `make_table`'s fields come from, for error messages.
FIELDS = (*schema.MODALITIES, "utt_id", "label", "split")


def make_table(*, sessions=False, n_groups=12, per_group=5, seed=0,
               dims=None):
  """A small random table; sessions=True gives an IEMOCAP-like 4-class set.

  `dims` overrides DIMS; a modality of dim 0 is one the dataset lacks (never
  available).
  """
  dims = DIMS if dims is None else dims
  rng = np.random.default_rng(seed)
  n = n_groups * per_group
  group = np.repeat([f"g{i:02d}" for i in range(n_groups)], per_group)
  available = rng.random((n, 3)) > 0.2
  available[:, 1] = True
  available[:, [not dims[m] for m in schema.MODALITIES]] = False
  features = {m: rng.normal(3.0, 2.0, (n, d)) * available[:, j:j + 1]
              for j, (m, d) in enumerate(dims.items())}
  if dims["video"]:
    features["video"][:, 0] = 0.0  # A constant column, like Poria's video.
  if sessions:
    session = np.repeat(np.arange(n_groups) % 4 + 1, per_group)
    label = rng.integers(0, 4, n)
    split = np.full(n, schema.ALL_SPLIT)
    task, classes = "classification", ["a", "b", "c", "d"]
  else:
    session = np.zeros(n, np.int64)
    label = rng.uniform(-3, 3, n).round(1)
    split = np.repeat(np.array(["train", "valid", "test"])[
        np.arange(n_groups) % 3], per_group)
    task, classes = "regression", None
  rows = utterance_rows.make_rows(
      utt_id=[f"u{i}" for i in range(n)], group_id=group,
      position=np.tile(np.arange(per_group), n_groups), label=label,
      features=features, available=available, speaker=["F", "M"] * (n // 2),
      session=session, extras={"corrupted": rng.integers(0, 2, n)})
  return writer.Table(dataset="test", task=task, classes=classes, rows=rows,
                      split=split, origin={f: "table" for f in FIELDS},
                      format="test", split_source="",
                      sources=[], session_folds=sessions)


def assert_splits_equal(a: data.Split, b: data.Split):
  for m in schema.MODALITIES:
    np.testing.assert_array_equal(a.features[m], b.features[m])
  for field in ("available", "label", "utt_id", "group_id", "speaker",
                "position", "session"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert a.label.dtype == b.label.dtype
  assert a.extras.keys() == b.extras.keys()
  for k in a.extras:
    np.testing.assert_array_equal(a.extras[k], b.extras[k])


def by_id(split: data.Split, table: writer.Table):
  """Rows of `table` in the order of `split`'s utterance ids."""
  row = {u: i for i, u in enumerate(table.rows.utt_id.tolist())}
  return table.rows.take(np.array([row[u] for u in split.utt_id]))


def test_round_trip_is_exact_and_absent_is_empty(tmp_path):
  table = make_table()
  writer.write(table, tmp_path / "d")
  ds = data.load(tmp_path / "d", normalized=False)
  for name in schema.SPLITS:
    got = getattr(ds, name)
    want = by_id(got, table)
    assert (table.split[np.isin(table.rows.utt_id, got.utt_id)] == name).all()
    assert_splits_equal(got, dataclasses.replace(
        want, label=want.label.astype(np.float32),
        features={m: x.astype(np.float32) for m, x in want.features.items()}))
  # An absent modality is an empty list in the record, not a zero vector.
  manifest = schema.Manifest.load(tmp_path / "d")
  path = data.shard_paths(tmp_path / "d", manifest, "train")[0]
  lengths = {len(tfrecord.parse_example(r).features.feature["audio"]
                 .float_list.value) for r in tfrecord.read_records(path)}
  assert lengths == {0, DIMS["audio"]}


def test_normalisation_uses_train_stats_of_present_rows(tmp_path):
  table = make_table()
  writer.write(table, tmp_path / "d")
  ds = data.load(tmp_path / "d")
  for j, m in enumerate(schema.MODALITIES):
    present = ds.train.available[:, j]
    x = ds.train.features[m][present]
    np.testing.assert_allclose(x[:, 1:].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x[:, 1:].std(0), 1, atol=1e-4)
    assert (ds.train.features[m][~present] == 0).all()
    assert (ds.test.features[m][~ds.test.available[:, j]] == 0).all()
  # A constant column keeps std 1: it is only centred.
  assert (ds.train.features["video"][:, 0] == 0).all()
  # Test rows use the train statistics, not their own.
  raw = data.load(tmp_path / "d", normalized=False)
  train_rows = raw.train.features["text"]
  expected = (raw.test.features["text"] - train_rows.mean(0)) / train_rows.std(0)
  np.testing.assert_allclose(ds.test.features["text"], expected, atol=1e-4)


def test_session_folds(tmp_path):
  table = make_table(sessions=True, n_groups=20)
  manifest = writer.write(table, tmp_path / "d")
  assert manifest.folds["values"] == [1, 2, 3, 4]
  assert set(manifest.normalization) == {"fold1", "fold2", "fold3", "fold4"}
  for fold in (1, 3):
    ds = data.load(tmp_path / "d", fold=fold)
    assert (ds.test.session == fold).all() and len(ds.test) == 25
    assert (ds.train.session != fold).all() and (ds.valid.session != fold).all()
    assert not set(ds.valid.group_id) & set(ds.train.group_id)
    assert len(set(ds.valid.group_id)) == round(
        writer.FOLD_VALID_FRACTION * 15)
    assert len(ds.train) + len(ds.valid) + len(ds.test) == 100
  with pytest.raises(schema.DataError, match="fold=None"):
    data.load(tmp_path / "d")
  with pytest.raises(schema.DataError, match="fixed train/valid/test"):
    writer.write(make_table(), tmp_path / "e")
    data.load(tmp_path / "e", fold=1)


def test_session_validation_holds_out_the_next_session(tmp_path):
  """validation="session": valid is the whole session after the test one
  (cyclically), train the other sessions, standardised with their own
  statistics (float32 of a float64 z-score: 1e-5), which `train_stats`
  returns too; the same rows as the default layout, split otherwise."""
  table = make_table(sessions=True, n_groups=20)
  writer.write(table, tmp_path / "d")
  for fold, valid_session in ((1, 2), (4, 1)):
    ds = data.load(tmp_path / "d", fold=fold, validation="session")
    raw = data.load(tmp_path / "d", fold=fold, normalized=False,
                    validation="session")
    assert (ds.test.session == fold).all()
    assert (ds.valid.session == valid_session).all() and len(ds.valid) == 25
    assert set(ds.train.session) == {1, 2, 3, 4} - {fold, valid_session}
    default = data.load(tmp_path / "d", fold=fold)
    assert (sorted(np.concatenate([ds.train.utt_id, ds.valid.utt_id]))
            == sorted(np.concatenate([default.train.utt_id,
                                      default.valid.utt_id])))
    stats = data.train_stats(tmp_path / "d", fold, "session")
    np.testing.assert_equal(stats, {
        m: {k: np.asarray(v) for k, v in values.items()}
        for m, values in normalization.feature_stats(raw.train).items()})
    # What the loaded data was standardised with, which a run keeps.
    np.testing.assert_equal(ds.stats, stats)
    np.testing.assert_equal(default.stats, data.train_stats(tmp_path / "d",
                                                            fold))
    assert raw.stats is None
    for split in ("train", "test"):
      x, y = getattr(raw, split), getattr(ds, split)
      on = x.available[:, 1]
      text = x.features["text"][on].astype(np.float64)
      train_text = raw.train.features["text"][raw.train.available[:, 1]]
      np.testing.assert_allclose(
          y.features["text"][on],
          (text - train_text.mean(0)) / train_text.std(0), atol=1e-5)
  np.testing.assert_equal(
      data.train_stats(tmp_path / "d", 2),
      normalization.normalization_stats(
          tmp_path / "d", schema.Manifest.load(tmp_path / "d"), "fold2"))
  with pytest.raises(ValueError, match="validation='speakers'"):
    data.load(tmp_path / "d", fold=1, validation="speakers")


def test_speaker_norm_standardises_each_speaker_over_every_split(tmp_path):
  """Each (session, speaker)'s present audio rows, pooled over train, valid
  and test, have mean 0 and std 1 per column (float32 of a float64 z-score:
  1e-5); text keeps the training statistics; absent rows stay zero."""
  table = make_table(sessions=True, n_groups=20)
  writer.write(table, tmp_path / "d")
  plain = data.load(tmp_path / "d", fold=2)
  ds = data.load(tmp_path / "d", fold=2, speaker_norm=("audio",))
  raw = data.load(tmp_path / "d", fold=2, normalized=False)
  splits = lambda d: [getattr(d, s) for s in schema.SPLITS]
  cat = lambda parts, f: np.concatenate([f(p) for p in parts])
  audio = cat(splits(ds), lambda p: p.features["audio"])
  raw_audio = cat(splits(raw), lambda p: p.features["audio"])
  present = cat(splits(ds), lambda p: p.available[:, 0])
  who = cat(splits(ds), normalization.speakers)
  assert len(set(who)) == 8  # 4 sessions x F, M.
  for key in set(who):
    rows = (who == key) & present
    x = raw_audio[rows].astype(np.float64)
    np.testing.assert_allclose(audio[rows], (x - x.mean(0)) / x.std(0),
                               atol=1e-5)
  assert (audio[~present] == 0).all()
  for a, b in zip(splits(ds), splits(plain)):
    np.testing.assert_array_equal(a.features["text"], b.features["text"])
  # A config's string names the same modalities; a misspelt one is named.
  same = data.load(tmp_path / "d", fold=2, speaker_norm="audio")
  np.testing.assert_array_equal(same.test.features["audio"],
                                ds.test.features["audio"])
  with pytest.raises(ValueError, match="speaker_norm: 'Audio', not one of"):
    data.load(tmp_path / "d", fold=2, speaker_norm=("Audio",))


def test_speaker_norm_needs_speaker_ids(tmp_path):
  table = make_table(sessions=True, n_groups=20)
  table.rows.speaker[:3] = ""
  writer.write(table, tmp_path / "d")
  # The way out is in the message: IEMOCAP's config asks for it by default.
  with pytest.raises(schema.DataError, match="speaker: 3 records have no "
                     "speaker id, .*--config.speaker_norm= standardises"):
    data.load(tmp_path / "d", fold=1, speaker_norm=("audio",))


def test_carve_groups_is_fixed_and_sized():
  groups = [f"v{i}" for i in range(31)] * 2
  a = data.carve_groups(groups, 0.33, 0)
  assert a == data.carve_groups(list(reversed(groups)), 0.33, 0)
  assert len(a) == 10 and a != data.carve_groups(groups, 0.33, 1)


def _rewrite_manifest(directory, **changes):
  path = directory / schema.MANIFEST
  raw = json.loads(path.read_text())
  for key, value in changes.items():
    target = raw
    *parents, last = key.split(".")
    for p in parents:
      target = target[p]
    target[last] = value
  path.write_text(json.dumps(raw))


@pytest.mark.parametrize("change, field", [
    ({"splits.train.count": 999}, "splits.train.count"),
    ({"dims.audio": 7}, "audio"),
    ({"schema_version": 0}, "schema_version"),
    ({"task": "classification", "classes": ["x"]}, "label"),
    ({"dims.video": 0}, "available_video"),
    ({"dims.text": -1}, "dims.text"),
    ({"dims": {"audio": 0, "text": 0, "video": 0}}, "dims"),
])
def test_record_disagreeing_with_manifest_is_a_data_error(tmp_path, change,
                                                          field):
  writer.write(make_table(), tmp_path / "d")
  _rewrite_manifest(tmp_path / "d", **change)
  with pytest.raises(schema.DataError) as e:
    data.load(tmp_path / "d")
  assert e.value.field == field


@pytest.mark.parametrize("sessions", [False, True])
def test_a_modality_of_dim_0_round_trips_as_absent(tmp_path, sessions):
  dims = {"audio": 3, "text": 4, "video": 0}
  table = make_table(dims=dims, sessions=sessions)
  manifest = writer.write(table, tmp_path / "d")
  assert manifest.dims == dims
  stats = manifest.normalization["fold2" if sessions else "train"]
  assert stats["video"] == {"mean": [], "std": []}
  for normalized in (False, True):
    ds = data.load(tmp_path / "d", fold=2 if sessions else None,
                   normalized=normalized)
    for name in schema.SPLITS:
      part = getattr(ds, name)
      assert part.features["video"].shape == (len(part), 0)
      assert part.features["video"].dtype == np.float32
      assert not part.available[:, 2].any() and part.available[:, 1].all()
      assert part.take(np.arange(2)).features["video"].shape == (2, 0)


def test_writer_rejects_available_rows_of_a_modality_of_dim_0(tmp_path):
  table = make_table()
  table.rows.features["video"] = np.zeros((len(table.rows), 0), np.float32)
  with pytest.raises(schema.DataError) as e:
    writer.write(table, tmp_path / "d")
  assert e.value.field == "available_video"
  assert "no feature columns" in e.value.problem
  assert not (tmp_path / "d").exists()


def test_writer_rejects_a_table_without_features(tmp_path):
  table = make_table(dims={"audio": 0, "text": 0, "video": 0})
  with pytest.raises(schema.DataError, match="no modality has any feature"):
    writer.write(table, tmp_path / "d")


def test_missing_manifest_says_how_to_make_one(tmp_path):
  with pytest.raises(schema.DataError, match="data_prep.convert"):
    data.load(tmp_path)


@pytest.mark.parametrize("sessions, dims", [
    (False, None), (True, None), (True, {"audio": 3, "text": 4, "video": 0})])
def test_tf_data_reader_gives_identical_arrays(tmp_path, sessions, dims):
  pytest.importorskip("tensorflow")
  from mcur_jax import data_tf  # pylint: disable=g-import-not-at-top
  writer.write(make_table(sessions=sessions, dims=dims), tmp_path / "d")
  fold = 2 if sessions else None
  ours = data.load(tmp_path / "d", fold=fold)
  theirs = data.load(tmp_path / "d", fold=fold, reader=data_tf.read_split)
  for name in schema.SPLITS:
    assert_splits_equal(getattr(ours, name), getattr(theirs, name))
