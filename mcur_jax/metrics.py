"""Evaluation metrics (DESIGN section 5), in NumPy, with scikit-learn's semantics.

MOSI / MOSEI (regression scores in [-3, 3]):
  * `acc2_non0`, `f1_non0`: accuracy and weighted F1 of (pred > 0) vs
    (label > 0) over the utterances whose label is not 0 (GCNet, MoMKE).
  * `acc2_has0`, `f1_has0`: the same with (x >= 0) over all utterances.
  * `mae`, `corr`: mean absolute error and Pearson correlation over all
    utterances (MMSA); `corr` is NaN when either side is constant.
  * `acc7`: equality of round(clip(x, -3, 3)).
IEMOCAP (classes):
  * `wa` accuracy, `ua` macro recall (MoMKE's "UA"), `wf1` weighted F1,
    `mf1` macro F1 (MMIN).
Averages run over the classes present in labels or predictions, and a
precision or recall with a zero denominator counts as 0, as in
scikit-learn's defaults. A metric over an empty subset is NaN.

The headline metric (model selection, the Avg column) is `f1_non0` for
regression and `wf1` for classification.
"""

import numpy as np

HEADLINE = {"regression": "f1_non0", "classification": "wf1"}


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
  x, y = x - x.mean(), y - y.mean()
  denom = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom > 0 else float("nan")


def regression(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
  """MOSI/MOSEI metrics of predicted scores [N] against labels [N]."""
  pred, label = np.asarray(pred, np.float64), np.asarray(label, np.float64)
  nonzero = label != 0
  non0 = (label[nonzero] > 0, pred[nonzero] > 0)
  has0 = (label >= 0, pred >= 0)
  seven = lambda x: np.round(np.clip(x, -3, 3))
  return {
      "acc2_non0": accuracy(*non0), "f1_non0": weighted_f1(*non0),
      "acc2_has0": accuracy(*has0), "f1_has0": weighted_f1(*has0),
      "mae": float(np.mean(np.abs(pred - label))),
      "corr": pearson(pred, label),
      "acc7": accuracy(seven(label), seven(pred)),
  }


def classification(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
  """IEMOCAP metrics of predicted classes [N] against labels [N]."""
  pred, label = np.asarray(pred), np.asarray(label)
  return {"wa": accuracy(label, pred), "ua": macro(label, pred, "recall"),
          "wf1": weighted_f1(label, pred), "mf1": macro(label, pred, "f1")}


def compute(task: str, outputs: np.ndarray, label: np.ndarray):
  """Metrics of raw model outputs [N, K] (scores when K = 1)."""
  if task == "regression":
    return regression(outputs[:, 0], label)
  return classification(outputs.argmax(-1), label)
