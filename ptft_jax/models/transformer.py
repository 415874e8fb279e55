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
import numpy as np

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
from ptft_jax.models.norm import LayerNorm, RMSNorm
from ptft_jax.parallel.sharding import constrain_batch

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


@jax.custom_vjp
def gelu_exact(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, `x * Phi(x)`: `nn.gelu(x, approximate=False)`'s values.

  Its own VJP keeps only `x` and recomputes `Phi(x) + x * phi(x)` in one elementwise pass.
  Autodiff of the erf formula saves its intermediates over `[batch, seq, intermediate]`
  and reads them back in separate passes: 5% of a MiniLM fine-tuning step on the CPU.
  """
  return x * (0.5 * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype))))


def _gelu_exact_fwd(x):
  return gelu_exact(x), x


def _gelu_exact_bwd(x, g):
  cdf = 0.5 * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))
  pdf = jnp.exp(-0.5 * x * x) * np.sqrt(0.5 / np.pi).astype(x.dtype)
  return (g * (cdf + x * pdf),)


gelu_exact.defvjp(_gelu_exact_fwd, _gelu_exact_bwd)

_ACTIVATIONS = {
    "gelu": gelu_exact,
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "silu": nn.silu,
}
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
  # Modern decoders (Llama, Mistral, Qwen2, Gemma); the defaults keep BERT / GPT-2.
  norm: str = "layer"  # "layer" (LayerNorm) | "rms" (RMSNorm: scale only, eps = layer_norm_eps)
  norm_offset: float = 0.0  # RMSNorm multiplies by (norm_offset + scale): Gemma's 1 + w
  position_embedding: str = "learned"  # "learned" table | "rope" (rotary, in the attention)
  rope_theta: float = 10000.0
  rope_scaling: str = ""  # "" | "linear" | "llama3" (HF config.rope_scaling["rope_type"])
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_positions: int = 8192
  activation: str = "gelu"  # "gelu" (exact erf) | "gelu_tanh" (GPT-2, Gemma) | "silu"
  gated_mlp: bool = False  # act(gate(x)) * intermediate(x) -> output (SwiGLU / GeGLU)
  num_kv_heads: int = 0  # key/value heads (grouped-query attention); 0 = num_heads
  head_dim_override: int = 0  # 0 = hidden_size // num_heads
  qkv_bias: bool = True
  out_bias: bool = True
  mlp_bias: bool = True
  embed_scale: bool = False  # embeddings * sqrt(hidden_size) (Gemma)
  sliding_window: int = 0  # > 0: query i sees keys j with i - window < j <= i (Mistral)

  def __post_init__(self):
    if not self.head_dim_override and self.hidden_size % self.num_heads:
      raise ConfigError(
          f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.num_heads % self.kv_heads:
      raise ConfigError(
          f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
    for key, value, allowed in (
        ("norm", self.norm, ("layer", "rms")),
        ("position_embedding", self.position_embedding, ("learned", "rope")),
        ("rope_scaling", self.rope_scaling, ("", "linear", "llama3")),
        ("activation", self.activation, tuple(_ACTIVATIONS))):
      if value not in allowed:
        raise ConfigError(f"model {key} {value!r} is not one of {allowed}")
    if self.dtype not in _DTYPES:
      raise ConfigError(f"transformer dtype {self.dtype!r} is not one of {_DTYPES}")
    if self.remat not in REMAT_POLICIES:
      raise ConfigError(f"remat {self.remat!r} is not one of {tuple(REMAT_POLICIES)}")
    if self.attention_impl not in attn_lib.IMPLEMENTATIONS:
      raise ConfigError(
          f"attention_impl {self.attention_impl!r} is not one of {attn_lib.IMPLEMENTATIONS}")

  @property
  def head_dim(self) -> int:
    return self.head_dim_override or self.hidden_size // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


def _dense(features: int, name: str, config: TransformerConfig,
           use_bias: bool = True) -> matmul_lib.Dense:
  # nn.Dense's params; bfloat16 products accumulate in float32 (2x faster on the CPU).
  return matmul_lib.Dense(features, dtype=config.compute_dtype, kernel_init=_INIT,
                          use_bias=use_bias, name=name)


def _layer_norm(name: str, config: TransformerConfig) -> nn.Module:
  """The config's normalization: LayerNorm (scale, bias) or RMSNorm (scale)."""
  if config.norm == "rms":
    return RMSNorm(config.layer_norm_eps, config.norm_offset, config.compute_dtype, name=name)
  return LayerNorm(config.layer_norm_eps, config.compute_dtype, name=name)


def rope_inverse_frequencies(config: TransformerConfig) -> np.ndarray:
  """Rotary inverse frequencies `[head_dim // 2]` float32, with HF's `rope_scaling` rules.

  "linear" divides every frequency by `rope_factor`; "llama3" divides only the low
  frequencies (wavelength above original_max / low_freq_factor), keeps the high ones
  (wavelength below original_max / high_freq_factor) and interpolates in between.
  """
  dim = config.head_dim
  inv = 1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
  if config.rope_scaling == "linear":
    inv = inv / config.rope_factor
  elif config.rope_scaling == "llama3":
    old = config.rope_original_max_positions
    low_wavelen = old / config.rope_low_freq_factor
    high_wavelen = old / config.rope_high_freq_factor
    wavelen = 2 * np.pi / inv
    scaled = np.where(wavelen > low_wavelen, inv / config.rope_factor, inv)
    smooth = ((old / wavelen - config.rope_low_freq_factor)
              / (config.rope_high_freq_factor - config.rope_low_freq_factor))
    smoothed = (1 - smooth) * scaled / config.rope_factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(np.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates `[batch, seq, heads, head_dim]` by `positions` `[batch, seq]`.

  HF's rotate-half layout (pairs are (d, d + head_dim/2)), so HF q/k weights load as they are.
  """
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, seq, head_dim/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
  x32 = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def _decode_mask(config: TransformerConfig, key_valid: jax.Array, index: jax.Array,
                 steps: int) -> jax.Array:
  """Bool `[batch, 1, steps, cache_len]` for `steps` queries written at cache slot `index`."""
  cache_len = key_valid.shape[-1]
  query_slot = index + jnp.arange(steps)[:, None]
  key_slot = jnp.arange(cache_len)[None, :]
  visible = key_slot <= query_slot
  if config.sliding_window:
    visible &= key_slot > query_slot - config.sliding_window
  return key_valid[:, None, None, :].astype(bool) & visible[None, None]


class Attention(nn.Module):
  """Multi-head self-attention: `[batch, seq, hidden]` -> `[batch, seq, hidden]`.

  Grouped-query attention when `num_kv_heads < num_heads` (each key/value head serves
  `num_heads / num_kv_heads` consecutive query heads, as HF's `repeat_kv`); rotary
  embeddings of `positions` on q and k with `position_embedding="rope"`.

  decode=True: keys and values are also written to the "cache" collection
  (`cached_key`, `cached_value` `[batch, cache_len, kv_heads, head_dim]`, `cache_index` =
  slots filled) at slot `cache_index`, and the queries attend over the whole cache;
  `mask` is then the `[batch, 1, 1, cache_len]` validity of the cache slots (padding =
  False) and the causal / sliding-window part is added here from the slot numbers.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, positions: jax.Array, *,
               train: bool, decode: bool = False) -> jax.Array:
    cfg = self.config
    split = lambda t, heads: t.reshape(t.shape[:-1] + (heads, cfg.head_dim))
    q = split(_dense(cfg.num_heads * cfg.head_dim, "query", cfg, cfg.qkv_bias)(x), cfg.num_heads)
    k = split(_dense(cfg.kv_heads * cfg.head_dim, "key", cfg, cfg.qkv_bias)(x), cfg.kv_heads)
    v = split(_dense(cfg.kv_heads * cfg.head_dim, "value", cfg, cfg.qkv_bias)(x), cfg.kv_heads)
    if cfg.position_embedding == "rope":
      inv_freq = rope_inverse_frequencies(cfg)
      q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
    if decode:
      k, v, mask = self._update_cache(k, v, mask)
    if cfg.kv_heads != cfg.num_heads:
      repeats = cfg.num_heads // cfg.kv_heads
      k, v = jnp.repeat(k, repeats, axis=2), jnp.repeat(v, repeats, axis=2)
    rate = cfg.attention_dropout_rate
    rng = self.make_rng("dropout") if train and rate > 0.0 else None
    y = attn_lib.dot_product_attention(
        q, k, v, mask=mask, dropout_rng=rng, dropout_rate=rate,
        implementation=cfg.attention_impl)
    y = y.reshape(y.shape[:-2] + (cfg.num_heads * cfg.head_dim,))
    return _dense(cfg.hidden_size, "out", cfg, cfg.out_bias)(y)

  def _update_cache(self, k, v, key_valid):
    """Writes k, v `[batch, steps, kv_heads, head_dim]` at the cache index; returns the cache."""
    batch, steps = k.shape[:2]
    cache_len = key_valid.shape[-1]
    shape = (batch, cache_len) + k.shape[2:]
    cached_k = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    at = (0, index.value, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, at)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, at)
    mask = _decode_mask(self.config, key_valid.reshape(batch, cache_len), index.value, steps)
    index.value = index.value + steps
    return cached_k.value, cached_v.value, mask


class Mlp(nn.Module):
  """Dense -> activation -> dense; gated (SwiGLU / GeGLU): act(gate(x)) * intermediate(x).

  The default activation is exact-erf GELU, as HF BERT.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    act = _ACTIVATIONS[cfg.activation]
    h = _dense(cfg.intermediate_size, "intermediate", cfg, cfg.mlp_bias)(x)
    if cfg.gated_mlp:
      h = act(_dense(cfg.intermediate_size, "gate", cfg, cfg.mlp_bias)(x)) * h
    else:
      h = act(h)
    return _dense(cfg.hidden_size, "output", cfg, cfg.mlp_bias)(h)


class TransformerLayer(nn.Module):
  """Attention + MLP with residuals; post- or pre-LayerNorm per `config.pre_norm`.

  `scanned`: the body of an nn.scan, so it returns `(x, None)` (carry, no output).

  The input and output `[batch, seq, hidden]` keep their batch split over the mesh's
  batch axes when a mesh is in context (`sharding.constrain_batch`): in a scanned stack
  GSPMD would otherwise split them like the fsdp weights (hidden split, batch whole),
  5x the memory at fsdp 8 (docs/scaling.md).
  """

  config: TransformerConfig
  scanned: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None, positions: jax.Array,
               train: bool, decode: bool = False):
    # `train` and `decode` are positional so nn.remat can treat them as static (static_argnums).
    cfg = self.config
    x = constrain_batch(x)
    attention = Attention(cfg, name="attention")
    attention_norm = _layer_norm("attention_norm", cfg)
    mlp = Mlp(cfg, name="mlp")
    output_norm = _layer_norm("output_norm", cfg)
    drop = lambda t: Dropout(cfg.dropout_rate)(t, deterministic=not train)
    attend = lambda t: attention(t, mask, positions, train=train, decode=decode)
    if cfg.pre_norm:
      x = x + drop(attend(attention_norm(x)))
      x = x + drop(mlp(output_norm(x)))
    else:
      x = attention_norm(x + drop(attend(x)))
      x = output_norm(x + drop(mlp(x)))
    x = constrain_batch(x)
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
    x = words(input_ids)
    if cfg.embed_scale:  # Gemma: the scale rounded to the compute dtype, as HF does
      x = x * jnp.asarray(cfg.hidden_size ** 0.5, cfg.compute_dtype)
    if cfg.position_embedding == "learned":
      x = x + embed(cfg.max_position_embeddings, "position_embeddings")(positions)
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


def _mask_and_positions(config: TransformerConfig, batch: Mapping[str, jax.Array],
                        decode: bool = False):
  """Builds the `[batch, 1, seq|1, seq]` attention mask and `[batch, seq]` positions.

  With `decode` the mask is the `[batch, 1, 1, cache_len]` validity of the KV-cache slots
  (`batch["attention_mask"]`, required, as are `batch["positions"]`); the attention adds the
  causal part from the cache index.
  """
  input_ids = batch["input_ids"]
  seq = input_ids.shape[1]
  if config.position_embedding == "learned" and seq > config.max_position_embeddings:
    raise UserError(
        f"input_ids has seq length {seq} > max_position_embeddings "
        f"{config.max_position_embeddings}")
  if decode:
    if batch.get("attention_mask") is None or batch.get("positions") is None:
      raise UserError("decoding needs batch['attention_mask'] over the cache slots "
                      "and batch['positions']")
    return attn_lib.padding_mask(batch["attention_mask"]), batch["positions"]
  mask = None
  if batch.get("attention_mask") is not None:
    mask = attn_lib.padding_mask(batch["attention_mask"])
  segment_ids = batch.get("segment_ids")
  if segment_ids is not None:
    same = attn_lib.segment_mask(segment_ids)
    mask = same if mask is None else mask & same
  if config.causal:
    causal = attn_lib.causal_mask(seq)
    if config.sliding_window:
      causal &= ~attn_lib.causal_mask(seq - config.sliding_window, shape=seq)
    mask = causal if mask is None else mask & causal
  positions = batch.get("positions")
  if positions is None:
    if segment_ids is not None:
      positions = segment_positions(segment_ids)
    else:
      positions = jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), input_ids.shape)
  return mask, positions


def _trunk(config: TransformerConfig, batch: Mapping[str, jax.Array], train: bool,
           decode: bool = False):
  """Embeddings + layers; call inside a compact method (submodules bind to it)."""
  mask, positions = _mask_and_positions(config, batch, decode)
  x, table = Embeddings(config, name="embeddings")(
      batch["input_ids"], positions, batch.get("token_type_ids"), train=train)
  layer = TransformerLayer
  if config.remat != "none":
    layer = nn.remat(layer, policy=REMAT_POLICIES[config.remat], static_argnums=(4, 5))
  if config.scan_layers:
    # One traced layer whatever the depth; each layer gets its own params, KV cache and
    # dropout rng.
    stack = nn.scan(layer, variable_axes={"params": 0, "cache": 0},
                    split_rngs={"params": True, "dropout": True},
                    in_axes=(nn.broadcast,) * 4, length=config.num_layers)
    x, _ = stack(config, scanned=True, name="layers")(x, mask, positions, train, decode)
  else:
    for i in range(config.num_layers):
      x = layer(config, name=f"layer_{i}")(x, mask, positions, train, decode)
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

  decode=True (generation; apply with `mutable=["cache"]`): keys and values go to a
  KV cache of `cache_len` slots per layer; `attention_mask` is then `[batch, cache_len]`
  (True = the slot holds a real token, after this call) and `positions` is required.
  The first call (prefill) creates the cache; each later call writes its tokens after
  the last ones.

  Returns features `{"sequence": [batch, seq, hidden], "word_embeddings":
  [vocab, hidden]}`.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool,
               decode: bool = False) -> dict[str, jax.Array]:
    x, table = _trunk(self.config, batch, train, decode)
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
