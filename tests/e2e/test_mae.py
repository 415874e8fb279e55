"""MAE: patch order, random masks, the loss sees only hidden patches, the ViT encodes only
the kept patches and the decoder rebuilds every patch."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptft_jax import models, tasks
from ptft_jax.data.sources import DatasetInfo
from ptft_jax.errors import ConfigError
from ptft_jax.tasks import mae

INFO = DatasetInfo(name="x", image_shape=(8, 8, 1), num_classes=10, label_names=[],
                   splits={})


def test_patchify_is_the_vit_grid_order():
  rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
  image = np.stack([rows, cols], -1)[None].astype(np.float32)  # [1, 8, 8, 2]: (row, col)
  patches = np.asarray(mae.patchify(jnp.asarray(image), 4)).reshape(1, 4, 4, 4, 2)
  for k in range(4):  # patch k is grid cell (k // 2, k % 2), pixels row-major inside
    np.testing.assert_array_equal(patches[0, k, ..., 0], rows[:4, :4] + 4 * (k // 2))
    np.testing.assert_array_equal(patches[0, k, ..., 1], cols[:4, :4] + 4 * (k % 2))


def test_random_keep_draws_distinct_sorted_ids_per_row():
  ids = np.asarray(mae.random_keep(jax.random.key(0), 64, 16, 4))
  assert ids.shape == (64, 4)
  assert all(len(set(r)) == 4 and list(r) == sorted(r) and r.max() < 16 for r in ids)
  assert len({tuple(r) for r in ids}) > 32  # different masks per image
  np.testing.assert_array_equal(ids, mae.random_keep(jax.random.key(0), 64, 16, 4))


def test_loss_is_on_hidden_patches_only():
  task, _ = tasks.BUILDERS["mae"](ml_collections.ConfigDict(dict(patch_size=2)), INFO)
  assert (task.num_patches, task.keep) == (16, 4)
  batch = {"image": jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))}
  inputs = task.inputs(batch, jax.random.key(2), train=True)
  prediction = jax.random.normal(jax.random.key(3), (2, 16, 4))
  base, _ = task.loss({"mae": prediction}, inputs, batch)
  kept = np.asarray(inputs["patch_ids"])
  hidden = np.setdiff1d(np.arange(16), kept[0])
  visible_changed = prediction.at[0, kept[0, 0]].add(5.0)
  hidden_changed = prediction.at[0, hidden[0]].add(5.0)
  assert task.loss({"mae": visible_changed}, inputs, batch)[0] == base
  assert task.loss({"mae": hidden_changed}, inputs, batch)[0] > base
  # Evaluation masks the same way every time; training draws from the step's rng.
  a = task.inputs(batch, jax.random.key(5), train=False)["patch_ids"]
  b = task.inputs(batch, jax.random.key(6), train=False)["patch_ids"]
  np.testing.assert_array_equal(a, b)


def test_vit_encodes_kept_patches_and_the_decoder_rebuilds_all():
  task, head = tasks.BUILDERS["mae"](
      ml_collections.ConfigDict(dict(patch_size=2, decoder_width=32)), INFO)
  model = models.build_model(ml_collections.ConfigDict(dict(
      name="vit", image_size=8, patch_size=2, hidden_size=32, num_layers=2, num_heads=2,
      intermediate_size=64)), {"mae": head})
  batch = task.inputs({"image": jnp.ones((3, 8, 8, 1))}, jax.random.key(0), train=True)
  variables = jax.jit(model.init)(jax.random.key(1), batch)
  out = jax.jit(model.apply)(variables, batch)
  assert out["features"]["sequence"].shape == (3, 1 + 4, 32)  # class token + kept patches
  assert out["mae"].shape == (3, 16, 4)
  assert set(variables["params"]["heads"]["mae"]) >= {"embed", "mask_token", "pos_embedding",
                                                     "layer_0", "final_norm", "pixels"}


def test_mae_config_errors_are_one_line():
  with pytest.raises(ConfigError, match="patch_size"):
    tasks.BUILDERS["mae"](ml_collections.ConfigDict(), INFO)
  with pytest.raises(ConfigError, match="does not divide"):
    tasks.BUILDERS["mae"](ml_collections.ConfigDict(dict(patch_size=3)), INFO)
  with pytest.raises(ConfigError, match="mask_ratio"):
    tasks.BUILDERS["mae"](ml_collections.ConfigDict(dict(patch_size=2, mask_ratio=1.0)), INFO)
