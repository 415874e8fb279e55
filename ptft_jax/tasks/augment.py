"""On-device image augmentations: pure, jit-able, seeded by a PRNG key.

All take images [batch, h, w, c] in [0, 1] and return the same shape.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ptft_jax.errors import ConfigError


def random_shift(rng: jax.Array, images: jax.Array, max_shift: int) -> jax.Array:
  """Translates each image by up to `max_shift` pixels (zero fill): a padded random crop."""
  if max_shift <= 0:
    return images
  b, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)))
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * max_shift + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

  return jax.vmap(crop)(padded, offsets)


def gaussian_noise(rng: jax.Array, images: jax.Array, stddev: float) -> jax.Array:
  if stddev <= 0:
    return images
  return images + stddev * jax.random.normal(rng, images.shape, images.dtype)


def pixel_dropout(rng: jax.Array, images: jax.Array, rate: float) -> jax.Array:
  """Zeroes each pixel (all channels) with probability `rate` (masking noise)."""
  if rate <= 0:
    return images
  keep = jax.random.bernoulli(rng, 1.0 - rate, images.shape[:-1] + (1,))
  return images * keep


def color_jitter(rng: jax.Array, images: jax.Array, strength: float) -> jax.Array:
  """Random per-image brightness (additive) and contrast (multiplicative) changes."""
  if strength <= 0:
    return images
  b = images.shape[0]
  k1, k2 = jax.random.split(rng)
  brightness = jax.random.uniform(k1, (b, 1, 1, 1), minval=-strength, maxval=strength)
  contrast = jax.random.uniform(k2, (b, 1, 1, 1), minval=1 - strength, maxval=1 + strength)
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  return (images - mean) * contrast + mean + brightness


def augment_images(rng: jax.Array, images: jax.Array, **options) -> jax.Array:
  """Applies the selected augmentations to images [batch, h, w, c]; same shape out.

  Options (all off by default): max_shift (int pixels), noise (stddev), dropout
  (pixel rate), jitter (brightness/contrast strength), crop_scale (> 0: random
  resized crop with this smallest area fraction), flip (bool), color (SimCLR
  colour distortion strength), color_prob (its probability, 0.8), grayscale
  (probability). Order: resized crop -> shift -> flip -> colour distortion ->
  grayscale -> jitter -> pixel dropout -> noise. The first four options' keys
  are split as before the others existed, so their outputs did not change; the
  others draw theirs from `fold_in(rng, 1)`. SimCLR on CIFAR: crop_scale=0.08,
  flip=True, color=0.5, grayscale=0.2.

  Compiled as one program per option set, also when called outside jit (a
  task's example batch), instead of one small program per operation.
  """
  unknown = sorted(set(options) - set(AUGMENT_OPTIONS))
  if unknown:
    raise ConfigError(
        f"config.task.augment: unknown option(s) {unknown}; choose from "
        f"{sorted(AUGMENT_OPTIONS)}")
  return _augment(rng, images, **options)


@functools.partial(jax.jit, static_argnames=(
    "max_shift", "noise", "dropout", "jitter", "crop_scale", "flip", "color", "color_prob",
    "grayscale"))
def _augment(
    rng: jax.Array, images: jax.Array, *, max_shift: int = 0, noise: float = 0.0,
    dropout: float = 0.0, jitter: float = 0.0, crop_scale: float = 0.0, flip: bool = False,
    color: float = 0.0, color_prob: float = 0.8, grayscale: float = 0.0,
) -> jax.Array:
  k_shift, k_jit, k_drop, k_noise = jax.random.split(rng, 4)
  k_crop, k_flip, k_color, k_gray = jax.random.split(jax.random.fold_in(rng, 1), 4)
  x = random_resized_crop(k_crop, images, crop_scale)
  x = random_shift(k_shift, x, max_shift)
  x = random_flip(k_flip, x) if flip else x
  x = color_distort(k_color, x, color, prob=color_prob)
  x = random_grayscale(k_gray, x, grayscale)
  x = color_jitter(k_jit, x, jitter)
  x = pixel_dropout(k_drop, x, dropout)
  return gaussian_noise(k_noise, x, noise)


AUGMENT_OPTIONS = ("max_shift", "noise", "dropout", "jitter", "crop_scale", "flip", "color",
                   "color_prob", "grayscale")


def random_flip(rng: jax.Array, images: jax.Array, prob: float = 0.5) -> jax.Array:
  """Mirrors each image left-right with probability `prob`."""
  flip = jax.random.bernoulli(rng, prob, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def _bilinear_weights(start: jax.Array, length: jax.Array, size: int) -> jax.Array:
  """[b, size, size] resampling matrices: row i linearly interpolates the input at
  `start + (i + 0.5) * length / size - 0.5` (pixel centres; clamped to the image)."""
  centres = (jnp.arange(size) + 0.5) * (length[:, None] / size) - 0.5 + start[:, None]
  centres = jnp.clip(centres, 0.0, size - 1.0)
  return jnp.maximum(0.0, 1.0 - jnp.abs(centres[:, :, None] - jnp.arange(size)))


def random_resized_crop(
    rng: jax.Array, images: jax.Array, min_scale: float,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> jax.Array:
  """Inception-style crop: a random box, resized (bilinear) back to [h, w].

  The box covers an area fraction U[min_scale, 1] of the image with aspect
  (width / height) log-uniform in `ratio`; a side longer than the image is cut
  to the image (instead of re-drawing). The resize is two batched matmuls with
  interpolation matrices. `min_scale` <= 0 returns the input.
  """
  if min_scale <= 0:
    return images
  b, h, w, _ = images.shape
  k_area, k_ratio, k_y, k_x = jax.random.split(rng, 4)
  area = jax.random.uniform(k_area, (b,), minval=min_scale, maxval=1.0) * h * w
  aspect = jnp.exp(jax.random.uniform(
      k_ratio, (b,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1])))
  crop_h = jnp.clip(jnp.sqrt(area / aspect), 1.0, h)
  crop_w = jnp.clip(jnp.sqrt(area * aspect), 1.0, w)
  top = jax.random.uniform(k_y, (b,)) * (h - crop_h)
  left = jax.random.uniform(k_x, (b,)) * (w - crop_w)
  rows = _bilinear_weights(top, crop_h, h).astype(images.dtype)
  cols = _bilinear_weights(left, crop_w, w).astype(images.dtype)
  return jnp.einsum("bih,bhwc,bjw->bijc", rows, images, cols)


def _gray(images: jax.Array) -> jax.Array:
  """Luma [b, h, w, 1] of RGB images (ITU-R 601 weights)."""
  return jnp.sum(images * jnp.array([0.2989, 0.587, 0.114], images.dtype), -1, keepdims=True)


_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                   np.float32)
_FROM_YIQ = np.linalg.inv(_TO_YIQ).astype(np.float32)


def _rotate_hue(images: jax.Array, turns: jax.Array) -> jax.Array:
  """Rotates the hue of RGB images by `turns` [b] (fractions of a full turn), in YIQ space."""
  yiq = images @ jnp.asarray(_TO_YIQ.T, images.dtype)
  angle = 2 * jnp.pi * turns[:, None, None]
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  i = yiq[..., 1] * cos - yiq[..., 2] * sin
  q = yiq[..., 1] * sin + yiq[..., 2] * cos
  yiq = jnp.stack([yiq[..., 0], i, q], axis=-1)
  return yiq @ jnp.asarray(_FROM_YIQ.T, images.dtype)


def color_distort(
    rng: jax.Array, images: jax.Array, strength: float, *, prob: float = 0.8,
) -> jax.Array:
  """SimCLR colour jitter, applied to each image with probability `prob`.

  Random brightness, contrast, saturation (factors in 1 +- 0.8 * strength) and
  hue (+- 0.2 * strength turns), in that order (SimCLR shuffles it), each
  clipped to [0, 1]. Saturation and hue apply to RGB images only.
  """
  if strength <= 0:
    return images
  b = images.shape[0]
  k_apply, k_b, k_c, k_s, k_h = jax.random.split(rng, 5)
  factor = lambda k: jax.random.uniform(
      k, (b, 1, 1, 1), minval=1 - 0.8 * strength, maxval=1 + 0.8 * strength)
  x = jnp.clip(images * factor(k_b), 0, 1)
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  x = jnp.clip((x - mean) * factor(k_c) + mean, 0, 1)
  if images.shape[-1] == 3:
    gray = _gray(x)
    x = jnp.clip((x - gray) * factor(k_s) + gray, 0, 1)
    turns = jax.random.uniform(k_h, (b,), minval=-0.2 * strength, maxval=0.2 * strength)
    x = jnp.clip(_rotate_hue(x, turns), 0, 1)
  apply = jax.random.bernoulli(k_apply, prob, (b, 1, 1, 1))
  return jnp.where(apply, x, images)


def random_grayscale(rng: jax.Array, images: jax.Array, prob: float) -> jax.Array:
  """Replaces RGB images by their luma (kept 3-channel) with probability `prob`."""
  if prob <= 0 or images.shape[-1] != 3:
    return images
  gray = jnp.broadcast_to(_gray(images), images.shape)
  return jnp.where(jax.random.bernoulli(rng, prob, (images.shape[0], 1, 1, 1)), gray, images)
