"""mcur_jax.tensorboard without a training run: an epoch's tags, and runs
without tensorboardX. (What a run writes is tested on real runs in
test_train.py, a resumed run included.)"""

import sys

import pytest

from experiments.configs import mosi as mosi_config
from mcur_jax import tensorboard


def line(seed, condition, loss, f1) -> dict:
  """A per-condition metrics.jsonl line serving `condition` (null: NaN)."""
  return {"epoch": 4, "seed": seed, "condition": condition,
          "train": {"loss": loss, "sugr_weight": None},
          "valid": {condition: {"f1_non0": f1, "corr": None}},
          "valid_avg_f1_non0": f1, "learning_rate": 1e-3}


LINES = [line(0, "a", 1.0, 0.5), line(0, "t", 3.0, 0.7),
         line(1, "t", 2.0, None)]


def test_per_condition_models_and_null_metrics():
  """A combination's mean runs over the models that serve it, a null in no
  mean, and a tag with only nulls is left out; per-model tags name the
  seed and condition."""
  assert tensorboard.scalars(LINES, "f1_non0") == pytest.approx({
      "learning_rate": 1e-3, "train/loss": 2.0, "valid/a/f1_non0": 0.5,
      "valid/t/f1_non0": 0.7, "valid/avg/f1_non0": 0.6,
      "train/loss/seed0_a": 1.0, "train/loss/seed0_t": 3.0,
      "train/loss/seed1_t": 2.0, "valid/avg/f1_non0/seed0_a": 0.5,
      "valid/avg/f1_non0/seed0_t": 0.7})


def test_without_tensorboardx_a_run_says_so_once_and_writes_nothing(
    monkeypatch, tmp_path, capsys):
  """Without tensorboardX the epoch log prints one note and writes nothing,
  nor do the hparams; disabled (other processes, or
  `config.tensorboard=False`), it says nothing."""
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # Import fails.
  tensorboard.EpochLog(str(tmp_path), 0, "f1_non0", enabled=False)
  assert not capsys.readouterr().out
  log = tensorboard.EpochLog(str(tmp_path), 0, "f1_non0")
  log.write(LINES)
  log.close()
  tensorboard.write_hparams(str(tmp_path), mosi_config.get_config("tiny"), {})
  assert capsys.readouterr().out == tensorboard.MISSING + "\n"
  assert not list(tmp_path.iterdir())
