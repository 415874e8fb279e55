"""Pure loss functions. Each returns per-example values; callers take the mean.

`LOSS_COUNT`: a task whose loss is a mean over a varying number of terms (target
tokens) reports that number as `metrics[LOSS_COUNT]`; gradient accumulation
(train/accumulate.py) then weights its microbatches by it, so the step's loss is
the sum over the whole batch divided by the whole batch's count.
"""

import jax
import jax.numpy as jnp
import optax

LOSS_COUNT = "loss_count"



def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
  """Cross-entropy of integer `labels` [batch] under `logits` [batch, classes] -> [batch].

  With label smoothing the target is (1 - s) * one_hot + s / classes.
  """
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def mean_squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean over all non-batch axes of (predictions - targets)^2 -> [batch]."""
  diff = (predictions.astype(jnp.float32) - targets.astype(jnp.float32)) ** 2
  return jnp.mean(jnp.reshape(diff, (diff.shape[0], -1)), axis=-1)


def nt_xent(z1: jax.Array, z2: jax.Array, *, temperature: float = 0.1) -> jax.Array:
  """SimCLR's normalized-temperature cross-entropy over two views -> [batch].

  z1, z2: [batch, dim] projections of two augmentations of the same examples.
  For each of the 2N embeddings, the positive is its other view and the
  negatives are the remaining 2N - 2; the result averages the two directions
  per example.
  """
  z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  n = z1.shape[0]
  sim = z @ z.T / temperature
  sim = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, sim)  # never your own pair
  positives = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(0, n)])
  log_prob = jax.nn.log_softmax(sim, axis=-1)
  per_row = -jnp.take_along_axis(log_prob, positives[:, None], axis=-1)[:, 0]
  return 0.5 * (per_row[:n] + per_row[n:])
