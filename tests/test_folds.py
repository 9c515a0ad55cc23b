"""IEMOCAP's leave-one-session-out folds end to end: `fold=0` trains all
five sessions and pools them, a single fold equals its part of that run,
and `experiments.evaluate` pools the folds' checkpoints as training did
(tiny config, synthetic IEMOCAP-4, 1 seed, 1 epoch per fold).

Its own module so that a parallel test session (pytest-xdist, one module per
worker) runs these five trainings beside the other modules.
"""

import collections
import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from data_prep import synthetic
from data_prep import writer
from experiments.configs import iemocap as iemocap_config
from mcur_jax import checkpoint
from mcur_jax import data
from mcur_jax import fit as fit_lib
from mcur_jax import inference
from mcur_jax import metrics
from mcur_jax import predict
from mcur_jax import report
from mcur_jax import schema
from mcur_jax import train
from mcur_jax import validate
from tests import runs

# About 2.5 minutes on 2 cores: conftest schedules the slow modules first.
pytestmark = pytest.mark.slow(minutes=2.5)


@pytest.fixture(scope="module")
def iemocap_dir(tmp_path_factory):
  """Synthetic IEMOCAP-4 with every dialogue cut to the shortest one's
  first utterances, so that every session holds as many dialogues of as
  many utterances: every fold then has the same split sizes, and the five
  folds' trainings share one compiled epoch through the session's
  compilation cache (sessions of different sizes compiled it once per
  fold, about 14 s each on 2 cores)."""
  table = synthetic.generate("iemocap4", 0, 0.06)
  rows = table.rows
  dialogues = collections.Counter(rows.group_id)
  assert len({len(set(rows.group_id[rows.session == s]))
              for s in range(1, 6)}) == 1  # 3 dialogues in each session.
  keep = np.flatnonzero(rows.position < min(dialogues.values()))
  out = tmp_path_factory.mktemp("data") / "iemocap4"
  writer.write(dataclasses.replace(table, rows=rows.take(keep),
                                   split=table.split[keep]), out)
  return out


def iemocap(data_dir, workdir, fold: int, **overrides) -> dict:
  config = runs.tiny_config(data_dir, base=iemocap_config, fold=fold,
                            seeds=(0,), num_epochs=1, num_devices=1,
                            **overrides)
  return train.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="module")
def all_folds(iemocap_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("iemocap")
  return workdir, iemocap(iemocap_dir, workdir, fold=0)


def test_iemocap_fold_0_runs_and_pools_all_folds(all_folds):
  """fold=0 trains the 5 sessions in WORKDIR/fold1..fold5 and
  WORKDIR/results.json pools their runs (5 folds x 1 seed)."""
  workdir, results = all_folds
  folds = [json.loads((workdir / f"fold{k}" / "results.json").read_text())
           for k in range(1, 6)]
  assert [r["fold"] for r in folds] == [1, 2, 3, 4, 5]
  assert report.table(results).startswith(
      "iemocap4 test, mean ± std over 5 folds x 1 seed(s), selected on valid")
  assert results["folds"] == [1, 2, 3, 4, 5]
  assert json.loads((workdir / "results.json").read_text()) == results
  # The pooled run's TensorBoard HPARAMS session holds its pooled numbers.
  pooled = runs.tensorboard_scalars(workdir / "tb" / "hparams")
  assert pooled["hparam/test/avg/wf1"] == {  # At step num_epochs, 1.
      1: [pytest.approx(results["test"]["avg"]["wf1"]["mean"])]}
  assert results["task"] == "classification" and results["headline"] == "wf1"
  for split in ("test", "valid"):
    for c in runs.ALL_COMBOS:
      for k, v in results[split][c].items():
        per_run = [x for r in folds for x in r[split][c][k]["per_run"]]
        assert v["per_run"] == per_run and len(per_run) == 5
        assert v["mean"] == pytest.approx(np.mean(per_run))
        if k in runs.FRACTIONS:
          assert all(0 <= x <= 1 for x in per_run)


def test_a_rerun_reads_the_folds_finished_before(all_folds, iemocap_dir,
                                                 tmp_path, monkeypatch,
                                                 capsys):
  """Rerunning a cross-validated run (after an interrupt between folds, or
  a sweep point's rerun) reads each finished fold's results.json instead
  of restoring and evaluating it again, and pools the same numbers; a fold
  whose config changed in a field it writes after training (the
  missing-rate draws' seed) is evaluated again, to the same test and
  validation numbers (its timing and compile counts are new)."""
  workdir, results = all_folds
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  trained = []
  real = train._train_fold  # pylint: disable=protected-access
  monkeypatch.setattr(train, "_train_fold", lambda config, workdir: (
      trained.append(os.path.basename(workdir)), real(config, workdir))[1])
  assert iemocap(iemocap_dir, copy, fold=0) == results
  assert trained == []
  assert f"{copy / 'fold3'}: finished before with this config; its results " \
      "read" in capsys.readouterr().out
  again = iemocap(iemocap_dir, copy, fold=0, missing_rate_seed=1)
  assert all(again[k] == results[k] for k in ("test", "valid"))
  assert again["missing_rate"] != results["missing_rate"]
  assert trained == [f"fold{k}" for k in range(1, 6)]


def test_a_stop_request_ends_a_cross_validated_run_between_folds(
    iemocap_dir, tmp_path, monkeypatch):
  """A stop requested (Ctrl-C, `fit.STOP_REQUESTED`) in fold 1's last
  epoch: fold 1 finishes and the run stops before fold 2."""
  with runs.ctrl_c_in_every_epoch(monkeypatch), pytest.raises(
      fit_lib.Interrupted, match="stopped before fold 2: .* keeps the folds "
      "done"):
    iemocap(iemocap_dir, tmp_path, fold=0)
  assert (tmp_path / "fold1" / "results.json").exists()
  assert not (tmp_path / "fold2").exists()


def test_iemocap_single_fold(all_folds, iemocap_dir, tmp_path, capsys):
  """fold=2 trains session 2 only, directly in WORKDIR (figures included),
  exactly as fold 2 of the fold=0 run; its header names the fold."""
  workdir, _ = all_folds
  results = iemocap(iemocap_dir, tmp_path, fold=2, plots=True)
  assert results["fold"] == 2
  assert capsys.readouterr().out.startswith(
      "iemocap4 fold 2/5 (test: session 2): train ")
  # Run again, a finished run is evaluated again and says so.
  again = iemocap(iemocap_dir, tmp_path, fold=2, plots=True)
  assert again["test"] == results["test"]
  assert capsys.readouterr().out.splitlines()[0].endswith(
      "; its 1 epoch done, evaluating")
  assert sorted(os.listdir(tmp_path)) == [
      ".lock", "calibration.json", "checkpoints", "config.json", "data.json",
      "figures", "metrics.jsonl", "model_inputs", "results.json",
      "results.md", "tb"]
  fold2 = json.loads((workdir / "fold2" / "results.json").read_text())
  assert results["test"] == fold2["test"]


def test_evaluate_pools_folds_like_training(all_folds):
  """`experiments.evaluate` on a cross-validated workdir evaluates each
  fold's checkpoint and pools them: training's pooled numbers exactly."""
  workdir, results = all_folds
  found = inference.evaluate_workdir(str(workdir), "test", "all")
  assert found["folds"] == [1, 2, 3, 4, 5]
  for key in ("test", "missing_rate", "test_samples_without_modality"):
    assert found[key] == results[key], key


def test_unfinished_folds_and_mixed_kinds_of_run_are_refused(
    all_folds, iemocap_dir, tmp_path):
  """Evaluating a cross-validated run that has a fold without results.json
  (or without its directory) is an error naming them, not a pool of what
  is there, and so is evaluating or predicting with an unfinished fold
  alone (its checkpoint holds the best model so far); a single fold
  trained into a fold=0 workdir, or fold=0 into a single fold's, is
  refused before it overwrites the other's results."""
  workdir, _ = all_folds
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  (copy / "fold4" / "results.json").unlink()
  shutil.rmtree(copy / "fold5")
  with pytest.raises(validate.ConfigError,
                     match=r"unfinished cross-validated run \(fold4, fold5 "):
    inference.evaluate_workdir(str(copy))
  with pytest.raises(validate.ConfigError, match=r"an unfinished run \(no "
                     r"results.json\): its checkpoint holds the best model so "
                     "far"):
    inference.evaluate_workdir(str(copy / "fold4"))
  with pytest.raises(validate.ConfigError, match=r"an unfinished run \(no "):
    predict.predict(str(copy / "fold4"))
  with pytest.raises(validate.ConfigError, match="holds a cross-validated "
                     r"run \(fold1, fold2, fold3, fold4\)"):
    iemocap(iemocap_dir, copy, fold=3)
  single = copy / "fold1"
  with pytest.raises(validate.ConfigError, match="holds a single run"):
    iemocap(iemocap_dir, single, fold=0)


def test_predict_classification_over_folds_and_from_npz(all_folds, tmp_path):
  """`experiments.predict` on the cross-validated workdir: each fold's test
  utterances once, by that fold's model (out-of-fold), whose classes give
  the fold's results.json weighted F1 exactly; the calibrated class
  probabilities sum to 1 and their largest is the class and the confidence.
  The raw session-1 features as an npz with speaker and session keys
  (IEMOCAP's config standardises audio per speaker) predict exactly as the
  prepared split does."""
  workdir, results = all_folds
  found, _ = predict.predict(str(workdir), combination="atv")
  cols = found.columns
  folds = np.array(cols["fold"])
  assert sorted(set(cols["fold"])) == [1, 2, 3, 4, 5]
  for k in range(1, 6):
    fold = json.loads((workdir / f"fold{k}" / "results.json").read_text())
    rows = folds == k
    label = np.array(cols["label"])[rows].astype(int)
    wf1 = metrics.weighted_f1(label, np.array(cols["class"])[rows])
    assert wf1 == fold["test"]["atv"]["wf1"]["per_run"][0], k
  names = [c for c in cols if c.startswith("p_")]
  probs = np.stack([np.asarray(cols[c], np.float64) for c in names], 1)
  np.testing.assert_allclose(probs.sum(1), 1, rtol=0, atol=1e-9)
  np.testing.assert_array_equal(probs.argmax(1), cols["class"])
  np.testing.assert_array_equal(probs.max(1), cols["confidence"])

  config = checkpoint.load_config(str(workdir / "fold1"))
  raw = data.load(config.data_dir, fold=1, normalized=False).test
  path = tmp_path / "session1.npz"
  np.savez(path, group_id=raw.group_id, position=raw.position,
           utt_id=raw.utt_id, label=raw.label, speaker=raw.speaker,
           session=raw.session,
           **runs.feature_columns(raw))
  from_npz, notes = predict.predict(str(workdir / "fold1"), npz=str(path),
                                    combination="atv")
  prepared, _ = predict.predict(str(workdir / "fold1"), combination="atv")
  assert not notes
  index = {u: i for i, u in enumerate(prepared.columns["utt_id"])}
  take = [index[u] for u in from_npz.columns["utt_id"]]
  assert sorted(take) == list(range(len(prepared)))
  # Rows in another order fill the evaluation chunks differently, so XLA's
  # float32 sums may round differently: a few float32 ulps, not bits.
  for c in names + ["confidence"]:
    np.testing.assert_allclose(
        np.asarray(from_npz.columns[c], np.float64),
        np.asarray(prepared.columns[c], np.float64)[take], rtol=0, atol=1e-6)


def test_predict_a_fixed_split_directory_with_a_fold_run(all_folds, tmp_path):
  """A fold's run predicts another prepared directory by that directory's
  own layout: the same utterances converted with fixed splits (fold 1's
  parts as the npz's `split` column) give fold 1's own test rows. A
  cross-validated directory takes the run's fold, or `data_fold`; a fixed
  one refuses a fold."""
  from data_prep import convert  # pylint: disable=g-import-not-at-top
  workdir, _ = all_folds
  config = checkpoint.load_config(str(workdir / "fold1"))
  parts = data.load(config.data_dir, fold=1, normalized=False)
  raw = data.read_split(config.data_dir, parts.manifest, schema.ALL_SPLIT)
  part = {u: s for s in schema.SPLITS for u in getattr(parts, s).utt_id}
  path = tmp_path / "fixed.npz"
  np.savez(path, group_id=raw.group_id, position=raw.position,
           utt_id=raw.utt_id, label=raw.label, speaker=raw.speaker,
           session=raw.session, split=[part[u] for u in raw.utt_id],
           **runs.feature_columns(raw))
  fixed = tmp_path / "fixed"
  assert convert.main(["--format", "npz", "--dataset", "iemocap4", "--input",
                       str(path), "--out", str(fixed)]) == 0
  own, _ = predict.predict(str(workdir / "fold1"), combination="atv")
  other, _ = predict.predict(str(workdir / "fold1"), data_dir=str(fixed),
                             combination="atv")
  assert other.columns["utt_id"] == own.columns["utt_id"]
  for c in ("class", "confidence", "s"):
    np.testing.assert_array_equal(other.columns[c], own.columns[c])
  with pytest.raises(validate.ConfigError, match="--fold: 2: .* fixed"):
    predict.predict(str(workdir / "fold1"), data_dir=str(fixed), data_fold=2)
  fold2, _ = predict.predict(str(workdir / "fold1"), data_dir=config.data_dir,
                             data_fold=2, combination="atv")
  assert set(fold2.columns["utt_id"]) == set(
      data.load(config.data_dir, fold=2, normalized=False).test.utt_id)
  target = schema.Manifest.load(config.data_dir)
  with pytest.raises(validate.ConfigError, match="pass one of"):
    predict._data_fold(config.data_dir, target, None, None)


def test_predict_one_fold_of_a_cross_validated_run(all_folds, tmp_path):
  """`data_fold` on the cross-validated workdir predicts that fold's split
  with that fold's models only, each utterance once: the other folds'
  models trained on its utterances. A fold the run lacks is refused. An
  npz without audio needs no speaker ids, though the run standardises
  audio per speaker."""
  workdir, _ = all_folds
  data_dir = checkpoint.load_config(str(workdir / "fold3")).data_dir
  found, _ = predict.predict(str(workdir), data_dir=data_dir, data_fold=3,
                             split="valid")
  alone, _ = predict.predict(str(workdir / "fold3"), data_dir=data_dir,
                             data_fold=3, split="valid")
  assert set(found.columns["fold"]) == {3}
  assert found.columns == alone.columns
  assert found.columns["utt_id"] == data.load(
      data_dir, fold=3, normalized=False).valid.utt_id.tolist()
  with pytest.raises(validate.ConfigError,
                     match=r"--fold: 9: .* no models of that fold"):
    predict.predict(str(workdir), data_dir=data_dir, data_fold=9)
  raw = data.load(data_dir, fold=3, normalized=False).valid
  path = tmp_path / "text.npz"
  np.savez(path, group_id=raw.group_id, position=raw.position,
           text=raw.features["text"])
  text, _ = predict.predict(str(workdir / "fold3"), npz=str(path))
  assert set(text.columns["combination"]) == {"t"}
  assert len(text) == len(alone)
