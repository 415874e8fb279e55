"""Normalizations: LayerNorm with its own VJP (`flax.linen.LayerNorm`'s parameters), RMSNorm.

Autodiff of LayerNorm differentiates the mean, the variance and the rsqrt one by one;
XLA:CPU then runs the backward as several passes over `[batch, seq, hidden]`, and
materializes the broadcast scale and inverse deviation as full-size inputs of its
fusions. Here the forward keeps only the normalized input `x_hat` and the per-row
inverse deviation `r`, and the backward is the closed form

    dx = r * (g*scale - mean(g*scale) - x_hat * mean(g*scale * x_hat))
    dscale = sum(g * x_hat),  dbias = sum(g)   (over every axis but the last)

which measured 2-3% of a MiniLM fine-tuning step on the 2-core CPU (docs/performance.md).
Statistics are float32 and two-pass (mean, then the mean square of `x - mean`), whatever
the input dtype; the output is cast to the module's `dtype`.

RMSNorm keeps autodiff: the same treatment (closed-form backward from `x_hat`) measured no
faster on a Llama-shaped MiniLM-size decoder step (vocabulary 4096; 1.963 vs 1.953 s,
alternating) and made XLA hold 6% more temporaries (1,367 vs 1,290 MiB).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def _forward(x, scale, bias, epsilon):
  x32 = x.astype(jnp.float32)
  centered = x32 - jnp.mean(x32, axis=-1, keepdims=True)
  inv_std = jax.lax.rsqrt(jnp.mean(centered * centered, axis=-1, keepdims=True) + epsilon)
  x_hat = centered * inv_std
  return x_hat * scale + bias, (x_hat, inv_std, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float) -> jax.Array:
  """`(x - mean) / sqrt(var + epsilon) * scale + bias` over the last axis, in float32.

  Args:
    x: `[..., features]`, any float dtype.
    scale, bias: float32 `[features]`.
    epsilon: added to the variance.

  Returns:
    float32 `[..., features]`.
  """
  return _forward(x, scale, bias, epsilon)[0]


def _layer_norm_fwd(x, scale, bias, epsilon):
  y, saved = _forward(x, scale, bias, epsilon)
  # x's dtype travels as a zero-size array: residuals must be arrays.
  return y, (*saved, jnp.zeros((0,), x.dtype))


def _layer_norm_bwd(epsilon, saved, g):
  del epsilon
  x_hat, inv_std, scale, x_like = saved
  g = g.astype(jnp.float32)
  g_scaled = g * scale
  mean_g = jnp.mean(g_scaled, axis=-1, keepdims=True)
  mean_gx = jnp.mean(g_scaled * x_hat, axis=-1, keepdims=True)
  dx = inv_std * (g_scaled - mean_g - x_hat * mean_gx)
  rows = tuple(range(g.ndim - 1))
  return dx.astype(x_like.dtype), jnp.sum(g * x_hat, axis=rows), jnp.sum(g, axis=rows)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


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
  """x / rms(x) * (offset + scale), statistics in float32: `[..., hidden]` -> same shape.

  offset 0 is Llama's RMSNorm (scale starts at 1); offset 1 is Gemma's (scale starts at 0).
  """

  epsilon: float = 1e-6
  offset: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return (y * (self.offset + scale)).astype(self.dtype)
