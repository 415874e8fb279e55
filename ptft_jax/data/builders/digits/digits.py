"""TFDS builder for scikit-learn's bundled 8x8 handwritten digits.

1,797 real images, 10 classes, pixel values 0..16 stored as uint8 0..255. The
data ships inside scikit-learn, so preparing this dataset never touches the
network. Splits come from a permutation with a fixed seed, independent of any
run seed.
"""

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
SPLIT_SIZES = {"train": 1257, "validation": 270, "test": 270}
_SPLIT_SEED = 20260101  # Never change: it defines split membership.


def split_indices(num_examples: int = NUM_EXAMPLES) -> dict[str, np.ndarray]:
  """Returns sorted indices into `load_digits()` for each split.

  Args:
    num_examples: number of examples in the source (1797).

  Returns:
    {"train": int64 [1257], "validation": int64 [270], "test": int64 [270]},
    disjoint and covering range(num_examples).
  """
  if num_examples != sum(SPLIT_SIZES.values()):
    raise ValueError(f"expected {sum(SPLIT_SIZES.values())} digits, got {num_examples}")
  perm = np.random.default_rng(_SPLIT_SEED).permutation(num_examples)
  out, start = {}, 0
  for name, size in SPLIT_SIZES.items():
    out[name] = np.sort(perm[start:start + size])
    start += size
  return out


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Maps digits pixels 0..16 to uint8 0..255: float [n, 8, 8] -> uint8 [n, 8, 8, 1]."""
  return np.round(np.asarray(images, np.float64) * 255 / 16).astype(np.uint8)[..., None]


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn `load_digits`: 8x8 grayscale handwritten digits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=[str(i) for i in range(10)]),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Embedded data: nothing to download.
    from sklearn.datasets import load_digits  # Heavy import, only when preparing.

    digits = load_digits()
    images, labels = to_uint8(digits.images), digits.target.astype(np.int64)
    return {
        name: self._generate_examples(images, labels, idx)
        for name, idx in split_indices(len(labels)).items()
    }

  def _generate_examples(self, images, labels, indices):
    # TFDS encodes numpy images with TensorFlow; PIL images it encodes with PIL.
    from PIL import Image

    for i in indices:
      yield int(i), {"image": Image.fromarray(images[i, :, :, 0]), "label": int(labels[i])}
