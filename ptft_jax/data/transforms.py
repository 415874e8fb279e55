"""Per-example conversion from TFDS features to model inputs."""

from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np


def to_example(features: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """TFDS features -> {"image": float32 [h, w, c] in [0, 1], "label": int32 []}.

  Other features (ids, file names, ...) are dropped.
  """
  image = np.asarray(features["image"])
  scale = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1
  return {
      "image": image.astype(np.float32) / np.float32(scale),
      "label": np.asarray(features["label"], np.int32),
  }


# A record an image source could not read and skips (config.data.bad_images="skip").
SKIPPED = "skipped"


class DropSkipped(grain.transforms.Filter):
  """Drops `SKIPPED` records before batching, so batches stay full (a picklable class)."""

  def filter(self, element) -> bool:
    return SKIPPED not in element


class ToExample(grain.transforms.Map):
  """Grain transform applying `to_example` (a class so worker processes can pickle it)."""

  def map(self, element):
    return to_example(element)


def pad_batch(
    examples: Sequence[dict[str, np.ndarray]], size: int, template: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
  """Stacks `examples` and pads them with zeros to `size` rows.

  Args:
    examples: n <= size examples from `to_example`.
    size: rows of the output batch.
    template: an example with the right shapes and dtypes (values are ignored).

  Returns:
    {"image": float32 [size, h, w, c], "label": int32 [size], "valid": bool [size]};
    rows n.. are zeros with valid=False.
  """
  padding = {k: np.zeros_like(v) for k, v in template.items()}
  rows = list(examples) + [padding] * (size - len(examples))
  batch = {k: np.stack([row[k] for row in rows]) for k in template}
  batch["valid"] = np.arange(size) < len(examples)
  return batch
