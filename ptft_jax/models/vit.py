"""Vision Transformer backbone (Dosovitskiy et al. 2020), pre-LayerNorm, as timm and big_vision.

`ViT(image_size=224, patch_size=16, hidden_size=768, num_layers=12, num_heads=12,
intermediate_size=3072)` is ViT-B/16. Images `batch["image"]` [batch, image_size,
image_size, c] are cut into a grid of `image_size // patch_size` squared patches by a
convolution with the patch size as stride, learned position embeddings are added, an
optional class token is prepended, pre-LN transformer layers (the encoder layers of
models/transformer.py: exact GELU, q/k/v biases) run, then a final LayerNorm.

Parameter layout (relative to `backbone/`):

  embeddings/patch/kernel              [p, p, c, hidden], bias [hidden]
  embeddings/pos_embedding             [grid * grid, hidden]   patches only
  embeddings/cls_token                 [hidden]                (class_token=True)
  layer_{i}/attention/{query,key,value,out}/kernel [hidden, hidden], bias [hidden]
  layer_{i}/attention_norm/{scale,bias}   LayerNorm before the attention (timm's norm1)
  layer_{i}/mlp/intermediate/kernel    [hidden, intermediate], bias [intermediate]
  layer_{i}/mlp/output/kernel          [intermediate, hidden], bias [hidden]
  layer_{i}/output_norm/{scale,bias}   LayerNorm before the MLP (timm's norm2)
  final_norm/{scale,bias}              on the sequence, or on the pooled vector
                                       (`pooled_norm=True`, timm's fc_norm)

The layer names are the transformer's, so its sharding rules, LoRA targets, the
`scan_layers` stacking (`layers/...` with a leading [num_layers] axis,
`ptft_jax.models.layout` converts) and the per-layer presets of optim/strategies.py
(`embeddings` is the input side, `layer_{i}` the indexed layers, `final_norm` the top)
apply unchanged.

The class token carries no position embedding of its own: a checkpoint whose position
table has a class-token row (timm, Hugging Face) is imported with that row added into
`cls_token` (the same sum the torch model computes), so `pos_embedding` is always the
patch grid alone and resamples as an image (`resample_pos_embedding`, bilinear; the
class token is kept as it is, as big_vision does). A checkpoint trained at another
resolution loads at `image_size` through that resampling: in `ptft_jax.convert.vision`
(`load_vision(..., image_size=N)`) and in `ptft_jax.train.checkpoint.transfer` (a
fine-tuning config with a different `config.model.image_size`, via
`ptft_jax.models.resize_for_transfer`).

Features: `{"features": [batch, hidden] float32 (pre-logits: the class token, or the mean
of the patch tokens with pool="gap"), "sequence": [batch, tokens, hidden]}` where tokens
= (1 if class_token) + patches; with pooled_norm the sequence is not normalized (timm).

Masked encoding (MAE): an optional `batch["patch_ids"]` [batch, n_keep] int32 (indices
into the row-major patch grid, 0 <= id < grid * grid) encodes only those patches:
position embeddings are added to all patches first, the ids then select (in the given
order), and the class token is prepended after the selection, so `sequence` is
[batch, (1 if class_token) + n_keep, hidden] and "gap" averages the kept patches.
"""

import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ptft_jax.errors import ConfigError, UserError
from ptft_jax.models.norm import LayerNorm
from ptft_jax.models.transformer import REMAT_POLICIES, TransformerConfig, TransformerLayer

POOLS = ("cls", "gap")
POS_EMBEDDING = "pos_embedding"  # param name under backbone/embeddings/
_POS_PATH = f"embeddings/{POS_EMBEDDING}"


def resample_pos_embedding(pos: jax.Array | np.ndarray, grid: int) -> jax.Array | np.ndarray:
  """Bilinear resampling of a square position-embedding grid: `[g * g, hidden]` ->
  `[grid * grid, hidden]` (row-major grids).

  Half-pixel centres and no antialiasing, i.e. torch's
  `F.interpolate(mode="bilinear", align_corners=False)` (timm's
  `resample_abs_pos_embed(..., interpolation="bilinear", antialias=False)`); a class
  token is never part of `pos`. numpy in, numpy out (float32); jax arrays stay jax.
  """
  n, hidden = pos.shape
  old = math.isqrt(n)
  if old * old != n:
    raise UserError(f"position embeddings {tuple(pos.shape)}: {n} rows is not a square grid")
  if old == grid:
    return pos
  host = not isinstance(pos, jax.Array)
  grid_in = jnp.asarray(pos, jnp.float32).reshape(old, old, hidden)
  out = jax.image.resize(grid_in, (grid, grid, hidden), method="bilinear", antialias=False)
  out = out.reshape(grid * grid, hidden)
  return np.asarray(out) if host else out.astype(pos.dtype)


def resize_for_transfer(path: str, value, shape: tuple[int, ...]):
  """`value` adapted to the model's `shape` when a checkpoint leaf at `path` differs in
  shape for a known reason, else None (then the mismatch is an error).

  A ViT's `embeddings/pos_embedding` [g * g, hidden] -> [grid * grid, hidden]
  (fine-tuning at another resolution than the checkpoint's; `resample_pos_embedding`).
  """
  shape = tuple(shape)
  if not path.endswith(_POS_PATH) or len(shape) != 2 or len(value.shape) != 2:
    return None
  if shape[1] != value.shape[1]:
    return None
  grid, old = math.isqrt(shape[0]), math.isqrt(value.shape[0])
  if grid * grid != shape[0] or old * old != value.shape[0]:
    return None
  return resample_pos_embedding(value, grid)


class _Embeddings(nn.Module):
  """Patches + positions (all patches), optional selection, class token prepended.

  `[batch, h, w, c]` -> `[batch, (1) + n, hidden]` (n = grid * grid, or n_keep with ids).
  """

  image_size: int
  patch_size: int
  hidden_size: int
  class_token: bool
  dtype: Any

  @nn.compact
  def __call__(self, images: jax.Array, patch_ids: jax.Array | None) -> jax.Array:
    p, grid = self.patch_size, self.image_size // self.patch_size
    x = nn.Conv(self.hidden_size, (p, p), (p, p), padding="VALID", dtype=self.dtype,
                kernel_init=nn.initializers.lecun_normal(), name="patch")(images)
    batch = x.shape[0]
    x = x.reshape(batch, grid * grid, self.hidden_size)
    pos = self.param(POS_EMBEDDING, nn.initializers.normal(stddev=0.02),
                     (grid * grid, self.hidden_size), jnp.float32)
    x = x + pos.astype(x.dtype)
    if patch_ids is not None:
      ids = jnp.asarray(patch_ids, jnp.int32)
      if ids.ndim != 2 or ids.shape[0] != batch:
        raise UserError(f"batch['patch_ids'] has shape {tuple(ids.shape)}, expected "
                        f"[batch={batch}, n_keep]")
      x = jnp.take_along_axis(x, ids[:, :, None], axis=1)
    if self.class_token:
      cls = self.param("cls_token", nn.initializers.zeros, (self.hidden_size,), jnp.float32)
      cls = jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.hidden_size))
      x = jnp.concatenate([cls, x], axis=1)
    return x


class ViT(nn.Module):
  """ViT backbone over `batch["image"]` [batch, image_size, image_size, c] (NHWC).

  Returns `{"features": [batch, hidden] float32, "sequence": [batch, tokens, hidden]}`
  (see the module docstring; `batch["patch_ids"]` encodes a subset of the patches).

  Attributes:
    image_size: side of the (square) input images; a multiple of patch_size. It fixes
      the position-embedding grid (`image_size // patch_size` squared).
    patch_size: side of a patch (the embedding convolution's kernel and stride).
    hidden_size, num_layers, num_heads, intermediate_size: the transformer's sizes.
    pool: "cls" (the class token's final state; needs class_token) or "gap" (mean of
      the patch tokens).
    class_token: prepend a learned class token (with pool="gap" it is encoded but not
      pooled, as timm's global_pool="avg" with a class token).
    pooled_norm: the final LayerNorm normalizes the pooled vector instead of the
      sequence (timm's fc_norm, used by its "avg" pool models such as MAE fine-tunes).
    layer_norm_eps: every LayerNorm's epsilon (1e-6 as timm and big_vision).
    qkv_bias: biases on the query / key / value projections.
    dropout_rate, attention_dropout_rate: dropout after attention / MLP and on the
      attention weights (training only).
    attention_impl, dtype, remat, scan_layers: as TransformerConfig's.
  """

  image_size: int = 224
  patch_size: int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  pool: str = "cls"
  class_token: bool = True
  pooled_norm: bool = False
  layer_norm_eps: float = 1e-6
  qkv_bias: bool = True
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  attention_impl: str = "auto"
  dtype: str = "float32"
  remat: str = "none"
  scan_layers: bool = False

  def __post_init__(self):
    if self.pool not in POOLS:
      raise ConfigError(f"config.model.pool: {self.pool!r} is not one of {POOLS}")
    if self.pool == "cls" and not self.class_token:
      raise ConfigError("config.model.pool='cls' needs config.model.class_token=True "
                        "(or use pool='gap')")
    if self.patch_size <= 0 or self.image_size <= 0 or self.image_size % self.patch_size:
      raise ConfigError(f"config.model.image_size={self.image_size} is not a positive "
                        f"multiple of config.model.patch_size={self.patch_size}")
    self.layer_config()  # validates hidden / heads / dtype / remat / attention_impl
    super().__post_init__()

  @property
  def grid(self) -> int:
    """Patches per image side."""
    return self.image_size // self.patch_size

  @nn.nowrap
  def layer_config(self) -> TransformerConfig:
    """The TransformerConfig of the encoder layers (pre-norm, non-causal, exact GELU)."""
    return TransformerConfig(
        vocab_size=1, hidden_size=self.hidden_size, num_layers=self.num_layers,
        num_heads=self.num_heads, intermediate_size=self.intermediate_size,
        max_position_embeddings=1, type_vocab_size=0, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, layer_norm_eps=self.layer_norm_eps,
        attention_impl=self.attention_impl, causal=False, pre_norm=True, dtype=self.dtype,
        pooler=False, remat=self.remat, scan_layers=self.scan_layers, activation="gelu",
        qkv_bias=self.qkv_bias)

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
    cfg = self.layer_config()
    dtype = cfg.compute_dtype
    images = jnp.asarray(batch["image"], dtype)
    if images.ndim != 4 or images.shape[1:3] != (self.image_size, self.image_size):
      raise UserError(
          f"batch['image'] has shape {tuple(images.shape)}, expected [batch, "
          f"{self.image_size}, {self.image_size}, channels] (config.model.image_size; a "
          "checkpoint of another resolution loads with its position embeddings resampled)")
    x = _Embeddings(self.image_size, self.patch_size, self.hidden_size, self.class_token,
                    dtype, name="embeddings")(images, batch.get("patch_ids"))
    layer = TransformerLayer
    if cfg.remat != "none":
      layer = nn.remat(layer, policy=REMAT_POLICIES[cfg.remat], static_argnums=(4, 5))
    positions = jnp.zeros(x.shape[:2], jnp.int32)  # unused: positions were added above
    if cfg.scan_layers:
      stack = nn.scan(layer, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast,) * 4, length=cfg.num_layers)
      x, _ = stack(cfg, scanned=True, name="layers")(x, None, positions, train, False)
    else:
      for i in range(cfg.num_layers):
        x = layer(cfg, name=f"layer_{i}")(x, None, positions, train, False)
    norm = LayerNorm(self.layer_norm_eps, dtype, name="final_norm")
    if not self.pooled_norm:
      x = norm(x)
    prefix = 1 if self.class_token else 0
    if self.pool == "cls":
      pooled = x[:, 0]
    else:
      pooled = jnp.mean(x[:, prefix:].astype(jnp.float32), axis=1).astype(dtype)
    if self.pooled_norm:
      pooled = norm(pooled)
    return {"features": pooled.astype(jnp.float32), "sequence": x}
