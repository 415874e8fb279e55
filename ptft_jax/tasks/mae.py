"""Masked-autoencoder pretraining (MAE, He et al. 2021) for ViT backbones.

Each training step hides `mask_ratio` (default 75%) of every image's patches, chosen
uniformly at random per image from the step's rng (so a resumed run masks exactly as an
uninterrupted one), encodes only the visible patches (`batch["patch_ids"]`, the ViT's
masked encoding), and the light decoder head (`models.mae.MaeDecoder`) predicts every
patch's pixels. The loss is the mean squared error on the hidden patches only, against
pixels normalized per patch (mean 0, variance 1 within each patch; MAE's `norm_pix_loss`,
which the paper found gives better representations; `norm_pix=False` uses raw pixels).
Evaluation masks with a fixed key. The encoder (`backbone/`) then transfers to any task.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ptft_jax.errors import ConfigError
from ptft_jax.models.mae import MaeDecoder

Batch = dict[str, jax.Array]


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
  """`[batch, h, w, c]` -> `[batch, (h/p) * (w/p), p * p * c]`, patches row-major (the ViT's
  grid order), pixels within a patch row-major then channel."""
  b, h, w, c = images.shape
  p = patch_size
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def random_keep(rng: jax.Array, batch: int, num_patches: int, keep: int) -> jax.Array:
  """`[batch, keep]` int32: a uniformly random subset of patch ids per row, ascending."""
  order = jnp.argsort(jax.random.uniform(rng, (batch, num_patches)), axis=-1)
  return jnp.sort(order[:, :keep], axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class MaskedAutoencoder:
  """Pretraining: rebuild hidden patches from visible ones (head "mae")."""

  patch_size: int
  num_patches: int
  mask_ratio: float = 0.75
  norm_pix: bool = True
  head_name: str = "mae"
  kind: str = "mae"
  uses_labels: bool = False

  @property
  def keep(self) -> int:
    return max(1, int(round(self.num_patches * (1.0 - self.mask_ratio))))

  def inputs(self, batch: Batch, rng: jax.Array, train: bool) -> Batch:
    if not train:
      rng = jax.random.key(0)  # the same masks at every evaluation
    images = batch["image"]
    ids = random_keep(rng, images.shape[0], self.num_patches, self.keep)
    return {**batch, "patch_ids": ids}

  def _per_example(self, outputs, inputs):
    target = patchify(inputs["image"].astype(jnp.float32), self.patch_size)
    if self.norm_pix:
      mean = jnp.mean(target, axis=-1, keepdims=True)
      var = jnp.var(target, axis=-1, keepdims=True)
      target = (target - mean) / jnp.sqrt(var + 1e-6)
    per_patch = jnp.mean((outputs[self.head_name] - target) ** 2, axis=-1)  # [batch, patches]
    rows = jnp.arange(target.shape[0])[:, None]
    hidden = jnp.ones(per_patch.shape, jnp.float32).at[rows, inputs["patch_ids"]].set(0.0)
    return jnp.sum(per_patch * hidden, axis=-1) / jnp.sum(hidden, axis=-1)

  def loss(self, outputs, inputs, batch):
    mse = jnp.mean(self._per_example(outputs, inputs))
    return mse, {"masked_mse": mse}

  def eval_outputs(self, outputs, inputs, batch):
    return {"loss": self._per_example(outputs, inputs)}

  def summarize(self, values: dict[str, np.ndarray], info: Any) -> dict:
    mse = float(np.mean(values["loss"]))
    return {"loss": mse, "masked_mse": mse}


def _mae(tc, info):
  p = int(tc.get("patch_size", 0) or 0)
  if p < 1:
    raise ConfigError("config.task.patch_size: task 'mae' needs the ViT's patch size "
                      "(config.model.patch_size)")
  h, w, c = tuple(info.image_shape)
  if h % p or w % p:
    raise ConfigError(f"config.task.patch_size={p} does not divide the images ({h}x{w})")
  ratio = float(tc.get("mask_ratio", 0.75))
  if not 0.0 < ratio < 1.0:
    raise ConfigError(f"config.task.mask_ratio={ratio}: use a value in (0, 1)")
  num_patches = (h // p) * (w // p)
  task = MaskedAutoencoder(patch_size=p, num_patches=num_patches, mask_ratio=ratio,
                           norm_pix=bool(tc.get("norm_pix", True)))
  head = MaeDecoder(num_patches=num_patches, patch_dim=p * p * c,
                    width=int(tc.get("decoder_width", 64)),
                    num_layers=int(tc.get("decoder_layers", 1)),
                    num_heads=int(tc.get("decoder_heads", 4)))
  return task, head


BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, Any], tuple[Any, nn.Module]]] = {
    "mae": _mae,
}
READS = {"mae": ("patch_size", "mask_ratio", "norm_pix", "decoder_width", "decoder_layers",
                 "decoder_heads")}
