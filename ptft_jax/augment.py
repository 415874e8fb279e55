"""On-device image augmentations: pure, jit-able, seeded by a PRNG key.

All take images [batch, h, w, c] in [0, 1] and return the same shape.
"""

import jax
import jax.numpy as jnp


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


def augment_images(
    rng: jax.Array, images: jax.Array, *, max_shift: int = 0, noise: float = 0.0,
    dropout: float = 0.0, jitter: float = 0.0,
) -> jax.Array:
  """Applies shift -> colour jitter -> pixel dropout -> noise, each with its own key."""
  k_shift, k_jit, k_drop, k_noise = jax.random.split(rng, 4)
  x = random_shift(k_shift, images, max_shift)
  x = color_jitter(k_jit, x, jitter)
  x = pixel_dropout(k_drop, x, dropout)
  return gaussian_noise(k_noise, x, noise)
