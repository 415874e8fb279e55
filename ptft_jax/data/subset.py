"""Stratified, deterministic label subsets (e.g. "10% of the labels")."""

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Picks about `fraction` of the examples of every class.

  Each class keeps `max(1, round(fraction * count))` examples, chosen by a
  permutation that depends only on (`seed`, class), so the subset is the same
  for any shuffle seed and a smaller fraction is a subset of a larger one.

  Args:
    labels: int [n] label of every example of the split.
    fraction: in (0, 1].
    seed: selects which examples are kept.

  Returns:
    int64 [k] sorted indices into `labels`.
  """
  labels = np.asarray(labels)
  kept = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = max(1, int(fraction * len(members) + 0.5))
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

  def __repr__(self) -> str:
    return f"Subset({self._source!r}, size={len(self)}, fingerprint={self._fingerprint})"
