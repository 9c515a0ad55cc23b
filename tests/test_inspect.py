"""`python -m data_prep.inspect`: verification and summary of prepared directories."""

import json

import pytest

from data_prep import inspect
from data_prep import writer
from mcur_jax import schema
from tests import test_data


def test_summary_of_a_regression_dataset(tmp_path, capsys):
  table = test_data.make_table()
  writer.write(table, tmp_path / "d")
  assert inspect.main([str(tmp_path / "d")]) == 0
  out = capsys.readouterr().out
  n_train = int((table.split == "train").sum())
  assert f"train: {n_train} utterances in 4 groups" in out
  assert "dims: audio 3, text 4, video 2" in out
  assert "7-class [" in out and "corrupted: " in out
  absent = int((~table.rows.available[table.split == "test", 0]).sum())
  assert f"available: audio {20 - absent}, text 20" in out
  assert "OK: 60 records verified" in out


def test_summary_of_a_fold_dataset_checks_every_fold(tmp_path, capsys):
  writer.write(test_data.make_table(sessions=True), tmp_path / "d")
  assert inspect.main([str(tmp_path / "d")]) == 0
  out = capsys.readouterr().out
  assert "folds: by session [1, 2, 3, 4]" in out and "all: 60 utterances" in out
  path = tmp_path / "d" / schema.MANIFEST
  raw = json.loads(path.read_text())
  raw["normalization"]["fold3"]["text"]["mean"][0] += 0.5
  path.write_text(json.dumps(raw))
  assert inspect.main([str(tmp_path / "d")]) == 2
  assert "normalization.fold3.text.mean: does not match" in (
      capsys.readouterr().err)


@pytest.mark.parametrize("stray", ["test-train.tfrecord-00009-of-00010",
                                   "train-00009-of-00010.tfrecord"])
def test_stray_shard_is_reported(tmp_path, capsys, stray):
  """A shard the manifest does not list, in the TFDS template or the names
  written before."""
  writer.write(test_data.make_table(), tmp_path / "d")
  (tmp_path / "d" / stray).write_bytes(b"")
  assert inspect.main([str(tmp_path / "d")]) == 2
  assert f"{stray}: file: shard not listed" in capsys.readouterr().err


def test_a_modality_of_dim_0_is_clean(tmp_path, capsys):
  table = test_data.make_table(dims={"audio": 0, "text": 4, "video": 2})
  writer.write(table, tmp_path / "d")
  assert inspect.main([str(tmp_path / "d")]) == 0
  out = capsys.readouterr().out
  assert "dims: audio 0, text 4, video 2" in out
  assert "available: audio 0, text 20" in out
  assert "OK: 60 records verified" in out


def test_a_file_or_a_missing_directory_is_one_line(tmp_path, capsys):
  """An npz given where a prepared directory is wanted (convert's input,
  say) is named as a file, not reported as an OS error."""
  path = tmp_path / "features.npz"
  path.write_bytes(b"PK")
  assert inspect.main([str(path)]) == 2
  assert capsys.readouterr().err == (
      f"error: {path / schema.MANIFEST}: manifest: a file, not a prepared "
      "directory (make one with `python -m data_prep.convert`)\n")
  assert inspect.main([str(tmp_path / "none")]) == 2
  assert "manifest: not found: not a prepared directory" in (
      capsys.readouterr().err)
