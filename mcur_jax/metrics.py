"""Evaluation metrics (DESIGN section 5), in NumPy, with scikit-learn's semantics.

MOSI / MOSEI (regression scores in [-3, 3]):
  * `acc2_non0`, `f1_non0`: accuracy and weighted F1 of (pred > 0) vs
    (label > 0) over the utterances whose label is not 0 (GCNet, MoMKE).
  * `acc2_has0`, `f1_has0`: the same with (x >= 0) over all utterances.
  * `mae`, `corr`: mean absolute error and Pearson correlation over all
    utterances (MMSA); `corr` is NaN when either side is constant.
  * `acc7`: equality of round(clip(x, -3, 3)).
  * `mae_non0`, `corr_non0`: MAE and Corr over the non-zero labels only,
    as MoMKE computes them, for comparison with its papers.
IEMOCAP (classes):
  * `wa` accuracy, `ua` macro recall (MoMKE's "UA"), `wf1` weighted F1,
    `mf1` macro F1 (MMIN).
Averages run over the classes present in labels or predictions, and a
precision or recall with a zero denominator counts as 0, as in
scikit-learn's defaults. A metric over an empty subset is NaN.

Uncertainty (`uncertainty`), from the SUGR log-variance `s` of each
prediction. The decision scored is the one of the headline metric (the sign
on non-zero labels; the argmax class), and its confidence is:
  * regression: the probability that the label has the predicted sign under
    the predictive distribution SUGR implies. With the L1 loss the optimum
    of `exp(-s) |e| + s` is `exp(s) = E|e|`, a Laplace scale b, so
    P = 1 - exp(-|pred| / b) / 2; with MSE, `exp(s) = E e^2`, a Gaussian
    variance, so P = Phi(|pred| / sqrt(exp(s))).
  * classification: the largest softmax probability (SUGR's `s` does not
    rescale the logits, so it gives no probability of its own).
  * `ece`: expected calibration error of that confidence, 10 equal-width
    bins over [0, 1], bins weighted by their share of samples.
  * `sel_acc_80`, `sel_acc_50`: accuracy of the decision on the 80% / 50%
    of samples with the smallest `s` (the most uncertain withheld).
  * `s_err_spearman`: Spearman correlation between `s` and the per-sample
    error (|pred - label|; the cross-entropy for classes): positive when
    `s` knows which predictions are bad.
`s` is read as the uncertainty head gives it. SUGR's loss reads it clipped
to [-sugr_s_max, sugr_s_max] and gives it no gradient past the clip, where
it still ranks (a clip would tie it there). On the default runs MOSI's `s`
stays inside (standard MOSI's test, 5 seeds: -2.76 to 2.12, the top from
audio alone), while IEMOCAP-4's text falls below -3
for a third of the test utterances (cross-entropy's optimum log l goes far
below -3 for confident classes), where IEMOCAP's calibration (temperature
scaling) does not read `s`.

The headline metric (model selection, the Avg column) is `f1_non0` for
regression and `wf1` for classification.
"""

import math

import numpy as np

HEADLINE = {"regression": "f1_non0", "classification": "wf1"}
# The regression task losses (losses.TASK_LOSSES) and so the predictive
# distributions the uncertainty metrics know: Laplace, Gaussian.
REGRESSION_LOSSES = ("l1", "mse")


def _per_class(true: np.ndarray, pred: np.ndarray):
  """(recall, f1, support) per class present in `true` or `pred`."""
  classes = np.union1d(true, pred)
  hit = (true[:, None] == classes) & (pred[:, None] == classes)
  tp = hit.sum(0).astype(np.float64)
  support = (true[:, None] == classes).sum(0)
  predicted = (pred[:, None] == classes).sum(0)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp),
                        where=predicted > 0)
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp),
                 where=denom > 0)
  return recall, f1, support


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
  return float(np.mean(true == pred)) if len(true) else float("nan")


def weighted_f1(true: np.ndarray, pred: np.ndarray) -> float:
  if not len(true):
    return float("nan")
  _, f1, support = _per_class(true, pred)
  return float(np.sum(f1 * support) / support.sum())


def macro(true: np.ndarray, pred: np.ndarray, which: str) -> float:
  """Macro recall ("recall") or macro F1 ("f1")."""
  if not len(true):
    return float("nan")
  recall, f1, _ = _per_class(true, pred)
  return float(np.mean(recall if which == "recall" else f1))


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  # A constant side is tested as such: centring a float64 constant can
  # leave a residue of 1e-16, which would give a correlation of 1e-17.
  if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return float("nan")
  x, y = x - x.mean(), y - y.mean()
  denom = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom > 0 else float("nan")


def seven(x, xp=np):
  """The 7 classes of sentiment scores as the field's code (MMSA/MulT) has
  them for Acc-7: clip to [-3, 3], then round halves to even (-2.5 -> -2,
  0.5 -> 0, 1.5 -> 2); `xp` is numpy or jax.numpy (MCB-CL's `seven`
  categories, `losses.category`)."""
  return xp.round(xp.clip(x, -3, 3))


def regression(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
  """MOSI/MOSEI metrics of predicted scores [N] against labels [N]."""
  pred, label = np.asarray(pred, np.float64), np.asarray(label, np.float64)
  nonzero = label != 0
  non0 = (label[nonzero] > 0, pred[nonzero] > 0)
  has0 = (label >= 0, pred >= 0)
  return {
      "acc2_non0": accuracy(*non0), "f1_non0": weighted_f1(*non0),
      "acc2_has0": accuracy(*has0), "f1_has0": weighted_f1(*has0),
      "mae": float(np.mean(np.abs(pred - label))),
      "corr": pearson(pred, label),
      "acc7": accuracy(seven(label), seven(pred)),
      "mae_non0": (float(np.mean(np.abs(pred - label)[nonzero]))
                   if nonzero.any() else float("nan")),
      "corr_non0": pearson(pred[nonzero], label[nonzero]),
  }


def classification(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
  """IEMOCAP metrics of predicted classes [N] against labels [N]."""
  pred, label = np.asarray(pred), np.asarray(label)
  return {"wa": accuracy(label, pred), "ua": macro(label, pred, "recall"),
          "wf1": weighted_f1(label, pred), "mf1": macro(label, pred, "f1")}


def sugr_margin(pred: np.ndarray, s: np.ndarray, task_loss: str) -> np.ndarray:
  """|pred| over the scale of the predictive distribution SUGR's `s`
  implies (module docstring): exp(s) (Laplace, "l1"), sqrt(exp(s))
  (Gaussian, "mse")."""
  scale = np.exp(s) if task_loss == "l1" else np.sqrt(np.exp(s))
  return np.abs(pred) / scale


def sign_probability(margin: np.ndarray, task_loss: str) -> np.ndarray:
  """P(the label has the predicted sign) at |pred| / scale = `margin`:
  1 - exp(-margin) / 2 (Laplace), Phi(margin) (Gaussian)."""
  if task_loss == "mse":
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * (1 + erf(margin / math.sqrt(2)))
  return 1 - 0.5 * np.exp(-margin)


def decisions(task: str, outputs: np.ndarray, label: np.ndarray, s: np.ndarray,
              task_loss: str):
  """(correct, confidence, error, s) over the samples the headline decision
  is defined on (non-zero labels for regression); see the module docstring.
  `task_loss` (the run's `config.task_loss`) picks a regression score's
  predictive distribution: "l1" Laplace, "mse" Gaussian; there is no
  default, as a wrong one silently changes `ece`."""
  if task == "regression" and task_loss not in REGRESSION_LOSSES:
    raise ValueError(f"regression uncertainty needs task_loss in "
                     f"{REGRESSION_LOSSES}, got {task_loss!r}")
  outputs = np.asarray(outputs, np.float64)
  label, s = np.asarray(label), np.asarray(s, np.float64)
  if task == "regression":
    keep = scored(task, label)
    pred, label, s = outputs[keep, 0], label[keep], s[keep]
    confidence = sign_probability(sugr_margin(pred, s, task_loss), task_loss)
    return (pred > 0) == (label > 0), confidence, np.abs(pred - label), s
  log_p = log_softmax(outputs)
  error = -log_p[np.arange(len(label)), label]
  return (outputs.argmax(-1) == label, np.exp(log_p.max(-1)), error, s)


def scored(task: str, label) -> np.ndarray:
  """[N] bool: the samples the uncertainty metrics score, the non-zero
  labels for regression (a sign decision), all for classification."""
  label = np.asarray(label)
  return label != 0 if task == "regression" else np.ones(len(label), bool)


def log_softmax(logits: np.ndarray) -> np.ndarray:
  """log softmax over the last axis, in the inputs' (float64) precision."""
  z = logits - logits.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ece(correct: np.ndarray, confidence: np.ndarray, bins: int = 10) -> float:
  """Expected calibration error with `bins` equal-width bins over [0, 1],
  each [lo, hi) but the last, which holds 1.0 too (Guo et al.'s code uses
  (lo, hi]: they differ only for a confidence exactly on an edge, here a
  regression score of exactly 0, confidence 0.5)."""
  if not len(correct):
    return float("nan")
  total = 0.0
  for _, count, accuracy, mean in zip(*reliability_bins(correct, confidence,
                                                          bins)):
    total += count * abs(accuracy - mean)
  return float(total / len(correct))


def reliability_bins(correct: np.ndarray, confidence: np.ndarray,
                     bins: int = 10):
  """The non-empty bins of `ece` (and of the reliability diagram): their
  indices, sample counts, accuracies and mean confidences."""
  which = np.minimum((confidence * bins).astype(int), bins - 1)
  used = np.unique(which)
  in_bin = [which == b for b in used]
  return (used, np.array([m.sum() for m in in_bin]),
          np.array([correct[m].mean() for m in in_bin]),
          np.array([confidence[m].mean() for m in in_bin]))


def coverage_curve(correct: np.ndarray, uncertainty: np.ndarray,
                   coverages=np.linspace(0.1, 1.0, 10)):
  """Accuracy on the ceil(q N) least uncertain samples, for each coverage q.

  Samples tied in `uncertainty` at the cut count at their tie group's mean
  accuracy (the expectation over the orders of the ties), so an uncertainty
  that does not separate samples withholds none by sample order: a
  constant one gives the accuracy on all at every coverage.
  """
  if not len(correct):
    return np.full(len(coverages), np.nan)
  order = np.argsort(uncertainty, kind="stable")
  hit = np.asarray(correct, np.float64)[order]
  _, start, group, size = np.unique(np.asarray(uncertainty)[order],
                                    return_index=True, return_inverse=True,
                                    return_counts=True)
  before = np.concatenate([[0.0], np.cumsum(hit)])[start]
  mean = np.bincount(group, hit) / size
  counts = np.maximum(np.ceil(np.asarray(coverages) * len(correct) - 1e-9),
                      1).astype(int)
  g = group[counts - 1]
  return (before[g] + (counts - start[g]) * mean[g]) / counts


def _ranks(x: np.ndarray) -> np.ndarray:
  """Ranks with ties given their average rank (as scipy's rankdata)."""
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x))
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  sums = np.bincount(inverse, ranks)
  return sums[inverse] / counts[inverse]


def uncertainty(task: str, outputs: np.ndarray, label: np.ndarray,
                s: np.ndarray, task_loss: str) -> dict[str, float]:
  """`ece`, `sel_acc_80`, `sel_acc_50`, `s_err_spearman` (module docstring)."""
  return uncertainty_of(*decisions(task, outputs, label, s, task_loss))


def uncertainty_of(correct: np.ndarray, confidence: np.ndarray,
                   error: np.ndarray, s: np.ndarray) -> dict[str, float]:
  """`uncertainty` from the outputs of `decisions`, for a caller that needs
  both (the uncertainty figure)."""
  sel_80, sel_50 = coverage_curve(correct, s, [0.8, 0.5])
  return {"ece": ece(correct, confidence),
          "sel_acc_80": float(sel_80), "sel_acc_50": float(sel_50),
          "s_err_spearman": pearson(_ranks(s), _ranks(error))}


def compute(task: str, outputs: np.ndarray, label: np.ndarray,
            s: np.ndarray | None = None, task_loss: str | None = None):
  """Metrics of raw model outputs [N, K] (scores when K = 1), and with the
  SUGR scores `s` [N] and the run's `task_loss` also the uncertainty
  metrics. Outputs or scores that are not all finite make every metric
  NaN: scored as they are, a NaN score would count as a negative decision
  and a NaN logit row as class 0, and a model would be selected or
  reported on its numbers."""
  ok, ok_s = np.isfinite(outputs), s is None or np.isfinite(s)
  outputs = np.where(ok, outputs, 0)
  if task == "regression":
    out = regression(outputs[:, 0], label)
  else:
    out = classification(outputs.argmax(-1), label)
  if s is not None:
    out.update(uncertainty(task, outputs, label, np.where(ok_s, s, 0),
                           task_loss))
  return out if np.all(ok) and np.all(ok_s) else dict.fromkeys(
      out, float("nan"))
