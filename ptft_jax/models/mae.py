"""The light decoder of a masked autoencoder (He et al. 2021, "Masked Autoencoders Are
Scalable Vision Learners"): a head that rebuilds every patch from the visible ones.

The encoder is the ViT backbone run on the kept patches only (`batch["patch_ids"]`,
see models/vit.py); this head takes its `sequence`, drops the class token, projects to
the decoder width, puts each kept token back at its grid position and a learned mask
token everywhere else, adds its own position embeddings and runs a few pre-LN
transformer layers, then predicts each patch's pixels.

Parameter layout (relative to `heads/<name>/`): `embed/{kernel,bias}` [hidden, width],
`mask_token` [width], `pos_embedding` [patches, width], `layer_{i}/...` (the
transformer's layers), `final_norm/{scale,bias}`, `pixels/{kernel,bias}` [width,
patch_dim]. Only pretraining uses it: fine-tuning keeps `backbone/` and drops the head.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptft_jax.errors import UserError
from ptft_jax.models.norm import LayerNorm
from ptft_jax.models.transformer import TransformerConfig, TransformerLayer

_INIT = nn.initializers.normal(stddev=0.02)


class MaeDecoder(nn.Module):
  """`features["sequence"]` [batch, (1 +) n_keep, hidden] -> pixels `[batch, patches,
  patch_dim]` (patch_dim = patch_size² x channels, in the patch order of `patchify`).

  Attributes:
    num_patches: patches per image (the encoder's grid, squared).
    patch_dim: pixels per patch.
    width, num_layers, num_heads: the decoder's size (MAE: 512, 8, 16 for ViT-L; a
      decoder much narrower than the encoder is the point).
  """

  num_patches: int
  patch_dim: int
  width: int = 64
  num_layers: int = 1
  num_heads: int = 4

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *,
               train: bool) -> jax.Array:
    keep = batch.get("patch_ids")
    if keep is None:
      raise UserError("the MAE decoder needs batch['patch_ids'] (task 'mae' adds them)")
    sequence = features["sequence"]
    n_keep = keep.shape[1]
    visible = sequence[:, sequence.shape[1] - n_keep:]  # drop the class token, if any
    x = nn.Dense(self.width, kernel_init=_INIT, name="embed")(visible.astype(jnp.float32))
    mask_token = self.param("mask_token", _INIT, (self.width,))
    full = jnp.broadcast_to(mask_token, (x.shape[0], self.num_patches, self.width))
    rows = jnp.arange(x.shape[0])[:, None]
    full = full.at[rows, keep].set(x)
    full = full + self.param("pos_embedding", _INIT, (self.num_patches, self.width))
    config = TransformerConfig(
        vocab_size=1, hidden_size=self.width, num_layers=self.num_layers,
        num_heads=self.num_heads, intermediate_size=4 * self.width, type_vocab_size=0,
        dropout_rate=0.0, attention_dropout_rate=0.0, layer_norm_eps=1e-6, pre_norm=True,
        pooler=False)
    positions = jnp.zeros(full.shape[:2], jnp.int32)  # unused: no rotary embeddings here
    for i in range(self.num_layers):
      full = TransformerLayer(config, name=f"layer_{i}")(full, None, positions, train)
    full = LayerNorm(1e-6, full.dtype, name="final_norm")(full)
    return nn.Dense(self.patch_dim, kernel_init=_INIT, name="pixels")(full)
