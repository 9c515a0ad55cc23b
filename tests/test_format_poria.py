"""The Poria 2017 CSV format: the real CMU-MOSI files, and small generated folders."""

import json

import numpy as np
import pytest

from data_prep import convert
from data_prep.formats import poria
from mcur_jax import data
from tests import poria_files


def test_real_files_with_the_issue_command(tmp_path, shared_data):
  mosi = shared_data / "CMUMOSI"
  out = tmp_path / "mosi"
  assert convert.main([
      "--format", "poria", "--dataset", "mosi",
      "--input", str(mosi / "poria2017_contextual_utt"),
      "--labels", str(mosi / "gcnet_labels/CMUMOSI_features_raw_2way.pkl"),
      "--split_file", str(mosi / "poria_split.json"), "--out", str(out)]) == 0
  ds = data.load(out, normalized=False)
  assert (len(ds.train), len(ds.valid), len(ds.test)) == (1447, 241, 511)
  assert ds.manifest.dims == {"audio": 73, "text": 100, "video": 100}
  # Row for row equal to the project's independently joined .npz.
  npz = np.load(mosi / "mosi_poria2017_utterance_features.npz")
  row = {u: i for i, u in enumerate(npz["utt_id"].tolist())}
  split = json.loads((mosi / "poria_split.json").read_text())
  for name in ("train", "valid", "test"):
    part = getattr(ds, name)
    index = np.array([row[u] for u in part.utt_id])
    for m in ("audio", "text", "video"):
      np.testing.assert_allclose(part.features[m], npz[m][index], atol=1e-5)
    np.testing.assert_allclose(part.label, npz["label_reg"][index])
    np.testing.assert_array_equal(part.position, npz["utt_pos"][index])
    assert set(part.group_id) == set(split[name])
    assert part.available.all()


def test_default_valid_carve_is_the_projects_split_file(tmp_path, shared_data):
  mosi = shared_data / "CMUMOSI"
  out = tmp_path / "mosi"
  assert convert.main([
      "--format", "poria", "--dataset", "mosi",
      "--input", str(mosi / "poria2017_contextual_utt"), "--out", str(out)]) == 0
  ds = data.load(out)
  split = json.loads((mosi / "poria_split.json").read_text())
  for name in ("train", "valid", "test"):
    assert set(getattr(ds, name).group_id) == set(split[name])
  # Without --labels: the Poria binary label as a 2-class task.
  assert ds.manifest.classes == poria.POSITIVE_CLASSES
  assert any("valid = 10 of the Poria test videos" in n
             for n in ds.manifest.notes)


def test_small_folder_labels_positions_and_split(tmp_path):
  folder, pkl, truth = poria_files.write(tmp_path / "csv")
  out = tmp_path / "out"
  assert convert.main(["--format", "poria", "--dataset", "mosi", "--input",
                       str(folder), "--labels", str(pkl), "--out",
                       str(out)]) == 0
  ds = data.load(out, normalized=False)
  assert len(set(ds.valid.group_id)) == 1 and len(set(ds.test.group_id)) == 3
  assert all(int(g[3:]) % 2 == 0 for g in ds.train.group_id)
  for part in (ds.train, ds.valid, ds.test):
    for i, u in enumerate(part.utt_id):
      score, vectors = truth[u]
      assert part.label[i] == pytest.approx(score)
      assert part.position[i] == int(u.rsplit("_", 1)[1]) - 1
      for m, v in vectors.items():
        np.testing.assert_allclose(part.features[m][i], v, atol=1e-6)


def test_misaligned_rows_fail_loudly(tmp_path, capsys):
  folder, _, _ = poria_files.write(tmp_path / "csv")
  path = folder / "audio_train0.csv"
  lines = path.read_text().splitlines()
  path.write_text("\n".join(lines[1:] + lines[:1]) + "\n")
  assert convert.main(["--format", "poria", "--dataset", "mosi", "--input",
                       str(folder), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "audio_train0.csv: label: binary label" in err
  assert not (tmp_path / "out").exists()


def test_a_file_as_input_names_the_format_it_needs(tmp_path, capsys):
  """--input naming a file (an .npz given to --format poria): one error line
  naming the file and the flag, and the format an .npz needs."""
  path = tmp_path / "features.npz"
  np.savez(path, x=np.zeros(1))
  assert convert.main(["--format", "poria", "--dataset", "mosi", "--input",
                       str(path), "--out", str(tmp_path / "out")]) == 2
  assert capsys.readouterr().err.splitlines() == [
      f"error: {path}: --input: a file; --format poria reads the folder of "
      "the Poria CSVs (an .npz is --format npz)"]
  assert not (tmp_path / "out").exists()
