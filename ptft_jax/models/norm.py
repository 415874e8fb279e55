"""LayerNorm and RMSNorm with their own VJP: flax's parameters, one fused backward pass.

Autodiff of a normalization differentiates the mean, the variance and the rsqrt one by
one; XLA:CPU then runs the backward as several passes over `[batch, seq, hidden]`, and
materializes the broadcast scale and inverse deviation as full-size inputs of its
fusions. Here the forward keeps only the normalized input `x_hat` and the per-row
inverse deviation `r`, and the backward is the closed form, with `w` the effective
scale and `gw = g * w`:

    LayerNorm  dx = r * (gw - mean(gw) - x_hat * mean(gw * x_hat))
    RMSNorm    dx = r * (gw - x_hat * mean(gw * x_hat))
    dscale = sum(g * x_hat),  dbias = sum(g)   (over every axis but the last)

LayerNorm's measured 2-3% of a MiniLM fine-tuning step on the 2-core CPU
(docs/performance.md). Statistics are float32 (LayerNorm's two-pass: the mean, then
the mean square of `x - mean`), whatever the input dtype; the modules cast their output
to their `dtype`.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _forward(x, scale, bias, epsilon, offset):
  """(y, x_hat, inv_std), all float32; `bias=None` is RMSNorm: no centering, no bias."""
  x32 = x.astype(jnp.float32)
  if bias is not None:
    x32 = x32 - jnp.mean(x32, axis=-1, keepdims=True)
  inv_std = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + epsilon)
  x_hat = x32 * inv_std
  y = x_hat * (offset + scale)
  if bias is not None:
    y = y + bias
  return y, x_hat, inv_std


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _normalize(x, scale, bias, epsilon, offset):
  return _forward(x, scale, bias, epsilon, offset)[0]


def _normalize_fwd(x, scale, bias, epsilon, offset):
  y, x_hat, inv_std = _forward(x, scale, bias, epsilon, offset)
  # x's dtype travels as a zero-size array (residuals must be arrays); bias only as a flag.
  centered = None if bias is None else jnp.zeros((0,), jnp.float32)
  return y, (x_hat, inv_std, scale, jnp.zeros((0,), x.dtype), centered)


def _normalize_bwd(epsilon, offset, saved, g):
  del epsilon
  x_hat, inv_std, scale, x_like, centered = saved
  g = g.astype(jnp.float32)
  g_scaled = g * (offset + scale)
  mean_gx = jnp.mean(g_scaled * x_hat, axis=-1, keepdims=True)
  if centered is None:
    dx = g_scaled - x_hat * mean_gx
  else:
    dx = g_scaled - jnp.mean(g_scaled, axis=-1, keepdims=True) - x_hat * mean_gx
  rows = tuple(range(g.ndim - 1))
  dbias = None if centered is None else jnp.sum(g, axis=rows)
  return (inv_std * dx).astype(x_like.dtype), jnp.sum(g * x_hat, axis=rows), dbias


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  """`(x - mean) / sqrt(var + epsilon) * scale + bias` over the last axis, in float32.

  Args:
    x: `[..., features]`, any float dtype.
    scale, bias: float32 `[features]`.
    epsilon: added to the variance.

  Returns:
    float32 `[..., features]`.
  """
  return _normalize(x, scale, bias, epsilon, 0.0)


def rms_norm(x: jax.Array, scale: jax.Array, epsilon: float, offset: float = 0.0) -> jax.Array:
  """`x / sqrt(mean(x^2) + epsilon) * (offset + scale)` over the last axis, in float32.

  `x`: `[..., features]`, any float dtype; `scale`: float32 `[features]`. Returns float32.
  """
  return _normalize(x, scale, None, epsilon, offset)


class LayerNorm(nn.Module):
  """`flax.linen.LayerNorm` (same `scale` / `bias` params and init) on `layer_norm`.

  `[..., features]` -> the same shape in `dtype`; parameters are float32.
  """

  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)


class RMSNorm(nn.Module):
  """x / rms(x) * (offset + scale) on `rms_norm`: `[..., hidden]` -> same shape in `dtype`.

  offset 0 is Llama's RMSNorm (scale starts at 1); offset 1 is Gemma's (scale starts at 0).
  """

  epsilon: float = 1e-6
  offset: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
    return rms_norm(x, scale, self.epsilon, self.offset).astype(self.dtype)
