"""Transformer backbones: a BERT-style encoder and a GPT-style decoder.

Both share the attention / MLP layer and differ in a few switches:

  BertEncoder: post-LayerNorm, embedding LayerNorm, token types, tanh pooler.
  GptDecoder: pre-LayerNorm, causal, final LayerNorm, no token types.

Parameter layout (relative to `backbone/`), chosen so HF BERT weights load:

  embeddings/word_embeddings/embedding          [vocab, hidden]
  embeddings/position_embeddings/embedding      [max_positions, hidden]
  embeddings/token_type_embeddings/embedding    [type_vocab, hidden]  (type_vocab_size > 0)
  embeddings/layer_norm/{scale,bias}            [hidden]              (post-norm only)
  layer_{i}/attention/{query,key,value,out}/kernel  [hidden, hidden], bias [hidden]
  layer_{i}/attention_norm/{scale,bias}         [hidden]
  layer_{i}/mlp/intermediate/kernel             [hidden, intermediate], bias [intermediate]
  layer_{i}/mlp/output/kernel                   [intermediate, hidden], bias [hidden]
  layer_{i}/output_norm/{scale,bias}            [hidden]
  pooler/dense/{kernel,bias}                    (BertEncoder with config.pooler)
  final_norm/{scale,bias}                       (pre-norm only)

With `scan_layers=True` the layers are one `nn.scan` over a single layer (compile
time flat in depth) and their params sit under `layers/...` with a leading
[num_layers] axis instead of `layer_{i}/...` (e.g. `layers/attention/query/kernel`
[num_layers, hidden, hidden]); `ptft_jax.models.layout` converts between the two.

In pre-norm layers `attention_norm` normalizes the attention input and
`output_norm` the MLP input; in post-norm layers they normalize the residual
sums after attention and after the MLP (HF BERT's two LayerNorms).

Backbone features: `sequence` [batch, seq, hidden], `word_embeddings`
[vocab, hidden] (the table, for tied output layers) and, for BertEncoder with a
pooler, `pooled` [batch, hidden].
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptft_jax.errors import ConfigError, UserError
from ptft_jax.models import attention as attn_lib
from ptft_jax.models import matmul as matmul_lib
from ptft_jax.models.dropout import Dropout
from ptft_jax.models.heads import (
  CausalLMHead,
  MaskedLMHead,
  NextSentenceHead,
  SequenceClassificationHead,
)

__all__ = [
  "BertEncoder",
  "CausalLMHead",
  "GptDecoder",
  "MaskedLMHead",
  "NextSentenceHead",
  "SequenceClassificationHead",
  "TransformerConfig",
  "bert_encode",
]

_DTYPES = ("float32", "bfloat16", "float16")
_INIT = nn.initializers.normal(stddev=0.02)
# What each layer keeps for the backward pass: everything ("none"), only its input ("full":
# the layer is recomputed), or its matmul outputs ("dots_saveable"). Param paths do not change.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyper-parameters of a transformer backbone (defaults: BERT-base).

  `dtype` is the compute dtype; parameters are always float32.
  `pooler` adds the tanh pooler (`pooler/dense`) to BertEncoder.
  """

  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  attention_impl: str = "auto"
  causal: bool = False
  pre_norm: bool = False
  dtype: str = "float32"
  pooler: bool = True
  remat: str = "none"  # recompute layer activations in the backward pass: see REMAT_POLICIES
  scan_layers: bool = False  # one nn.scan over the layers: params under layers/, [num_layers, ...]

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ConfigError(
          f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.dtype not in _DTYPES:
      raise ConfigError(f"transformer dtype {self.dtype!r} is not one of {_DTYPES}")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"remat {self.remat!r} is not one of {tuple(REMAT_POLICIES)}")
    if self.attention_impl not in attn_lib.IMPLEMENTATIONS:
      raise ConfigError(
          f"attention_impl {self.attention_impl!r} is not one of {attn_lib.IMPLEMENTATIONS}")

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


def _dense(features: int, name: str, config: TransformerConfig) -> matmul_lib.Dense:
  # nn.Dense's params; bfloat16 products accumulate in float32 (2x faster on the CPU).
  return matmul_lib.Dense(features, dtype=config.compute_dtype, kernel_init=_INIT, name=name)


def _layer_norm(name: str, config: TransformerConfig) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=config.compute_dtype, name=name)


class Attention(nn.Module):
  """Multi-head self-attention: `[batch, seq, hidden]` -> `[batch, seq, hidden]`."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, *, train: bool) -> jax.Array:
    cfg = self.config
    split = lambda t: t.reshape(t.shape[:-1] + (cfg.num_heads, cfg.head_dim))
    q = split(_dense(cfg.hidden_size, "query", cfg)(x))
    k = split(_dense(cfg.hidden_size, "key", cfg)(x))
    v = split(_dense(cfg.hidden_size, "value", cfg)(x))
    rate = cfg.attention_dropout_rate
    rng = self.make_rng("dropout") if train and rate > 0.0 else None
    y = attn_lib.dot_product_attention(
        q, k, v, mask=mask, dropout_rng=rng, dropout_rate=rate,
        implementation=cfg.attention_impl)
    y = y.reshape(y.shape[:-2] + (cfg.hidden_size,))
    return _dense(cfg.hidden_size, "out", cfg)(y)


class Mlp(nn.Module):
  """Dense -> GELU (exact erf, as HF BERT) -> dense."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    h = nn.gelu(_dense(cfg.intermediate_size, "intermediate", cfg)(x), approximate=False)
    return _dense(cfg.hidden_size, "output", cfg)(h)


class TransformerLayer(nn.Module):
  """Attention + MLP with residuals; post- or pre-LayerNorm per `config.pre_norm`.

  `scanned`: the body of an nn.scan, so it returns `(x, None)` (carry, no output).
  """

  config: TransformerConfig
  scanned: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, train: bool):
    # `train` is positional so that nn.remat can treat it as static (static_argnums).
    cfg = self.config
    attention = Attention(cfg, name="attention")
    attention_norm = _layer_norm("attention_norm", cfg)
    mlp = Mlp(cfg, name="mlp")
    output_norm = _layer_norm("output_norm", cfg)
    drop = lambda t: Dropout(cfg.dropout_rate)(t, deterministic=not train)
    if cfg.pre_norm:
      x = x + drop(attention(attention_norm(x), mask, train=train))
      x = x + drop(mlp(output_norm(x)))
    else:
      x = attention_norm(x + drop(attention(x, mask, train=train)))
      x = output_norm(x + drop(mlp(x)))
    return (x, None) if self.scanned else x


class Embeddings(nn.Module):
  """Word + position (+ token type) embeddings; LayerNorm in post-norm models.

  Returns `([batch, seq, hidden] embeddings, [vocab, hidden] word table)`.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, input_ids, positions, token_type_ids, *, train: bool):
    cfg = self.config
    embed = lambda n, name: nn.Embed(
        n, cfg.hidden_size, dtype=cfg.compute_dtype, embedding_init=_INIT, name=name)
    words = embed(cfg.vocab_size, "word_embeddings")
    x = words(input_ids) + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
    if cfg.type_vocab_size > 0:
      if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
      x = x + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids)
    elif token_type_ids is not None:
      raise UserError("batch has 'token_type_ids' but the config has type_vocab_size=0")
    if not cfg.pre_norm:
      x = _layer_norm("layer_norm", cfg)(x)
    x = Dropout(cfg.dropout_rate)(x, deterministic=not train)
    return x, words.embedding


def segment_positions(segment_ids: jax.Array) -> jax.Array:
  """Position of each token within its (contiguous) segment: `[batch, seq]` int32."""
  seq = segment_ids.shape[-1]
  index = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), segment_ids.shape)
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
      axis=1)
  start_index = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
  return index - start_index


def _mask_and_positions(config: TransformerConfig, batch: Mapping[str, jax.Array]):
  """Builds the `[batch, 1, seq|1, seq]` attention mask and `[batch, seq]` positions."""
  input_ids = batch["input_ids"]
  seq = input_ids.shape[1]
  if seq > config.max_position_embeddings:
    raise UserError(
        f"input_ids has seq length {seq} > max_position_embeddings "
        f"{config.max_position_embeddings}")
  mask = None
  if batch.get("attention_mask") is not None:
    mask = attn_lib.padding_mask(batch["attention_mask"])
  segment_ids = batch.get("segment_ids")
  if segment_ids is not None:
    same = attn_lib.segment_mask(segment_ids)
    mask = same if mask is None else mask & same
  if config.causal:
    causal = attn_lib.causal_mask(seq)
    mask = causal if mask is None else mask & causal
  positions = batch.get("positions")
  if positions is None:
    if segment_ids is not None:
      positions = segment_positions(segment_ids)
    else:
      positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), input_ids.shape)
  return mask, positions


def _trunk(config: TransformerConfig, batch: Mapping[str, jax.Array], train: bool):
  """Embeddings + layers; call inside a compact method (submodules bind to it)."""
  mask, positions = _mask_and_positions(config, batch)
  x, table = Embeddings(config, name="embeddings")(
      batch["input_ids"], positions, batch.get("token_type_ids"), train=train)
  layer = TransformerLayer
  if config.remat != "none":
    layer = nn.remat(layer, policy=REMAT_POLICIES[config.remat], static_argnums=(3,))
  if config.scan_layers:
    # One traced layer whatever the depth; each layer gets its own params and dropout rng.
    stack = nn.scan(layer, variable_axes={"params": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast, nn.broadcast), length=config.num_layers)
    x, _ = stack(config, scanned=True, name="layers")(x, mask, train)
  else:
    for i in range(config.num_layers):
      x = layer(config, name=f"layer_{i}")(x, mask, train)
  if config.pre_norm:
    x = _layer_norm("final_norm", config)(x)
  return x, table


class _Pooler(nn.Module):
  """tanh(dense([CLS])): `[batch, seq, hidden]` -> `[batch, hidden]`."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.tanh(_dense(self.config.hidden_size, "dense", self.config)(x[:, 0]))


class BertEncoder(nn.Module):
  """BERT-style encoder backbone (use a post-norm, non-causal config).

  Batch keys: `input_ids` [batch, seq] int32; optional `attention_mask`
  [batch, seq] (1 = real token), `token_type_ids` [batch, seq], `segment_ids`
  [batch, seq] (packed sequences attend only within their segment; positions
  restart per segment) and `positions` [batch, seq].

  Returns features `{"sequence": [batch, seq, hidden], "word_embeddings":
  [vocab, hidden], "pooled": [batch, hidden]}` (`pooled` only with a pooler).
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
    x, table = _trunk(self.config, batch, train)
    features = {"sequence": x, "word_embeddings": table}
    if self.config.pooler:
      features["pooled"] = _Pooler(self.config, name="pooler")(x)
    return features


class GptDecoder(nn.Module):
  """GPT-style decoder backbone (use a pre-norm, causal config).

  Batch keys: `input_ids` [batch, seq] int32; optional `attention_mask`
  [batch, seq], `segment_ids` [batch, seq] for packed sequences (attention
  stays within a segment; positions restart per segment unless given) and
  `positions` [batch, seq].

  Returns features `{"sequence": [batch, seq, hidden], "word_embeddings":
  [vocab, hidden]}`.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
    x, table = _trunk(self.config, batch, train)
    return {"sequence": x, "word_embeddings": table}


@functools.partial(jax.jit, static_argnums=0)
def _bert_encode(config, params, input_ids, attention_mask, token_type_ids):
  batch = {"input_ids": input_ids, "attention_mask": attention_mask,
           "token_type_ids": token_type_ids}
  return BertEncoder(config).apply({"params": params}, batch, train=False)["sequence"]


def bert_encode(
    config: TransformerConfig,
    params: Mapping[str, Any],
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    token_type_ids: jax.Array | None = None,
) -> jax.Array:
  """Last hidden state of a BertEncoder: `[batch, seq, hidden]` float32.

  Args:
    config: the encoder's config (e.g. from `load_hf_bert`).
    params: the backbone params tree (`embeddings`, `layer_{i}` or with
      `config.scan_layers` `layers`, ...), without the `backbone/` prefix; a
      pooler in it is ignored.
    input_ids: `[batch, seq]` int.
    attention_mask: `[batch, seq]`, 1 = real token (default: all ones).
    token_type_ids: `[batch, seq]` (default: all zeros).
  """
  config = dataclasses.replace(config, pooler=False)
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if attention_mask is not None:
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
  if token_type_ids is not None:
    token_type_ids = jnp.asarray(token_type_ids, jnp.int32)
  out = _bert_encode(config, params, input_ids, attention_mask, token_type_ids)
  return out.astype(jnp.float32)
