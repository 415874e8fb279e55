"""Labels of labeled text: class names or float targets, checked split by split."""

from collections.abc import Sequence
from typing import Any

import numpy as np

from ptft_jax.errors import ConfigError, DataError

LABEL_TYPES = ("auto", "class", "float")


def _is_int(v: Any) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def resolve_label_type(label_type: str, train_labels: Sequence[Any]) -> str:
  """"class" or "float" for `config.data.label_type` ("auto": strings / integers are classes)."""
  if label_type not in LABEL_TYPES:
    raise ConfigError(f"config.data.label_type: {label_type!r} is not one of {LABEL_TYPES}")
  if label_type != "auto":
    return label_type
  return "class" if all(isinstance(v, str) or _is_int(v) for v in train_labels) else "float"


def class_names(train_labels: Sequence[Any], names: Sequence[str]) -> list[str]:
  """Class names: `config.data.label_names`, else sorted string labels, else "0".."k-1"."""
  if names:
    return [str(n) for n in names]
  if all(isinstance(v, str) for v in train_labels):
    return sorted(set(train_labels))
  if all(_is_int(v) for v in train_labels):
    return [str(i) for i in range(int(max(train_labels)) + 1)]
  raise DataError("config.data.label_names: labels mix strings and numbers; "
                  "list the class names in config.data.label_names")


def encode_labels(labels: Sequence[Any], label_type: str, names: Sequence[str] | None,
                  where: str) -> np.ndarray:
  """Raw labels -> int32 class ids in [0, len(names)) or float32 targets.

  Args:
    labels: raw labels (strings or integer ids for classes; numbers for floats).
    label_type: "class" or "float".
    names: class names (for "class").
    where: the file or split the labels come from (for error messages).
  """
  if label_type == "float":
    try:
      return np.asarray(labels, np.float64).astype(np.float32)
    except (TypeError, ValueError):
      raise DataError(f"{where}: regression labels must be numbers") from None
  index = {n: i for i, n in enumerate(names)}
  out = np.empty(len(labels), np.int32)
  for i, v in enumerate(labels):
    if isinstance(v, str) and v in index:
      out[i] = index[v]
    elif _is_int(v) and 0 <= v < len(names):
      out[i] = v
    else:
      hint = (" (hidden test labels: evaluate on validation, config.eval_splits=('validation',))"
              if _is_int(v) and v < 0 else "")
      raise DataError(f"{where}: example {i + 1}: label {v!r} is not one of the classes "
                      f"{list(names)}{hint}")
  return out
