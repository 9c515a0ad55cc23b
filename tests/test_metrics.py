"""The metrics of DESIGN section 5 against scikit-learn and NumPy."""

import itertools
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from mcur_jax import metrics


def sk_classification(pred, label):
  return {
      "wa": skm.accuracy_score(label, pred),
      "ua": skm.recall_score(label, pred, average="macro", zero_division=0),
      "wf1": skm.f1_score(label, pred, average="weighted", zero_division=0),
      "mf1": skm.f1_score(label, pred, average="macro", zero_division=0),
  }


def sk_binary(true, pred):
  """(accuracy, weighted F1), NaN on an empty subset."""
  if not len(true):
    return math.nan, math.nan
  return (skm.accuracy_score(true, pred),
          skm.f1_score(true, pred, average="weighted", zero_division=0))


def np_corr(pred, label):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return np.corrcoef(pred, label)[0, 1] if len(pred) > 1 else math.nan


def sk_regression(pred, label):
  """Non0 over label != 0 with > 0; Has0 over all with >= 0."""
  pred, label = np.asarray(pred, float), np.asarray(label, float)
  nz = label != 0
  acc2_non0, f1_non0 = sk_binary(label[nz] > 0, pred[nz] > 0)
  acc2_has0, f1_has0 = sk_binary(label >= 0, pred >= 0)
  seven = lambda x: np.round(np.clip(x, -3, 3))
  return {
      "acc2_non0": acc2_non0, "f1_non0": f1_non0,
      "acc2_has0": acc2_has0, "f1_has0": f1_has0,
      "mae": np.mean(np.abs(pred - label)),
      "corr": np_corr(pred, label),
      "acc7": skm.accuracy_score(seven(label), seven(pred)),
      "mae_non0": (skm.mean_absolute_error(label[nz], pred[nz]) if nz.any()
                   else math.nan),
      "corr_non0": np_corr(pred[nz], label[nz]),
  }


def assert_same(got, want):
  assert set(got) == set(want)
  for k in want:
    if math.isnan(want[k]):
      assert math.isnan(got[k]), k
      continue
    np.testing.assert_allclose(got[k], want[k], rtol=1e-10, atol=1e-12,
                               err_msg=k)


def mosi_labels(rng, n):
  """Scores on the MOSI grid of thirds in [-3, 3], exact zeros included."""
  return rng.integers(-9, 10, n) / 3


@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_sklearn(seed):
  rng = np.random.default_rng(seed)
  k = int(rng.integers(2, 7))
  label = rng.integers(0, k, 40)
  pred = np.where(rng.random(40) < 0.5, label, rng.integers(0, k, 40))
  assert_same(metrics.classification(pred, label),
              sk_classification(pred, label))


@pytest.mark.parametrize("seed", range(5))
def test_regression_matches_sklearn(seed):
  """Predictions partly outside [-3, 3], labels with exact zeros."""
  rng = np.random.default_rng(seed)
  label = mosi_labels(rng, 60)
  pred = np.clip(label + rng.normal(0, 1.5, 60), -4.5, 4.5)
  assert (label == 0).any() and (np.abs(pred) > 3).any()
  assert_same(metrics.regression(pred, label), sk_regression(pred, label))


def test_class_absent_from_predictions():
  label = np.array([0, 1, 2, 3, 3, 2, 1, 0])
  pred = np.array([0, 1, 2, 2, 2, 2, 1, 0])  # 3 never predicted.
  got = metrics.classification(pred, label)
  assert_same(got, sk_classification(pred, label))
  assert got["ua"] == pytest.approx(0.75)


def test_predicted_class_absent_from_labels():
  label = np.array([0, 0, 1, 1, 1])
  pred = np.array([0, 2, 1, 1, 2])  # 2 never a label.
  got = metrics.classification(pred, label)
  assert_same(got, sk_classification(pred, label))
  # Macro averages run over 3 classes: recall (1/2 + 2/3 + 0) / 3.
  assert got["ua"] == pytest.approx((0.5 + 2 / 3) / 3)


def test_single_sample():
  assert_same(metrics.classification(np.array([2]), np.array([2])),
              sk_classification(np.array([2]), np.array([2])))
  assert_same(metrics.classification(np.array([1]), np.array([2])),
              sk_classification(np.array([1]), np.array([2])))
  got = metrics.regression(np.array([1.2]), np.array([0.4]))
  assert_same(got, sk_regression([1.2], [0.4]))
  assert math.isnan(got["corr"])
  assert got["acc2_non0"] == 1.0 and got["mae"] == pytest.approx(0.8)


def test_no_nonzero_label_makes_non0_nan():
  """All labels 0: Non0 metrics are NaN, Has0 and the rest are defined."""
  label = np.zeros(6)
  pred = np.array([-1.0, 0.5, 0.0, 2.0, -0.2, 0.1])
  got = metrics.regression(pred, label)
  assert math.isnan(got["acc2_non0"]) and math.isnan(got["f1_non0"])
  assert math.isnan(got["corr"])  # Constant labels.
  want = sk_regression(pred, label)
  for k in ("acc2_has0", "f1_has0", "mae", "acc7"):
    assert got[k] == pytest.approx(want[k])
  assert got["acc2_has0"] == pytest.approx(4 / 6)


def test_constant_predictions_give_nan_corr():
  label = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
  got = metrics.regression(np.full(5, 0.7), label)
  assert math.isnan(got["corr"])
  want = sk_regression(np.full(5, 0.7), label)
  for k in ("acc2_non0", "f1_non0", "acc2_has0", "f1_has0", "mae", "acc7"):
    assert got[k] == pytest.approx(want[k])


def test_zero_label_and_zero_prediction_semantics():
  """Non0 drops label 0 and counts pred 0 as negative; Has0 keeps label 0 as
  non-negative and counts pred 0 as non-negative."""
  label = np.array([0.0, 0.0, 1.0, -1.0])
  pred = np.array([-0.5, 0.5, 1.0, -1.0])
  got = metrics.regression(pred, label)
  assert got["acc2_non0"] == 1.0
  assert got["acc2_has0"] == 0.75
  got = metrics.regression(np.array([0.0, -1.0]), np.array([-1.0, -2.0]))
  assert got["acc2_non0"] == 1.0
  assert got["acc2_has0"] == 0.5
  got = metrics.regression(np.array([0.0, 1.0]), np.array([2.0, 1.0]))
  assert got["acc2_non0"] == 0.5
  assert got["acc2_has0"] == 1.0


def test_acc7_clips_predictions_outside_range():
  """round(clip(x, -3, 3)): 5 -> 3, -4 -> -3, 3.4 -> 3, -2.6 -> -3, 2.4 -> 2."""
  pred = np.array([5.0, -4.0, 3.4, -2.6, 2.4])
  label = np.array([3.0, -3.0, 3.0, -3.0, 3.0])
  assert metrics.regression(pred, label)["acc7"] == pytest.approx(0.8)


def test_helpers_match_sklearn_and_numpy():
  rng = np.random.default_rng(11)
  true, pred = rng.integers(0, 4, 30), rng.integers(0, 5, 30)
  assert metrics.accuracy(true, pred) == pytest.approx(
      skm.accuracy_score(true, pred))
  assert metrics.weighted_f1(true, pred) == pytest.approx(
      skm.f1_score(true, pred, average="weighted", zero_division=0))
  assert metrics.macro(true, pred, "recall") == pytest.approx(
      skm.recall_score(true, pred, average="macro", zero_division=0))
  assert metrics.macro(true, pred, "f1") == pytest.approx(
      skm.f1_score(true, pred, average="macro", zero_division=0))
  x, y = rng.normal(size=30), rng.normal(size=30)
  assert metrics.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
  assert math.isnan(metrics.pearson(np.ones(4), y[:4]))


def test_helpers_on_empty_input_are_nan():
  empty = np.zeros(0, int)
  assert math.isnan(metrics.accuracy(empty, empty))
  assert math.isnan(metrics.weighted_f1(empty, empty))
  assert math.isnan(metrics.macro(empty, empty, "recall"))
  assert math.isnan(metrics.macro(empty, empty, "f1"))


def test_constant_float64_side_gives_nan_corr():
  # The mean of this constant is off it by 1e-16 in float64, so centring
  # alone leaves a residue that correlated at about 1e-17, not NaN.
  x = np.full(2552, -0.1321048632913019)
  assert x.mean() != x[0]
  y = np.random.default_rng(0).normal(size=2552)
  assert math.isnan(metrics.pearson(x, y))
  assert math.isnan(metrics.pearson(y, x))


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_non_finite_outputs_make_every_metric_nan(task):
  """Scored as they are, NaN scores would count as negative decisions
  and NaN logits as class 0; every metric is NaN instead, so such a model
  is neither selected (NaN > best is False) nor reported with numbers."""
  rng = np.random.default_rng(4)
  if task == "regression":
    label, outputs = mosi_labels(rng, 20), rng.normal(size=(20, 1))
  else:
    label, outputs = rng.integers(0, 4, 20), rng.normal(size=(20, 4))
  s = rng.normal(size=20)
  finite = metrics.compute(task, outputs, label, s, "mse")
  assert not any(math.isnan(v) for v in finite.values())
  bad_outputs, bad_s = outputs.copy(), s.copy()
  bad_outputs[3:6, 0] = [np.nan, np.inf, -np.inf]
  bad_s[3] = np.nan
  for o, u in [(bad_outputs, s), (outputs, bad_s)]:
    got = metrics.compute(task, o, label, u, "mse")
    assert got.keys() == finite.keys()
    assert all(math.isnan(v) for v in got.values()), got


def test_compute_reads_raw_outputs():
  """Regression: column 0 as the score; classification: argmax of logits."""
  rng = np.random.default_rng(3)
  label = mosi_labels(rng, 20)
  scores = label + rng.normal(0, 1, 20)
  assert_same(metrics.compute("regression", scores[:, None], label),
              sk_regression(scores, label))
  logits = rng.normal(size=(20, 4))
  classes = rng.integers(0, 4, 20)
  assert_same(metrics.compute("classification", logits, classes),
              sk_classification(logits.argmax(-1), classes))


def test_headline_metric_follows_design():
  """F1 Non0 for MOSI/MOSEI, weighted F1 for IEMOCAP."""
  assert metrics.HEADLINE == {"regression": "f1_non0",
                              "classification": "wf1"}


# Uncertainty
# -----------


def np_ece(correct, confidence, bins=10):
  """ECE by explicit loops over the bins [b/10, (b+1)/10)."""
  total = 0.0
  for b in range(bins):
    lo, hi = b / bins, (b + 1) / bins
    in_bin = (confidence >= lo) & ((confidence < hi) | (b == bins - 1))
    if in_bin.any():
      total += in_bin.sum() * abs(correct[in_bin].mean()
                                  - confidence[in_bin].mean())
  return total / len(correct)


def test_ece_and_coverage_match_references():
  rng = np.random.default_rng(5)
  confidence = rng.uniform(0.3, 1.0, 200)
  correct = rng.random(200) < confidence ** 2
  assert metrics.ece(correct, confidence) == pytest.approx(
      np_ece(correct, confidence))
  uncertainty = rng.normal(size=200)
  order = np.argsort(uncertainty)
  for q in (0.1, 0.5, 0.8, 1.0):
    k = int(np.ceil(q * 200))
    [got] = metrics.coverage_curve(correct, uncertainty, [q])
    assert got == pytest.approx(correct[order[:k]].mean())


def test_coverage_counts_ties_at_the_cut_at_their_mean():
  """Tied uncertainties withhold nobody by sample order: the reference is
  the mean over every order of the ties (all 4! orders of a tie group of
  4, brute force), and a constant uncertainty gives the accuracy on all."""
  correct = np.array([1, 0, 0, 1, 1, 0, 1], bool)
  uncertainty = np.array([0.2, 0.5, 0.5, 0.1, 0.5, 0.9, 0.5])
  tied = np.flatnonzero(uncertainty == 0.5)
  for q in (0.3, 0.5, 0.6, 0.8):
    k = int(np.ceil(q * 7))
    want = np.mean([correct[np.r_[3, 0, list(p), 5]][:k].mean()
                    for p in itertools.permutations(tied)])
    [got] = metrics.coverage_curve(correct, uncertainty, [q])
    assert got == pytest.approx(want)
  assert metrics.coverage_curve(correct, np.zeros(7), [0.5])[0] == (
      pytest.approx(correct.mean()))


@pytest.mark.parametrize("task_loss", ["l1", "mse"])
def test_sign_confidence_is_calibrated_under_its_own_model(task_loss):
  """Labels drawn from the predictive distribution SUGR implies (Laplace
  with scale exp(s) for L1, Gaussian with variance exp(s) for MSE) give an
  ECE near 0, and a deliberately overconfident s a large one."""
  rng = np.random.default_rng(0)
  n = 40000
  pred, s = rng.normal(0, 1, n), rng.uniform(-1.5, 1, n)
  if task_loss == "l1":
    label = pred + rng.laplace(0, np.exp(s))
  else:
    label = pred + rng.normal(0, np.sqrt(np.exp(s)))
  got = metrics.uncertainty("regression", pred[:, None], label, s, task_loss)
  assert got["ece"] < 0.01
  assert metrics.uncertainty("regression", pred[:, None], label, s - 3,
                             task_loss)["ece"] > 0.1
  # s is the scale of the error: larger s, larger errors.
  assert got["s_err_spearman"] > 0.3
  assert got["sel_acc_50"] > got["sel_acc_80"]


def test_classification_uncertainty_against_scipy():
  """Confidence = max softmax probability; the Spearman correlation of s
  and the cross-entropy equals scipy's."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(2)
  logits, label = rng.normal(size=(300, 4)) * 2, rng.integers(0, 4, 300)
  s = rng.normal(size=300)
  correct, confidence, error, _ = metrics.decisions(
      "classification", logits, label, s, "ce")
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(confidence, p.max(-1))
  np.testing.assert_allclose(error, -np.log(p[np.arange(300), label]))
  np.testing.assert_array_equal(correct, logits.argmax(-1) == label)
  got = metrics.uncertainty("classification", logits, label, s, "ce")
  assert got["s_err_spearman"] == pytest.approx(
      stats.spearmanr(s, error).statistic)
  assert got["ece"] == pytest.approx(np_ece(correct, confidence))


def test_regression_uncertainty_needs_the_run_task_loss():
  """No silent default distribution: a regression score's confidence needs
  the run's task loss (L1 and MSE give different ECEs), so without it, or
  with a non-regression loss, the uncertainty metrics refuse."""
  rng = np.random.default_rng(3)
  pred, label, s = rng.normal(size=(50, 1)), rng.normal(size=50), rng.normal(
      size=50)
  assert (metrics.uncertainty("regression", pred, label, s, "l1")["ece"]
          != metrics.uncertainty("regression", pred, label, s, "mse")["ece"])
  for task_loss in (None, "ce", "MSE"):
    with pytest.raises(ValueError, match="task_loss"):
      metrics.compute("regression", pred, label, s, task_loss)
  assert "ece" not in metrics.compute("regression", pred, label)


def test_uncertainty_scores_non0_samples_and_handles_ties():
  """Regression decisions drop zero labels; tied s values get average ranks
  (Spearman = 1 for s = the error itself, with ties)."""
  label = np.array([0.0, 1.0, -1.0, 2.0, -2.0])
  pred = np.array([[0.3], [0.5], [0.5], [1.0], [-3.0]])
  correct, _, error, s = metrics.decisions("regression", pred, label,
                                           np.zeros(5), "l1")
  np.testing.assert_array_equal(correct, [True, False, True, True])
  np.testing.assert_allclose(error, [0.5, 1.5, 1.0, 1.0])
  assert len(s) == 4
  got = metrics.uncertainty("regression", pred, label,
                            np.array([9.0, 0.5, 1.5, 1.0, 1.0]), "l1")
  assert got["s_err_spearman"] == pytest.approx(1.0)
  empty = metrics.uncertainty("regression", pred, np.zeros(5), np.zeros(5),
                              "l1")
  assert all(math.isnan(v) for v in empty.values())
