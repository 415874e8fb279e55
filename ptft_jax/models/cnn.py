"""A small convolutional backbone: [conv-relu-maxpool] x n, then dense layers."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class CnnBackbone(nn.Module):
  """Conv (3x3, 'SAME') + ReLU + 2x2 max-pool per entry of `channels`, then Dense+ReLU.

  Input `batch["image"]` [batch, h, w, c]; returns `{"features": [batch, dense_sizes[-1]]}`
  (or the flattened conv map when `dense_sizes` is empty).
  """

  channels: Sequence[int] = (32, 64)
  dense_sizes: Sequence[int] = (128,)
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, batch, *, train: bool) -> dict[str, jax.Array]:
    x = batch["image"]
    for i, ch in enumerate(self.channels):
      x = nn.relu(nn.Conv(ch, (3, 3), padding="SAME", name=f"conv_{i}")(x))
      # Pool only while the map is large enough; digits are 8x8.
      if min(x.shape[1:3]) >= 2:
        x = max_pool_2x2(x)
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, width in enumerate(self.dense_sizes):
      x = nn.relu(nn.Dense(width, name=f"dense_{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return {"features": x}


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2 ('VALID': an odd last row / column is dropped), [b, h, w, c].

  The same values as `nn.max_pool(x, (2, 2), strides=(2, 2))`, written as a reshape
  and a max: XLA:CPU's gradient of `reduce_window` (select-and-scatter) took 70% of
  the quickstart's contrastive step; the reshape's gradient is 5x cheaper.
  """
  b, h, w, c = x.shape
  x = x[:, : h - h % 2, : w - w % 2, :]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))
