"""IEMOCAP's leave-one-session-out folds end to end: `fold=0` trains all
five sessions and pools them, a single fold equals its part of that run,
and `experiments.evaluate` pools the folds' checkpoints as training did
(tiny config, synthetic IEMOCAP-4, 1 seed, 1 epoch per fold).

Its own module so that a parallel test session (pytest-xdist, one module per
worker) runs these five trainings beside the other modules.
"""

import json
import os

import numpy as np
import pytest

from experiments.configs import iemocap as iemocap_config
from mcur_jax import inference
from mcur_jax import train
from tests import runs

# About 1 minute on 2 cores: conftest schedules the slow modules first.
pytestmark = pytest.mark.slow(minutes=1)


@pytest.fixture(scope="module")
def iemocap_dir(tmp_path_factory):
  return runs.synthetic_dir(tmp_path_factory, "iemocap4", 0.06)


def iemocap(data_dir, workdir, fold: int) -> dict:
  config = runs.tiny_config(data_dir, base=iemocap_config, fold=fold,
                            seeds=(0,), num_epochs=1, num_devices=1)
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
  assert results["folds"] == [1, 2, 3, 4, 5]
  assert json.loads((workdir / "results.json").read_text()) == results
  assert results["task"] == "classification" and results["headline"] == "wf1"
  for split in ("test", "valid"):
    for c in runs.ALL_COMBOS:
      for k, v in results[split][c].items():
        per_run = [x for r in folds for x in r[split][c][k]["per_run"]]
        assert v["per_run"] == per_run and len(per_run) == 5
        assert v["mean"] == pytest.approx(np.mean(per_run))
        if k in runs.FRACTIONS:
          assert all(0 <= x <= 1 for x in per_run)


def test_iemocap_single_fold(all_folds, iemocap_dir, tmp_path):
  """fold=2 trains session 2 only, directly in WORKDIR, exactly as fold 2
  of the fold=0 run."""
  workdir, _ = all_folds
  results = iemocap(iemocap_dir, tmp_path, fold=2)
  assert results["fold"] == 2
  assert sorted(os.listdir(tmp_path)) == [
      ".lock", "calibration.json", "checkpoints", "config.json", "data.json",
      "figures", "metrics.jsonl", "results.json", "results.md", "tb"]
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
