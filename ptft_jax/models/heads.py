"""Heads for vector features: classifier, projection (contrastive), decoder (autoencoder)."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ClassifierHead(nn.Module):
  """Optional hidden layers, then logits [batch, num_classes] from `features["features"]`."""

  num_classes: int
  hidden_sizes: Sequence[int] = ()
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, features, batch, *, train: bool) -> jax.Array:
    x = features["features"]
    for i, width in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="logits")(x)


class ProjectionHead(nn.Module):
  """SimCLR projection MLP: Dense-ReLU-Dense -> [batch, out_dim] (not normalized)."""

  hidden_size: int = 128
  out_dim: int = 64

  @nn.compact
  def __call__(self, features, batch, *, train: bool) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden_size, name="hidden")(features["features"]))
    return nn.Dense(self.out_dim, name="out")(x)


class DecoderHead(nn.Module):
  """Reconstructs the input image [batch, *output_shape] from features (MLP decoder)."""

  output_shape: Sequence[int]
  hidden_sizes: Sequence[int] = ()

  @nn.compact
  def __call__(self, features, batch, *, train: bool) -> jax.Array:
    x = features["features"]
    for i, width in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
    size = 1
    for d in self.output_shape:
      size *= d
    x = nn.Dense(size, name="out")(x)
    return jnp.reshape(x, (x.shape[0], *self.output_shape))
