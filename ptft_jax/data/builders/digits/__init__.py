"""scikit-learn's handwritten digits as a TFDS dataset named `digits`."""

from ptft_jax.data.builders.digits.digits import SPLIT_SIZES, Digits, split_indices, to_uint8

__all__ = ["SPLIT_SIZES", "Digits", "split_indices", "to_uint8"]
