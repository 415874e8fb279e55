"""Scaled dot-product attention with a choice of implementation, and masks.

Layout everywhere: q/k/v are `[batch, seq, heads, head_dim]`; boolean masks are
`[batch, 1 | heads, q_len, k_len]` (or broadcastable to it) with True = attend.
"""

from typing import Literal

import jax
import jax.numpy as jnp

from ptft_jax.errors import ConfigError
from ptft_jax.models import matmul
from ptft_jax.models.dropout import keep_mask

Implementation = Literal["auto", "einsum", "xla", "cudnn"]
IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn")


def resolve_implementation(implementation: str, dtype, *, dropout: bool = False) -> str:
  """Maps "auto" to a concrete implementation; validates the others.

  "auto" is cuDNN flash attention on GPU for half-precision inputs without
  attention dropout, else "einsum" (fastest on CPU; on GPU XLA fuses it as well
  as it does `jax.nn.dot_product_attention(implementation="xla")`).
  """
  if implementation not in IMPLEMENTATIONS:
    raise ConfigError(
        f"attention implementation {implementation!r} is not one of {IMPLEMENTATIONS}")
  if implementation == "auto":
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if jax.default_backend() == "gpu" and half and not dropout:
      return "cudnn"
    return "einsum"
  if dropout and implementation != "einsum":
    raise ConfigError(
        f"attention dropout needs attention_impl 'einsum' or 'auto', got {implementation!r}; "
        "set attention_dropout_rate=0 to use it")
  return implementation


def _einsum_attention(q, k, v, mask, dropout_rng, dropout_rate):
  """Plain (einsum-style) attention; logits and softmax in float32."""
  scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32))
  # "bqhd,bkhd->bhqk" and "bhqk,bkhd->bqhd" as dot_generals with float32 accumulation
  # (matmul.py: bfloat16 products run 2x faster that way on the CPU, backward included).
  logits = matmul.dot_general(q, k, (((3,), (3,)), ((0, 2), (0, 2))), jnp.float32,
                              canonical=True)
  logits = logits * scale
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = keep_mask(dropout_rng, probs.shape, dropout_rate)  # hash mask: see dropout.py
    probs = jnp.where(keep, probs / (1.0 - dropout_rate), 0.0)
  out = matmul.dot_general(probs.astype(v.dtype), v, (((3,), (1,)), ((0, 1), (0, 2))),
                           canonical=True)
  return jnp.transpose(out, (0, 2, 1, 3))  # [b, h, q, d] -> [b, q, h, d]


def dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    implementation: Implementation = "auto",
) -> jax.Array:
  """Softmax(q k^T / sqrt(head_dim)) v, per head.

  Args:
    q: queries `[batch, q_len, heads, head_dim]`.
    k: keys `[batch, k_len, heads, head_dim]`.
    v: values `[batch, k_len, heads, head_dim]`.
    mask: optional bool, broadcastable to `[batch, heads, q_len, k_len]`;
      True = attend. Rows with nothing to attend to give a uniform average.
    dropout_rng: PRNG key for dropout on the attention probabilities; dropout
      is applied only when this is given and `dropout_rate > 0`.
    dropout_rate: attention-probability dropout rate.
    implementation: "einsum", "xla", "cudnn" (the last two through
      `jax.nn.dot_product_attention`) or "auto" (see `resolve_implementation`).

  Returns:
    `[batch, q_len, heads, head_dim]` in the dtype of `v`.
  """
  dropout = dropout_rng is not None and dropout_rate > 0.0
  impl = resolve_implementation(implementation, q.dtype, dropout=dropout)
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    mask = jnp.expand_dims(mask, tuple(range(4 - mask.ndim)))
  if impl == "einsum":
    return _einsum_attention(q, k, v, mask, dropout_rng, dropout_rate)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=impl)


def padding_mask(attention_mask: jax.Array) -> jax.Array:
  """`[batch, seq]` (1 = real token) -> bool `[batch, 1, 1, seq]` key mask."""
  return jnp.asarray(attention_mask).astype(bool)[:, None, None, :]


def causal_mask(seq: int, shape: int | None = None) -> jax.Array:
  """Bool `[1, 1, n, n]`: query i attends to keys j <= i - (n - seq), n = `shape` or `seq`.

  `causal_mask(seq)` is the causal mask; `causal_mask(seq - w, shape=seq)` marks the keys
  at least `w` behind the query (what a sliding window of `w` hides).
  """
  n = seq if shape is None else shape
  return jnp.tril(jnp.ones((n, n), bool), k=seq - n)[None, None]


def segment_mask(segment_ids: jax.Array) -> jax.Array:
  """`[batch, seq]` segment ids -> bool `[batch, 1, seq, seq]`, True within a segment."""
  segment_ids = jnp.asarray(segment_ids)
  return (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
