"""Post-hoc calibration (`calibration.py`) against known generating models, in NumPy."""

import math

import numpy as np
import pytest

from mcur_jax import calibration
from mcur_jax import metrics


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _classes(rng, n, temperature):
  """Logits whose labels are drawn from softmax(logits / temperature)."""
  logits = rng.normal(0, 3, (n, 4))
  p = _softmax(logits / temperature)
  label = (p.cumsum(-1) > rng.random((n, 1))).argmax(-1)
  return logits, label


def test_temperature_recovers_the_generating_temperature():
  # 20,000 draws: the NLL optimum of T sits within a few percent of the
  # generating 2.5 (its standard error is about 1 %).
  logits, label = _classes(np.random.default_rng(0), 20_000, 2.5)
  assert calibration.fit_temperature(logits, label) == pytest.approx(
      2.5, rel=0.05)


def test_temperature_minimises_the_nll():
  """The fit is the optimum: nudging T either way raises the NLL."""
  logits, label = _classes(np.random.default_rng(1), 500, 0.7)
  t = calibration.fit_temperature(logits, label)
  nll = lambda t: -np.log(_softmax(logits / t)[np.arange(500), label]).mean()
  assert nll(t) <= min(nll(t * 1.01), nll(t / 1.01))


def test_classification_calibration_lowers_held_out_ece():
  """Fitted on one half of over-confident logits, the other half's ECE
  falls from about 0.2 to the sampling noise of 5,000 decisions."""
  logits, label = _classes(np.random.default_rng(2), 10_000, 3.0)
  fit_half, test_half = slice(0, 5000), slice(5000, None)
  s = np.zeros(10_000)
  cal = calibration.fit("classification", "mse", logits[fit_half],
                        s[fit_half], label[fit_half])
  assert cal["method"] == "temperature"
  before = calibration.scores_of({"method": "temperature", "temperature": 1},
                                 "classification", "mse", logits[test_half],
                                 s[test_half], label[test_half])
  after = calibration.scores_of(cal, "classification", "mse",
                                logits[test_half], s[test_half],
                                label[test_half])
  assert before["ece_cal"] > 0.15
  assert after["ece_cal"] < 0.03
  conf, probs = calibration.confidence(cal, "classification", "mse",
                                       logits[:3], s[:3])
  np.testing.assert_allclose(probs, _softmax(logits[:3] / cal["temperature"]))
  np.testing.assert_allclose(conf, probs.max(-1))


def test_magnitude_recovers_a_logistic_model():
  rng = np.random.default_rng(3)
  x = rng.exponential(1.0, 40_000)
  correct = rng.random(40_000) < 1 / (1 + np.exp(-(1.5 * x - 0.4)))
  a, b = calibration.fit_magnitude(x, correct)
  # Maximum likelihood on 40,000 draws: about 0.03 standard error each.
  assert (a, b) == (pytest.approx(1.5, abs=0.1), pytest.approx(-0.4, abs=0.1))


def test_magnitude_never_ranks_backwards():
  """A magnitude that predicts errors gets slope 0 (the constant rate),
  not a negative slope."""
  rng = np.random.default_rng(4)
  x = rng.exponential(1.0, 2000)
  correct = rng.random(2000) < 1 / (1 + np.exp(x - 1))
  a, b = calibration.fit_magnitude(x, correct)
  assert a == 0.0
  assert 1 / (1 + math.exp(-b)) == pytest.approx(correct.mean())


@pytest.mark.parametrize("task_loss", ["mse", "l1"])
def test_sugr_scale_recovers_the_scale_of_the_predictive_distribution(
    task_loss):
  """Labels drawn around the predictions with k times the scale SUGR's s
  claims: the fitted factor is k."""
  rng = np.random.default_rng(5)
  n, k = 40_000, 1.8
  pred = rng.normal(0, 1.5, n)
  s = rng.normal(0, 0.5, n)
  scale = np.sqrt(np.exp(s)) if task_loss == "mse" else np.exp(s)
  noise = (rng.normal(0, 1, n) if task_loss == "mse"
           else rng.laplace(0, 1, n))
  label = pred + k * scale * noise
  cal = calibration.fit("regression", task_loss, pred[:, None], s, label)
  # Maximum likelihood of one factor from 40,000 signs: within a few %.
  assert cal["sugr_scale"] == pytest.approx(k, rel=0.05)


def test_regression_prefers_magnitude_where_s_is_noise():
  """s unrelated to the errors, |pred| the whole story: "magnitude" has the
  lower validation ECE and is chosen; label-0 samples are not scored."""
  rng = np.random.default_rng(6)
  n = 20_000
  pred = rng.normal(0, 1.0, n)
  label = np.where(rng.random(n) < 1 / (1 + np.exp(-3 * np.abs(pred))),
                   np.sign(pred), -np.sign(pred)) * rng.uniform(0.5, 3, n)
  label[:100] = 0.0
  s = rng.normal(0, 2.0, n)
  cal = calibration.fit("regression", "mse", pred[:, None], s, label)
  assert cal["method"] == "magnitude"
  assert cal["valid_ece"]["magnitude"] < cal["valid_ece"]["sugr_scale"]
  scores = calibration.scores_of(cal, "regression", "mse", pred[:, None], s,
                                 label)
  kept = label != 0
  correct = (pred[kept] > 0) == (label[kept] > 0)
  # The magnitude's confidence, Platt scaling of |pred| with the fitted
  # (a, b), computed here rather than by calibration.confidence.
  a, b = cal["magnitude"]
  conf = 1 / (1 + np.exp(-(a * np.abs(pred[kept]) + b)))
  assert scores["ece_cal"] == pytest.approx(metrics.ece(correct, conf))
  top = np.argsort(-conf, kind="stable")[:math.ceil(0.5 * kept.sum())]
  assert scores["sel_acc_50_cal"] == pytest.approx(correct[top].mean())
  assert scores["sel_gain_50_cal"] == pytest.approx(
      correct[top].mean() - correct.mean())


def test_ensemble_averages_probabilities_and_scores():
  rng = np.random.default_rng(7)
  logits, s = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5))
  pred, mean_s = calibration.ensemble("classification", logits, s)
  np.testing.assert_allclose(np.exp(pred), _softmax(logits).mean(0))
  np.testing.assert_allclose(mean_s, np.log(np.exp(s).mean(0)))
  score, _ = calibration.ensemble("regression", logits[..., :1], s)
  np.testing.assert_allclose(score, logits[..., :1].mean(0))


def test_fit_run_has_a_calibrator_per_seed_combination_and_ensemble(tmp_path):
  rng = np.random.default_rng(8)
  outputs = {"pred": rng.normal(size=(2, 3, 50, 4)),
             "s": rng.normal(size=(2, 3, 50))}
  label = rng.integers(0, 4, 50)
  fitted = calibration.fit_run("classification", "ce", outputs, label,
                               ["a", "at"])
  assert [sorted(x) for x in fitted["seeds"]] == [["a", "at"]] * 3
  assert fitted["seeds"][1]["at"] == calibration.fit(
      "classification", "ce", outputs["pred"][1, 1], outputs["s"][1, 1],
      label)
  assert sorted(fitted["ensemble"]) == ["a", "at"]
  calibration.write(str(tmp_path), fitted)
  assert calibration.load(str(tmp_path)) == fitted  # JSON floats round-trip.
  assert calibration.load(str(tmp_path / "nothing")) is None
