"""Post-hoc calibration of a run's confidences, fitted on VALIDATION only.

The decision is the headline metric's (the arg-max class; the sign of a
score, scored on non-zero labels) and its confidence is the probability that
it is right (`metrics.decisions` gives the uncalibrated one).

* classification: temperature scaling, softmax(logits / T) with T > 0
  fitted by the validation negative log-likelihood of the labels. The
  confidence is the largest calibrated probability.
* regression: two candidates, fitted by the Bernoulli negative
  log-likelihood of the validation decisions being right; the one with the
  lower validation ECE is used ("chosen"):
  - "sugr_scale": the predictive distribution SUGR implies, its scale
    multiplied by k: P = Phi(|pred| / (k sqrt(exp s))) with MSE (Gaussian),
    1 - exp(-|pred| / (k exp s)) / 2 with L1 (Laplace). It ranks the
    decisions by |pred| / scale, so by SUGR's s as well.
  - "magnitude": P = sigmoid(a |pred| + b) with a >= 0 (Platt scaling of the
    score's magnitude): it ranks by |pred| alone, the better choice where s
    knows little about the errors.

Every (seed, combination) gets a calibrator of its own (a model is less sure
with fewer modalities), and so does the seeds' ensemble per combination
(`ensemble`: the mean of the probabilities or scores). The fits are
deterministic (golden-section searches and Newton steps in NumPy), stored in
`WORKDIR/calibration.json` (`write`, `load`) so that `experiments.predict`
and `experiments.evaluate` apply exactly what training fitted.

`scores_of` computes (and `add_scores` adds to each seed's metrics) three
metrics per combination beside the uncalibrated `ece`:
`ece_cal` (ECE of the calibrated confidence, 10 bins as `metrics.ece`),
`sel_acc_50_cal` (accuracy of the decisions on the most confident half) and
`sel_gain_50_cal` (that minus the accuracy on all scored decisions).
"""

import json
import math
import os

import numpy as np

from mcur_jax import metrics
from mcur_jax import workdir as workdir_lib

FILE = "calibration.json"
VERSION = 1
SCORES = ("ece_cal", "sel_acc_50_cal", "sel_gain_50_cal")
# log T and log k are searched in [-LOG_RANGE, LOG_RANGE] (T, k in [0.02,
# 55]) by golden-section search, to 1e-9 in the log: deterministic, and
# exact for the NLL of a temperature (convex in 1 / T) and of a scale.
LOG_RANGE = 4.0
_EPS = 1e-7


def _nll(p: np.ndarray, correct: np.ndarray) -> np.ndarray:
  """Mean Bernoulli NLL of probabilities `p` [N] of `correct` [N]."""
  p = np.clip(p, _EPS, 1 - _EPS)
  return float(-np.mean(np.where(correct, np.log(p), np.log1p(-p))))


def _argmin_log(loss_of) -> float:
  """exp of the log-scale x in [-LOG_RANGE, LOG_RANGE] minimising the
  unimodal `loss_of(x)`."""
  ratio = (math.sqrt(5) - 1) / 2
  lo, hi = -LOG_RANGE, LOG_RANGE
  a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
  fa, fb = loss_of(a), loss_of(b)
  while hi - lo > 1e-9:
    if fa <= fb:
      hi, b, fb = b, a, fa
      a = hi - ratio * (hi - lo)
      fa = loss_of(a)
    else:
      lo, a, fa = a, b, fb
      b = lo + ratio * (hi - lo)
      fb = loss_of(b)
  return float(math.exp((lo + hi) / 2))


def fit_temperature(logits: np.ndarray, label: np.ndarray) -> float:
  """The T > 0 minimising the NLL of softmax(logits / T) at `label`."""
  logits = np.asarray(logits, np.float64)
  rows = np.arange(len(label))
  return _argmin_log(lambda log_t: -metrics.log_softmax(
      logits / math.exp(log_t))[rows, label].mean())


def fit_scale(margin: np.ndarray, correct: np.ndarray, task_loss: str):
  """The k > 0 minimising the NLL of P(margin / k)."""
  return _argmin_log(lambda log_k: _nll(metrics.sign_probability(
      margin / math.exp(log_k), task_loss), correct))


def fit_magnitude(x: np.ndarray, correct: np.ndarray) -> tuple[float, float]:
  """(a >= 0, b) of the logistic regression P = sigmoid(a x + b) of
  `correct` on `x` (Newton's method; a = 0 when x does not help)."""
  y = correct.astype(np.float64)
  rate = np.clip(y.mean(), 1e-3, 1 - 1e-3)
  a, b = 0.0, math.log(rate / (1 - rate))
  design = np.stack([x, np.ones_like(x)], 1)
  for _ in range(100):
    p = 1 / (1 + np.exp(-(a * x + b)))
    grad = design.T @ (p - y)
    hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-6 * np.eye(2)
    delta = np.linalg.solve(hess, grad)
    a, b = a - delta[0], b - delta[1]
    if np.abs(delta).max() < 1e-10:
      break
  if not a > 0:  # Also NaN: fall back to the constant accuracy.
    a, b = 0.0, math.log(rate / (1 - rate))
  return float(a), float(b)


def confidence(cal: dict, task: str, task_loss: str, pred: np.ndarray,
               s: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
  """(calibrated confidence [N], calibrated class probabilities [N, K] or
  None for regression) of raw outputs `pred` [N, K] and SUGR's `s` [N]."""
  pred = np.asarray(pred, np.float64)
  if task == "classification":
    probs = np.exp(metrics.log_softmax(pred / cal["temperature"]))
    return probs.max(-1), probs
  score = pred[:, 0]
  if cal["method"] == "magnitude":
    a, b = cal["magnitude"]
    return 1 / (1 + np.exp(-(a * np.abs(score) + b))), None
  margin = metrics.sugr_margin(score, np.asarray(s, np.float64), task_loss)
  return metrics.sign_probability(margin / cal["sugr_scale"], task_loss), None


def decisions(task: str, task_loss: str, pred, s, label):
  """`metrics.decisions` (correct, uncalibrated confidence, error, s of the
  scored samples) and `keep` [N], the samples scored: non-zero labels for
  regression, all for classification."""
  return (*metrics.decisions(task, pred, label, s, task_loss),
          metrics.scored(task, label))


def fit(task: str, task_loss: str, pred: np.ndarray, s: np.ndarray,
        label: np.ndarray) -> dict:
  """The calibrator of one model's validation outputs (module docstring);
  `valid_ece` gives the uncalibrated ("raw") and each candidate's ECE on
  the data it was fitted on."""
  correct, raw, _, _, keep = decisions(task, task_loss, pred, s, label)
  if task == "classification":
    cal = {"method": "temperature",
           "temperature": fit_temperature(pred, np.asarray(label))}
    cal["valid_ece"] = {"raw": metrics.ece(correct, raw), "temperature":
                        metrics.ece(correct, confidence(
                            cal, task, task_loss, pred, s)[0])}
    return cal
  score, s_kept = np.asarray(pred, np.float64)[keep, 0], np.asarray(s)[keep]
  cal = {"sugr_scale": fit_scale(metrics.sugr_margin(score, s_kept, task_loss),
                                 correct, task_loss),
         "magnitude": list(fit_magnitude(np.abs(score), correct))}
  found = {"raw": metrics.ece(correct, raw)}
  for method in ("sugr_scale", "magnitude"):
    conf, _ = confidence({**cal, "method": method}, task, task_loss,
                         pred[keep], s_kept)
    found[method] = metrics.ece(correct, conf)
  cal["method"] = min(("sugr_scale", "magnitude"), key=found.get)
  cal["valid_ece"] = found
  return cal


def ensemble(task: str, pred: np.ndarray, s: np.ndarray):
  """(pred [N, K], s [N]) of the seeds' ensemble of `pred` [S, N, K] and
  `s` [S, N]: the mean class probabilities (as log-probabilities, which
  temperature scaling takes as logits) or the mean score; s = the log of
  the mean exp(s)."""
  pred, s = np.asarray(pred, np.float64), np.asarray(s, np.float64)
  mean_s = np.log(np.exp(s).mean(0))
  if task == "classification":
    return np.log(np.exp(metrics.log_softmax(pred)).mean(0)), mean_s
  return pred.mean(0), mean_s


def fit_run(task: str, task_loss: str, outputs: dict, label: np.ndarray,
            names: list[str]) -> dict:
  """The calibrators of a run from its validation outputs (`outputs`
  {"pred": [C, S, N, K], "s": [C, S, N]} over the combinations `names`):
  {"seeds": [per seed {combination: calibrator}], "ensemble":
  {combination: calibrator}}."""
  pred, s = outputs["pred"], outputs["s"]
  return {
      "version": VERSION, "task": task, "task_loss": task_loss,
      "fitted_on": "valid",
      "seeds": [{c: fit(task, task_loss, pred[i, j], s[i, j], label)
                 for i, c in enumerate(names)} for j in range(pred.shape[1])],
      "ensemble": {c: fit(task, task_loss,
                          *ensemble(task, pred[i], s[i]), label)
                   for i, c in enumerate(names)}}


def scores_of(cal: dict, task: str, task_loss: str, pred, s, label) -> dict:
  """`SCORES` of one model's outputs under its calibrator."""
  correct, _, _, _, keep = decisions(task, task_loss, pred, s, label)
  conf, _ = confidence(cal, task, task_loss, np.asarray(pred)[keep],
                       np.asarray(s)[keep])
  if not len(correct):
    return dict.fromkeys(SCORES, float("nan"))
  top = float(metrics.coverage_curve(correct, -conf, [0.5])[0])
  return {"ece_cal": metrics.ece(correct, conf), "sel_acc_50_cal": top,
          "sel_gain_50_cal": top - float(correct.mean())}


def add_scores(per_seed: list[dict], run_cal: dict, outputs: dict,
               label: np.ndarray, names: list[str]) -> None:
  """Adds `SCORES` to the fixed protocol's per-seed metrics `per_seed`
  ([{combination: metrics}]) in place, from the routed outputs."""
  task, task_loss = run_cal["task"], run_cal["task_loss"]
  for j, found in enumerate(per_seed):
    for i, c in enumerate(names):
      found[c].update(scores_of(run_cal["seeds"][j][c], task, task_loss,
                                outputs["pred"][i, j], outputs["s"][i, j],
                                label))


def write(workdir: str, run_cal: dict) -> None:
  workdir_lib.write_json(os.path.join(workdir, FILE), run_cal)


def load(workdir: str) -> dict | None:
  """The run's calibration.json, or None for a run finished before
  calibration existed."""
  path = os.path.join(workdir, FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
