"""The speed pieces of the model code keep the semantics they replace: dropout, mixed matmuls,
LayerNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from ptft_jax.models import dropout, matmul, norm

# Attention's two products: "bqhd,bkhd->bhqk" and "bhqk,bkhd->bhqd" (+ plain and tied dense).
DIMS = {
    "dense": ((3, 5, 4), (4, 6), (((2,), (0,)), ((), ()))),
    "tied": ((3, 5, 4), (6, 4), (((2,), (1,)), ((), ()))),
    "scores": ((2, 7, 3, 4), (2, 5, 3, 4), (((3,), (3,)), ((0, 2), (0, 2)))),
    "values": ((2, 3, 7, 5), (2, 5, 3, 4), (((3,), (1,)), ((0, 1), (0, 2)))),
    "two_contracted": ((4, 2, 3, 5), (3, 5, 2, 6), (((2, 3), (0, 1)), ((1,), (2,)))),
}


def test_keep_mask_rate_independence_and_determinism():
  key = jax.random.key(0)
  mask = np.asarray(dropout.keep_mask(key, (1000, 1000), 0.1))
  assert abs(mask.mean() - 0.9) < 0.0015  # 5 standard deviations
  # Neighbours (along both axes) are independent: P(both kept) = 0.81.
  assert abs((mask[:, 1:] & mask[:, :-1]).mean() - 0.81) < 0.002
  assert abs((mask[1:] & mask[:-1]).mean() - 0.81) < 0.002
  np.testing.assert_array_equal(mask, dropout.keep_mask(key, (1000, 1000), 0.1))
  other = np.asarray(dropout.keep_mask(jax.random.key(1), (1000, 1000), 0.1))
  assert abs((mask == other).mean() - (0.81 + 0.01)) < 0.002  # independent keys
  assert np.asarray(dropout.keep_mask(key, (64,), 0.0)).all()


def test_dropout_module_matches_flax_semantics():
  x = jnp.arange(1.0, 4097.0).reshape(64, 64)
  layer = dropout.Dropout(0.25)
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
  kept = y != 0
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert abs(kept.mean() - 0.75) < 0.03
  assert not np.asarray(dropout.Dropout(1.0).apply({}, x, deterministic=False)).any()


@pytest.mark.parametrize("name", sorted(DIMS))
def test_dot_general_float32_is_lax_and_bfloat16_grads_are_close(name):
  x_shape, y_shape, dims = DIMS[name]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  y = jnp.asarray(rng.normal(size=y_shape), jnp.float32)
  loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b)))
  ref_out = lax.dot_general(x, y, dims)
  ref = jax.grad(loss(lambda a, b: lax.dot_general(a, b, dims)), (0, 1))(x, y)
  np.testing.assert_array_equal(matmul.dot_general(x, y, dims), ref_out)
  # canonical=True: the custom VJP in float32 gives autodiff's gradients.
  canon = jax.grad(loss(lambda a, b: matmul.dot_general(a, b, dims, canonical=True)), (0, 1))
  for got, want in zip(canon(x, y), ref, strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5)
  # bfloat16 operands: float32 result and gradients within bfloat16 rounding.
  bf = lambda t: t.astype(jnp.bfloat16)
  low = lambda a, b: matmul.dot_general(a, b, dims, jnp.float32)
  assert low(bf(x), bf(y)).dtype == jnp.float32
  np.testing.assert_allclose(low(bf(x), bf(y)), ref_out, atol=0.05 * np.abs(ref_out).max())
  for got, want in zip(jax.grad(loss(low), (0, 1))(bf(x), bf(y)), ref, strict=True):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.05 * np.abs(want).max())


def test_dense_has_flax_params_and_outputs():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 8)), jnp.float32)
  ours = matmul.Dense(5, kernel_init=nn.initializers.normal(0.02))
  flax_dense = nn.Dense(5, kernel_init=nn.initializers.normal(0.02))
  params = ours.init(jax.random.key(0), x)
  np.testing.assert_array_equal(params["params"]["kernel"],
                                flax_dense.init(jax.random.key(0), x)["params"]["kernel"])
  params = jax.tree_util.tree_map(lambda p: p + 0.1, params)  # a nonzero bias
  np.testing.assert_array_equal(ours.apply(params, x), flax_dense.apply(params, x))
  low = matmul.Dense(5, dtype=jnp.bfloat16).apply(params, x)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), flax_dense.apply(params, x), atol=0.02)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_matches_flax_values_params_and_gradients(dtype):
  rng = np.random.default_rng(2)
  # Rows with an offset and a spread far from 0 / 1, so mean and variance both matter.
  x = jnp.asarray(rng.normal(3.0, 2.5, size=(2, 5, 16)), jnp.float32)
  ours, theirs = norm.LayerNorm(1e-6, dtype), nn.LayerNorm(1e-6, dtype=dtype)
  params = ours.init(jax.random.key(0), x)
  assert jax.tree_util.tree_map(jnp.shape, params) == jax.tree_util.tree_map(
      jnp.shape, theirs.init(jax.random.key(0), x))
  params = {"params": {"scale": jnp.asarray(rng.normal(1.0, 0.3, 16), jnp.float32),
                       "bias": jnp.asarray(rng.normal(0.0, 0.3, 16), jnp.float32)}}
  weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)  # a loss that mixes rows
  loss = lambda layer: lambda p, t: jnp.sum(
      jnp.sin(layer.apply(p, t.astype(dtype)).astype(jnp.float32)) * weights)
  tol = 1e-5 if dtype == jnp.float32 else 0.05
  got, want = ours.apply(params, x.astype(dtype)), theirs.apply(params, x.astype(dtype))
  assert got.dtype == dtype
  np.testing.assert_allclose(got.astype(jnp.float32), want.astype(jnp.float32), atol=tol)
  got_grads = jax.grad(loss(ours), (0, 1))(params, x)
  want_grads = jax.grad(loss(theirs), (0, 1))(params, x)
  for g, w in zip(jax.tree_util.tree_leaves(got_grads), jax.tree_util.tree_leaves(want_grads),
                  strict=True):
    np.testing.assert_allclose(g, w, atol=tol * max(1.0, float(np.abs(w).max())))
  if dtype == jnp.float32:  # and against finite differences, in both directions
    check_grads(lambda s, b, t: norm.layer_norm(t, s, b, 1e-6) * weights,
                              (params["params"]["scale"], params["params"]["bias"], x),
                              order=1, modes=("rev",), atol=2e-2, rtol=2e-2)
