"""Bad input: one line naming file and field, exit status 2, no output left behind."""

import json
import pickle

import pytest

from data_prep import convert
from data_prep import inspect
from mcur_jax import data
from mcur_jax import tfrecord
from tests import cli
from tests import poria_files


def run(capsys, tmp_path, *args):
  """Runs the CLI; returns (status, stderr) and checks nothing was left."""
  status = convert.main([*args, "--out", str(tmp_path / "out")])
  if status:
    return status, cli.assert_failed_cleanly(capsys, tmp_path / "out")
  return status, capsys.readouterr().err


@pytest.fixture
def folder(tmp_path):
  return poria_files.write(tmp_path / "csv")


def poria(folder, *extra):
  return ("--format", "poria", "--dataset", "mosi", "--input", str(folder[0]),
          *extra)


def edit_csv(path, row, column, value):
  lines = path.read_text().splitlines()
  cells = lines[row].split(",")
  cells[column] = value
  lines[row] = ",".join(cells)
  path.write_text("\n".join(lines) + "\n")


def test_unknown_format(capsys, tmp_path):
  status, err = run(capsys, tmp_path, "--format", "hdf5", "--dataset", "mosi")
  assert status == 2 and "--format: unknown format 'hdf5'" in err


def test_unknown_dataset(capsys, tmp_path, folder):
  status, err = run(capsys, tmp_path, "--format", "poria", "--dataset", "x",
                    "--input", str(folder[0]))
  assert status == 2 and "--dataset: unknown 'x'" in err


@pytest.mark.parametrize("value", ['"nan"', '"inf"', '"-inf"', '"1e39"'])
def test_nan_or_inf_feature(capsys, tmp_path, folder, value):
  edit_csv(folder[0] / "audio_test0.csv", 2, 1, value)
  status, err = run(capsys, tmp_path, *poria(folder))
  assert status == 2
  assert "audio_{train,test}0.csv: audio: NaN or inf in 1 vectors" in err


def test_nan_policy_zero_marks_absent(capsys, tmp_path, folder):
  edit_csv(folder[0] / "audio_test0.csv", 2, 1, '"nan"')
  status, _ = run(capsys, tmp_path, *poria(folder), "--nan_policy", "zero")
  assert status == 0
  ds = data.load(tmp_path / "out")
  absent = sum((~s.available[:, 0]).sum() for s in (ds.train, ds.valid, ds.test))
  assert absent == 1
  assert any("zeroed and marked absent" in n for n in ds.manifest.notes)


def test_feature_row_of_another_dimension(capsys, tmp_path, folder):
  path = folder[0] / "video_train0.csv"
  lines = path.read_text().splitlines()
  lines[3] = '"1.0",' + lines[3]
  path.write_text("\n".join(lines) + "\n")
  status, err = run(capsys, tmp_path, *poria(folder))
  assert status == 2 and "video_train0.csv: video: rows of different" in err


@pytest.mark.parametrize("mutate, field", [
    (lambda p: p[:5], "pickle"),
    (lambda p: {"videoIDs": p[0]}, "pickle"),
    (lambda p: [p[0], {}, *p[2:]], "videoLabels"),
    (lambda p: [p[0], {k: v[:-1] for k, v in p[1].items()}, *p[2:]],
     "videoLabels"),
    (lambda p: [p[0], p[1], p[2], p[3], p[4], p[5], set()],
     "trainVids/valVids/testVids"),
])
def test_bad_label_pickle(capsys, tmp_path, folder, mutate, field):
  pkl = folder[1]
  with open(pkl, "rb") as f:
    content = pickle.load(f)
  with open(pkl, "wb") as f:
    pickle.dump(mutate(content), f)
  status, err = run(capsys, tmp_path, *poria(folder, "--labels", str(pkl)))
  assert status == 2 and f"labels.pkl: {field}:" in err


def test_utterance_without_label(capsys, tmp_path, folder):
  pkl = folder[1]
  with open(pkl, "rb") as f:
    content = pickle.load(f)
  for field in content[:4]:
    field["vid00"] = field["vid00"][:-1]
  with open(pkl, "wb") as f:
    pickle.dump(content, f)
  status, err = run(capsys, tmp_path, *poria(folder, "--labels", str(pkl)))
  assert status == 2 and "videoIDs: no label for 1 utterances" in err


def test_label_outside_range(capsys, tmp_path, folder):
  pkl = folder[1]
  with open(pkl, "rb") as f:
    content = pickle.load(f)
  content[1]["vid03"][1] = 3.5 if content[1]["vid03"][1] >= 0 else -3.5
  with open(pkl, "wb") as f:
    pickle.dump(content, f)
  status, err = run(capsys, tmp_path, *poria(folder, "--labels", str(pkl)))
  assert status == 2 and ("labels.pkl: label: 1 labels not a finite score in "
                         "[-3.0, 3.0]") in err
  assert "e.g. 3.5 of 'vid03_2'" in err or "e.g. -3.5 of 'vid03_2'" in err


def test_duplicate_ids(capsys, tmp_path, folder):
  for name in ("text_train.csv", "text_train0.csv", "audio_train0.csv",
               "video_train0.csv"):
    path = folder[0] / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + lines[:1]) + "\n")
  status, err = run(capsys, tmp_path, *poria(folder))
  assert status == 2 and "utt_id: 1 duplicate ids" in err


def test_group_in_two_splits_from_the_data(capsys, tmp_path, folder):
  # Move one utterance of a Poria train video into the test files.
  for m in ("text", "audio", "video"):
    for suffix in ("0.csv",) + ((".csv",) if m == "text" else ()):
      src, dst = (folder[0] / f"{m}_{s}{suffix}" for s in ("train", "test"))
      lines = src.read_text().splitlines()
      src.write_text("\n".join(lines[1:]) + "\n")
      dst.write_text(dst.read_text() + lines[0] + "\n")
  status, err = run(capsys, tmp_path, *poria(folder))
  assert status == 2 and "split: group 'vid" in err and "more than one" in err


@pytest.mark.parametrize("content, message", [
    ({"train": ["vid00"], "valid": ["vid00"], "test": ["vid01"]},
     "valid: group 'vid00' is also in 'train'"),
    ({"train": ["vid00"], "valid": ["vid01"], "test": ["vid02"]},
     "groups of the data are in no split"),
    ({"train": ["vid0%d" % i for i in range(6)] + ["zzz"],
      "valid": ["vid06"], "test": ["vid07"]}, "groups are not in the data"),
    ({"train": ["vid00"], "test": ["vid01"]}, "valid: missing"),
])
def test_bad_split_file(capsys, tmp_path, folder, content, message):
  path = tmp_path / "split.json"
  path.write_text(json.dumps(content))
  status, err = run(capsys, tmp_path, *poria(folder, "--split_file", str(path)))
  assert status == 2 and "split.json" in err and message in err


def test_existing_output_is_kept_unless_overwrite(capsys, tmp_path, folder):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  assert convert.main([*poria(folder), "--out", str(tmp_path / "out")]) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err
  assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
  assert convert.main([*poria(folder), "--out", str(tmp_path / "out"),
                       "--overwrite"]) == 0
  assert not (tmp_path / "out" / "keep.txt").exists()
  assert not list(tmp_path.glob(".out*")), "temporary output left behind"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_tfrecord_is_caught_by_inspect_and_by_load(
    capsys, tmp_path, folder, damage):
  assert convert.main([*poria(folder), "--out", str(tmp_path / "out")]) == 0
  shard = next((tmp_path / "out").glob("*-train.tfrecord-*"))
  content = shard.read_bytes()
  shard.write_bytes(content[:len(content) // 2 + 7] if damage == "truncate" else
                    content[:100] + bytes([content[100] ^ 0x40]) + content[101:])
  capsys.readouterr()
  assert inspect.main([str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {shard}: record ") and len(err.splitlines()) == 1
  with pytest.raises(tfrecord.CorruptRecordError, match=str(shard)):
    data.load(tmp_path / "out")


def test_truncation_at_a_record_boundary_is_caught_by_the_count(
    capsys, tmp_path, folder):
  assert convert.main([*poria(folder), "--out", str(tmp_path / "out")]) == 0
  shard = next((tmp_path / "out").glob("*-train.tfrecord-*"))
  first = next(tfrecord.read_records(shard))
  shard.write_bytes(shard.read_bytes()[:len(first) + 16])
  capsys.readouterr()
  assert inspect.main([str(tmp_path / "out")]) == 2
  assert "splits.train.count: says 16 records, the shards hold 1" in (
      capsys.readouterr().err)
