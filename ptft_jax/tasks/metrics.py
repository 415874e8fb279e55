"""Evaluation metrics computed on the host from gathered per-example outputs."""

from collections.abc import Sequence

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """[num_classes, num_classes] counts; rows are true labels, columns predictions."""
  cm = np.zeros((num_classes, num_classes), dtype=np.int64)
  np.add.at(cm, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
  return cm


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int,
    label_names: Sequence[str] | None = None,
) -> dict:
  """Accuracy, per-class and macro precision / recall / F1, and the confusion matrix.

  A class with no predictions has precision 0 (and no true examples, recall 0),
  as scikit-learn's `zero_division=0`.
  """
  cm = confusion_matrix(labels, predictions, num_classes)
  tp = np.diag(cm).astype(np.float64)
  predicted = cm.sum(axis=0).astype(np.float64)
  actual = cm.sum(axis=1).astype(np.float64)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  names = list(label_names) if label_names else [str(i) for i in range(num_classes)]
  return {
      "accuracy": float(tp.sum() / max(cm.sum(), 1)),
      "macro_precision": float(precision.mean()),
      "macro_recall": float(recall.mean()),
      "macro_f1": float(f1.mean()),
      "per_class": {
          n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
          for n, p, r, f, s in zip(names, precision, recall, f1, actual, strict=True)
      },
      "confusion_matrix": cm.tolist(),
      "num_examples": int(cm.sum()),
  }


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two [n] arrays (0 when either is constant)."""
  x = np.asarray(x, np.float64) - np.mean(x)
  y = np.asarray(y, np.float64) - np.mean(y)
  denom = np.sqrt(np.sum(x * x) * np.sum(y * y))
  return float(np.sum(x * y) / denom) if denom > 0 else 0.0


def ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of [n] values; ties share their average rank (as scipy's rankdata)."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]  # each tie group is [start, end) in sorted order
  average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
  out = np.empty(len(x), np.float64)
  out[order] = np.repeat(average, ends - starts)
  return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation: Pearson of the (tie-averaged) ranks."""
  return pearson(ranks(x), ranks(y))


def regression_metrics(labels: np.ndarray, predictions: np.ndarray) -> dict:
  """Pearson, Spearman and mean squared error of [n] predictions (GLUE STS-B style)."""
  labels = np.asarray(labels, np.float64)
  predictions = np.asarray(predictions, np.float64)
  return {"pearson": pearson(labels, predictions), "spearman": spearman(labels, predictions),
          "mse": float(np.mean((labels - predictions) ** 2)), "num_examples": int(len(labels))}
