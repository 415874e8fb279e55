"""Stratified, deterministic label subsets (e.g. "10% of the labels")."""

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np


def stratified_subset(labels: np.ndarray, fraction: float, seed: int, *,
                      per_class: int = 0) -> np.ndarray:
  """Picks about `fraction` of the examples of every class, or `per_class` of each.

  Each class keeps `max(1, round(fraction * count))` examples (or
  `min(per_class, count)` when `per_class > 0`), chosen by a permutation that
  depends only on (`seed`, class), so the subset is the same for any shuffle
  seed and a smaller subset is a part of a larger one.

  Args:
    labels: int [n] label of every example of the split.
    fraction: in (0, 1] (ignored when `per_class > 0`).
    seed: selects which examples are kept.
    per_class: > 0: keep this many examples of every class (label-efficiency curves).

  Returns:
    int64 [k] sorted indices into `labels`.
  """
  labels = np.asarray(labels)
  kept = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = min(per_class, len(members)) if per_class > 0 else max(
        1, int(fraction * len(members) + 0.5))
    kept.append(np.random.default_rng([seed, int(c)]).permutation(members)[:k])
  return np.sort(np.concatenate(kept)).astype(np.int64)


class Subset:
  """Random-access view of `source` restricted to `indices`.

  Its repr names the parent and a fingerprint of the indices, which Grain
  compares when restoring an iterator checkpoint.
  """

  def __init__(self, source: Sequence[Any], indices: np.ndarray):
    self._source = source
    self._indices = np.asarray(indices, np.int64)
    self._fingerprint = hashlib.sha1(self._indices.tobytes()).hexdigest()[:16]

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index: int) -> Any:
    return self._source[int(self._indices[index])]

  @property
  def source(self) -> Sequence[Any]:
    return self._source

  def gather(self, indices) -> dict[str, np.ndarray]:
    return self._source.gather(self._indices[np.asarray(indices)])

  def __repr__(self) -> str:
    return f"Subset({self._source!r}, size={len(self)}, fingerprint={self._fingerprint})"


class InMemory:
  """A random-access source whose records were all read once and kept in memory.

  Small datasets (the embedded digits, MNIST) are read record by record from
  array_record and decoded from PNG on every access otherwise, which costs more
  than the model's step; this keeps the raw (uint8) arrays instead.
  """

  def __init__(self, source: Sequence[Any], name: str):
    records = [source[i] for i in range(len(source))]
    self._columns = {k: np.stack([np.asarray(r[k]) for r in records]) for k in ("image", "label")}
    self._name = name

  @classmethod
  def from_arrays(cls, images: np.ndarray, labels: np.ndarray, name: str) -> "InMemory":
    """An in-memory source of images [n, h, w, c] (uint8) and labels [n] read elsewhere."""
    out = cls.__new__(cls)
    out._columns = {"image": images, "label": np.asarray(labels)}
    out._name = name
    return out

  def __len__(self) -> int:
    return len(self._columns["label"])

  def __getitem__(self, index: int) -> Any:
    return {k: v[index] for k, v in self._columns.items()}

  def labels(self) -> np.ndarray:
    """int64 [n]: the label of every example."""
    return self._columns["label"].astype(np.int64)

  def gather(self, indices) -> dict[str, np.ndarray]:
    """A whole batch of model inputs: {"image": float32 [b, h, w, c] in [0, 1], "label": int32}."""
    indices = np.asarray(indices)
    image = self._columns["image"][indices]
    scale = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1
    return {"image": image.astype(np.float32) / np.float32(scale),
            "label": self._columns["label"][indices].astype(np.int32)}

  def __repr__(self) -> str:
    return f"InMemory({self._name}, n={len(self)})"
