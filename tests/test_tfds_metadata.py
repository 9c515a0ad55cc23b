"""Prepared directories as TFDS datasets: `tfds.builder_from_directory`
without TensorFlow, `as_dataset` with it; directories written before still
load, and `data_prep.upgrade` makes them TFDS datasets."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_prep import inspect
from data_prep import tfds_metadata
from data_prep import upgrade
from data_prep import writer
from mcur_jax import data
from mcur_jax import schema
from mcur_jax import tfrecord
from tests import test_data

KINDS = ("fixed", "folds")
# The fold `data.load` reads from a "folds" directory.
FOLD = 1


def _write(tmp_path, kind: str, name: str = "d"):
  table = test_data.make_table(sessions=kind == "folds", n_groups=6,
                               per_group=3)
  writer.write(table, tmp_path / name)
  return tmp_path / name


def _record(values: dict) -> dict:
  """A decoded record as plain Python values (text as str)."""
  return {k: v.decode() if isinstance(v, bytes) else np.asarray(v).tolist()
          for k, v in values.items()}


def _loaded(directory, kind: str) -> dict[str, dict[str, dict]]:
  """TFDS split -> utterance id -> record, from the raw arrays of
  `data.load`: an absent modality as an empty vector, as stored."""
  loaded = data.load(directory, fold=FOLD if kind == "folds" else None,
                     normalized=False)
  splits = {}
  for s in schema.SPLITS:
    split = getattr(loaded, s)
    name = schema.tfds_split(schema.ALL_SPLIT if kind == "folds" else s)
    for i, utt_id in enumerate(split.utt_id.tolist()):
      values = {f.name: getattr(split, f.name)[i]
                for f in schema.RECORD_FIELDS}
      values.update({k: v[i] for k, v in split.extras.items()})
      for j, m in enumerate(schema.MODALITIES):
        present = split.available[i, j]
        values[schema.AVAILABLE.key(m)] = int(present)
        values[schema.FEATURES.key(m)] = (
            split.features[m][i] if present else np.zeros(0, np.float32))
      splits.setdefault(name, {})[utt_id] = _record(values)
  return splits


def _old_style(directory) -> None:
  """Makes `directory` look written before: shards named
  `{split}-NNNNN-of-MMMMM.tfrecord`, no TFDS metadata."""
  path = directory / schema.MANIFEST
  manifest = json.loads(path.read_text())
  for s, info in manifest["splits"].items():
    count, files = len(info["files"]), []
    for k, name in enumerate(info["files"]):
      files.append(f"{s}-{k:05d}-of-{count:05d}.tfrecord")
      os.rename(directory / name, directory / files[-1])
    info["files"] = files
  path.write_text(json.dumps(manifest))
  for name in tfds_metadata.FILES:
    if (directory / name).exists():
      os.remove(directory / name)


def _files(directory) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("kind", KINDS)
def test_builder_from_directory_decodes_what_load_reads(tmp_path, kind):
  """Without TensorFlow: the builder's splits and counts are the
  manifest's (`all` as `sessions`), and its features decode every record
  to the values `data.load` gives."""
  directory = _write(tmp_path, kind)
  manifest = schema.Manifest.load(directory)
  info = tfds.builder_from_directory(os.fspath(directory)).info
  assert info.name == "test"
  expected = {schema.tfds_split(s): s for s in manifest.splits}
  assert sorted(info.splits) == sorted(expected)
  assert info.metadata["splits"] == expected
  assert info.metadata["dims"] == manifest.dims
  if kind == "folds":
    assert info.features["label"].names == manifest.classes
    assert "sessions" in info.splits and "all" not in info.splits
  decoded = {}
  for name, s in expected.items():
    split = info.splits[name]
    assert split.num_examples == manifest.splits[s]["count"]
    assert split.filenames == manifest.splits[s]["files"]
    for file in split.filenames:
      for record in tfrecord.read_records(directory / file):
        values = _record(info.features.deserialize_example_np(record))
        decoded.setdefault(name, {})[values["utt_id"]] = values
  assert decoded == _loaded(directory, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_a_directory_written_before_loads_and_upgrades(tmp_path, kind,
                                                       capsys):
  """Old shard names and no TFDS files: `data.load` and inspect read it as
  before; `data_prep.upgrade` then makes it byte for byte what the writer
  writes today."""
  today = _write(tmp_path, kind, "today")
  before = tmp_path / "before"
  shutil.copytree(today, before)
  _old_style(before)
  assert all(name == schema.MANIFEST or name.endswith(".tfrecord")
             for name in os.listdir(before))
  assert _loaded(before, kind) == _loaded(today, kind)
  assert inspect.main([str(before)]) == 0
  assert upgrade.main([str(before)]) == 0
  assert "upgraded" in capsys.readouterr().out
  assert _files(before) == _files(today)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_upgrade_refuses_a_directory_that_does_not_verify(tmp_path, capsys):
  directory = _write(tmp_path, "fixed")
  _old_style(directory)
  (directory / "train-00001-of-00002.tfrecord").write_bytes(b"")
  files = _files(directory)
  assert upgrade.main([str(directory)]) == 2
  assert "train-00001-of-00002.tfrecord: file: shard not listed" in (
      capsys.readouterr().err)
  assert _files(directory) == files


def test_a_dataset_name_tfds_cannot_take_is_an_error(tmp_path):
  table = test_data.make_table()
  table.dataset = "2-bad"
  with pytest.raises(schema.DataError, match="--dataset: '2-bad' is not a "
                     "TFDS dataset name"):
    writer.write(table, tmp_path / "d")
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind", KINDS)
def test_as_dataset_yields_what_load_reads(tmp_path, kind):
  """With TensorFlow, `builder.as_dataset(split=...)` of each split."""
  pytest.importorskip("tensorflow")
  directory = _write(tmp_path, kind)
  builder = tfds.builder_from_directory(os.fspath(directory))
  got = {}
  for name in builder.info.splits:
    for values in tfds.as_numpy(builder.as_dataset(split=name)):
      values = _record(values)
      got.setdefault(name, {})[values["utt_id"]] = values
  assert got == _loaded(directory, kind)
