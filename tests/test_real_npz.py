"""The project's real derived .npz files through `data_prep.convert`, as the README shows.

Each file is converted once per module (the IEMOCAP file is 25 MB); every
test skips cleanly where the shared data is absent.
"""

import numpy as np
import pytest

from data_prep import convert
from data_prep import inspect
from mcur_jax import data
from mcur_jax import normalization
from mcur_jax import schema

IEMOCAP = "IEMOCAP/iemocap_egemaps_mpnet.npz"
MOSI = "CMUMOSI/mosi_standard_mpnet.npz"
# Name -> (dataset, input under shared/data, --key arguments): the README's
# three commands.
COMMANDS = {
    "iemocap4": ("iemocap4", IEMOCAP, ["label=label4"]),
    "iemocap6": ("iemocap6", IEMOCAP, ["label=label6"]),
    "mosi_std": ("mosi", MOSI, ["label=label_reg", "group_id=video_id",
                                "position=utt_pos", "split=split_standard"]),
}
IEMOCAP_DIMS = {"audio": 47, "text": 768, "video": 0}
MOSI_DIMS = {"audio": 73, "text": 768, "video": 0}


@pytest.fixture(scope="module")
def _converted(tmp_path_factory):
  """name -> prepared directory, filled on first use."""
  return {}, tmp_path_factory.mktemp("prepared")


@pytest.fixture
def prepared(shared_data, _converted):
  """Converts a COMMANDS entry once per module; returns its directory."""
  done, root = _converted

  def get(name):
    if name not in done:
      dataset, source, keys = COMMANDS[name]
      args = ["--format", "npz", "--dataset", dataset,
              "--input", str(shared_data / source), "--out", str(root / name)]
      assert convert.main(args + [a for k in keys for a in ("--key", k)]) == 0
      done[name] = root / name
    return done[name]

  return get


@pytest.mark.parametrize("name, count", [("iemocap4", 5531),
                                         ("iemocap6", 7433)])
def test_iemocap(prepared, capsys, name, count):
  directory = prepared(name)
  manifest = schema.Manifest.load(directory)
  assert manifest.dims == IEMOCAP_DIMS
  assert manifest.folds["values"] == [1, 2, 3, 4, 5]
  assert manifest.splits[schema.ALL_SPLIT]["count"] == count
  assert manifest.splits[schema.ALL_SPLIT]["groups"] == 151
  assert manifest.splits[schema.ALL_SPLIT]["available"] == {
      "audio": count, "text": count, "video": 0}
  assert ("video: no 'video' key in iemocap_egemaps_mpnet.npz: the dataset "
          "has no video") in manifest.notes
  left_out = [n for n in manifest.notes if "left out" in n]
  assert left_out == ([] if name == "iemocap6" else [
      "label4: 1902 utterances with label -1 (not labelled for this task) "
      "left out"])
  capsys.readouterr()
  assert inspect.main([str(directory)]) == 0
  out = capsys.readouterr().out
  assert "dims: audio 47, text 768, video 0" in out
  assert f"all: {count} utterances in 151 groups" in out
  assert f"OK: {count} records verified" in out


def test_iemocap4_keeps_the_files_rows_in_dialogue_order(prepared,
                                                         shared_data):
  directory = prepared("iemocap4")
  rows = data.read_split(directory, schema.Manifest.load(directory),
                         schema.ALL_SPLIT)
  with np.load(shared_data / IEMOCAP) as archive:
    raw = {k: archive[k] for k in ("utt_id", "group_id", "position", "session",
                                   "speaker", "label4")}
  kept = raw["label4"] >= 0
  row = {u: i for i, u in enumerate(raw["utt_id"].tolist())}
  index = np.array([row[u] for u in rows.utt_id])
  assert kept[index].all() and len(index) == kept.sum()
  np.testing.assert_array_equal(rows.label, raw["label4"][index])
  np.testing.assert_array_equal(rows.session, raw["session"][index])
  np.testing.assert_array_equal(rows.speaker, raw["speaker"][index])
  np.testing.assert_array_equal(rows.group_id, raw["group_id"][index])
  # Records are sorted by dialogue and position: the file's order survives
  # the renumbering, and positions run 0..k-1.
  for g in np.unique(rows.group_id):
    here = rows.group_id == g
    assert (np.diff(raw["position"][index[here]]) > 0).all()
    np.testing.assert_array_equal(rows.position[here], np.arange(here.sum()))


def test_iemocap_fold_loads(prepared, shared_data):
  dataset = data.load(prepared("iemocap4"), fold=2)
  assert set(dataset.test.session.tolist()) == {2}
  with np.load(shared_data / IEMOCAP) as archive:
    session, label = archive["session"], archive["label4"]
  assert len(dataset.test) == ((session == 2) & (label >= 0)).sum()
  assert sum(len(getattr(dataset, s)) for s in schema.SPLITS) == 5531
  for s in schema.SPLITS:
    part = getattr(dataset, s)
    assert part.features["video"].shape == (len(part), 0)
    assert part.features["text"].shape == (len(part), 768)
    assert not part.available[:, 2].any()
  x = dataset.train.features["audio"]
  np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)


def test_mosi_standard(prepared, capsys):
  directory = prepared("mosi_std")
  dataset = data.load(directory)
  assert [len(getattr(dataset, s)) for s in schema.SPLITS] == [1284, 229, 686]
  assert dataset.manifest.dims == MOSI_DIMS
  assert dataset.manifest.task == "regression"
  assert dataset.manifest.notes[0] == (
      "video: no 'video' key in mosi_standard_mpnet.npz: the dataset has no "
      "video")
  # 4 of mpnet's 768 dimensions vary by 1e-7 to 1e-33: centred, not scaled.
  std = np.array(dataset.manifest.normalization["train"]["text"]["std"])
  tiny = np.flatnonzero((std > 0) & (std <= normalization.MIN_STD))
  assert len(tiny) == 4
  assert dataset.manifest.notes[1:] == [
      f"text: 4 columns vary with a std of at most 1e-06 (e.g. column "
      f"{tiny[0]}): they are centred, not scaled; rescale them before "
      "converting if they carry signal"]
  assert dataset.test.features["video"].shape == (686, 0)
  capsys.readouterr()
  assert inspect.main([str(directory)]) == 0
  out = capsys.readouterr().out
  assert "dims: audio 73, text 768, video 0" in out
  assert "OK: 2199 records verified" in out
