"""Matrix products for mixed precision: low-precision operands, float32 accumulation.

XLA's CPU backend runs a bfloat16 x bfloat16 matmul at its fast (AVX512-BF16)
rate only when the product accumulates into float32
(`preferred_element_type=float32`); a bfloat16 -> bfloat16 dot runs no faster
than float32 (measured on the 2-core Zen 4: 2048^3 at ~70 GFLOP per CPU-second
either way, ~140 with float32 accumulation). Autodiff of such a dot feeds a
float32 cotangent into the backward products, which then run in float32, so
`dot_general` carries its own VJP: all three products take bfloat16 operands
and accumulate in float32 (the cotangent is rounded to the operands' dtype
first, as plain bfloat16 autodiff would have it).

Float32 operands take the plain `lax.dot_general` path: bitwise what `nn.Dense`
and `jnp.einsum` compute. `Dense` is `nn.Dense` (same parameters) built on it.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_F32 = jnp.dtype(jnp.float32)


def _free(ndim: int, *used) -> list[int]:
  taken = {d for axes in used for d in axes}
  return [d for d in range(ndim) if d not in taken]


def _acc32(a, b, dims, dtype):
  """`dot_general(a, b, dims)` accumulated in float32, as a row-major [B,] M x K @ K x N.

  XLA:CPU's fast low-precision kernels take only that canonical form (a dot
  contracting a non-minor axis falls to a kernel with no bfloat16 -> float32
  variant), so the operands are transposed and reshaped into it explicitly.
  """
  (ac, bc), (ab, bb) = dims
  a_free, b_free = _free(a.ndim, ac, ab), _free(b.ndim, bc, bb)
  size = lambda x, axes: int(np.prod([x.shape[d] for d in axes], dtype=np.int64))
  batch = [size(a, ab)] if ab else []
  a2 = lax.transpose(a, (*ab, *a_free, *ac)).reshape(*batch, size(a, a_free), size(a, ac))
  b2 = lax.transpose(b, (*bb, *bc, *b_free)).reshape(*batch, size(b, bc), size(b, b_free))
  nb = len(batch)
  canonical = (((nb + 1,), (nb,)), ((0,), (0,)) if nb else ((), ()))
  out = lax.dot_general(a2, b2, canonical, preferred_element_type=jnp.float32)
  shape = [a.shape[d] for d in (*ab, *a_free)] + [b.shape[d] for d in b_free]
  return out.reshape(shape).astype(dtype)


def _transpose_lhs(g, x_ndim: int, y, dims, dtype):
  """d(dot_general(x, y, dims))/dx applied to the cotangent `g`, as a float32-accumulated dot.

  `g`'s axes are (batch, x free, y free); contracting its y-free axes with
  `y`'s free axes leaves (batch, x free, y's contracted axes in y order), i.e.
  x's contracted axes ordered by their partners in y: permuted back to x's order.
  """
  (xc, yc), (xb, yb) = dims
  x_free, y_free = _free(x_ndim, xc, xb), _free(y.ndim, yc, yb)
  nb, nxf = len(xb), len(x_free)
  g_y_free = tuple(range(nb + nxf, nb + nxf + len(y_free)))
  out = _acc32(g, y, ((g_y_free, tuple(y_free)), (tuple(range(nb)), tuple(yb))), dtype)
  x_contracted = [x for _, x in sorted(zip(yc, xc, strict=True))]
  order = list(xb) + x_free + x_contracted  # the x axis held by each axis of `out`
  return lax.transpose(out, tuple(order.index(d) for d in range(x_ndim)))


def _transpose_rhs(g, x, y_ndim: int, dims, dtype):
  (xc, yc), (xb, yb) = dims
  x_free, y_free = _free(x.ndim, xc, xb), _free(y_ndim, yc, yb)
  nb = len(xb)
  g_x_free = tuple(range(nb, nb + len(x_free)))
  out = _acc32(g, x, ((g_x_free, tuple(x_free)), (tuple(range(nb)), tuple(xb))), dtype)
  y_contracted = [y for _, y in sorted(zip(xc, yc, strict=True))]
  order = list(yb) + y_free + y_contracted
  return lax.transpose(out, tuple(order.index(d) for d in range(y_ndim)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _mixed(x, y, dims, out_dtype):
  return _acc32(x, y, dims, out_dtype)


def _mixed_fwd(x, y, dims, out_dtype):
  return _mixed(x, y, dims, out_dtype), (x, y)


def _mixed_bwd(dims, out_dtype, res, g):
  x, y = res
  g = g.astype(x.dtype)  # bfloat16 operands: the fast path
  return _transpose_lhs(g, x.ndim, y, dims, x.dtype), _transpose_rhs(g, x, y.ndim, dims, y.dtype)


_mixed.defvjp(_mixed_fwd, _mixed_bwd)


def dot_general(x: jax.Array, y: jax.Array, dimension_numbers, out_dtype=None, *,
                canonical: bool = False) -> jax.Array:
  """`lax.dot_general(x, y, dimension_numbers)` -> `out_dtype` (default: `x`'s dtype).

  Float32 operands (or operands of different dtypes): `lax.dot_general` with
  `preferred_element_type=out_dtype`. Lower precision: every product, forward
  and backward, takes the operands' dtype and accumulates in float32.
  `canonical=True` takes the second path for float32 too, so that batched
  products whose autodiff contracts a non-minor axis (attention) run as
  canonical [B] M x K @ K x N matmuls on XLA:CPU's fast kernels.
  """
  out_dtype = jnp.dtype(out_dtype or x.dtype)
  dims = tuple(tuple(tuple(int(d) for d in axes) for axes in pair) for pair in dimension_numbers)
  if x.dtype != y.dtype or (x.dtype == _F32 and not canonical):
    return lax.dot_general(x, y, dims, preferred_element_type=out_dtype).astype(out_dtype)
  return _mixed(x, y, dims, out_dtype)


def matmul(x: jax.Array, w: jax.Array, *, transpose_w: bool = False, out_dtype=None) -> jax.Array:
  """`x [..., k] @ w [k, n]` (or `@ w.T` for `w [n, k]` with `transpose_w`) -> `[..., n]`."""
  dims = (((x.ndim - 1,), (1 if transpose_w else 0,)), ((), ()))
  return dot_general(x, w, dims, out_dtype)


class Dense(nn.Module):
  """`flax.linen.Dense` (same params, init and float32 result) with `matmul`'s products.

  The bias is added in float32 before the cast to `dtype`, so its gradient is a
  float32 reduction (XLA turns a bfloat16 one into a slow pairwise reduce-window
  on the CPU: 10% of a bfloat16 BERT step).
  """

  features: int
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    dtype = jnp.dtype(self.dtype)
    y = matmul(x.astype(dtype), kernel.astype(dtype), out_dtype=jnp.float32)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32)
    return y.astype(dtype)
