"""Multi-layer perceptron backbone over flattened images."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MlpBackbone(nn.Module):
  """Flattens `batch["image"]` [batch, h, w, c] and applies Dense+ReLU layers.

  Returns `{"features": [batch, hidden_sizes[-1]]}`.
  """

  hidden_sizes: Sequence[int] = (128,)
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, batch, *, train: bool) -> dict[str, jax.Array]:
    x = batch["image"]
    x = jnp.reshape(x, (x.shape[0], -1))
    for i, width in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(width, name=f"layer_{i}")(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return {"features": x}
