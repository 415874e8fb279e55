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
