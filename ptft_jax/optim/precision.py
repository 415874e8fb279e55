"""Mixed precision: bfloat16 compute over float32 master params and optimizer state.

`config.train.compute_dtype = "bfloat16"`: inside the differentiated loss the
params and the floating model inputs are cast to bfloat16, and the model's
outputs back to float32 before the loss. Gradients come back in float32
(the cast's transpose), so the optimizer, its state and the params stay
float32. Models with a `dtype` field (transformers, ResNet) also get it set,
so their own layers compute in bfloat16; LayerNorm / BatchNorm statistics and
attention softmax stay float32 inside them.
"""

import jax
import jax.numpy as jnp
import ml_collections

from ptft_jax.errors import ConfigError

DTYPES = ("float32", "bfloat16")


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype | None:
  """bfloat16 when `config.train.compute_dtype` asks for it, None for float32."""
  name = config.train.get("compute_dtype", "float32")
  if name not in DTYPES:
    raise ConfigError(f"config.train.compute_dtype={name!r}: choose one of {DTYPES}")
  return None if name == "float32" else jnp.dtype(name)


def cast_floating(tree, dtype):
  """Casts every floating leaf of `tree` to `dtype` (a no-op for dtype None)."""
  if dtype is None:
    return tree
  return jax.tree_util.tree_map(
      lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)


def model_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config.model`, with `dtype` set to the compute dtype when the backbone takes one."""
  from ptft_jax.models import build_backbone  # models import nothing from here

  dtype = compute_dtype(config)
  if dtype is None:
    return config.model
  mc = ml_collections.ConfigDict(config.model.to_dict())
  mc.dtype = jnp.dtype(dtype).name
  try:
    build_backbone(mc)
  except ConfigError:  # this backbone has no dtype field: params and inputs are cast instead
    return config.model
  return mc
