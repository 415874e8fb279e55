"""ViT backbone: layout, pooling, masked encoding (patch_ids), resampling, presets.

scan_layers == the loop is in tests/e2e/test_vision_import.py (nn.scan compiles slowly).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptft_jax import models
from ptft_jax.errors import ConfigError, UserError
from ptft_jax.models.vit import ViT, resample_pos_embedding, resize_for_transfer
from ptft_jax.optim import lora, strategies
from ptft_jax.train import checkpoint

TINY = dict(image_size=16, patch_size=4, hidden_size=16, num_layers=1, num_heads=2,
            intermediate_size=32)


def _apply(model, variables, batch):
  return jax.jit(lambda v, b: model.apply(v, b, train=False))(variables, batch)


def _init(model, size=16, seed=0):
  """Random N(0, 0.2) variables of the model's shapes (numpy: init's RNG compiles slowly)."""
  rng = np.random.RandomState(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(seed), {"image": _images(size=size)},
                                             train=False))
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.randn(*x.shape).astype(np.float32) * 0.2), shapes)


def _images(n=2, size=16, seed=0):
  return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
  model = ViT(**TINY)
  return model, _init(model)


def test_layout_and_features(tiny):
  model, variables = tiny
  p = variables["params"]
  assert sorted(p) == ["embeddings", "final_norm", "layer_0"]
  e = p["embeddings"]
  assert (e["patch"]["kernel"].shape, e["pos_embedding"].shape, e["cls_token"].shape) == (
      (4, 4, 3, 16), (16, 16), (16,))
  assert sorted(p["layer_0"]) == ["attention", "attention_norm", "mlp", "output_norm"]
  assert p["layer_0"]["attention"]["query"]["bias"].shape == (16,)
  out = _apply(model, variables, {"image": _images()})
  assert out["features"].shape == (2, 16) and out["features"].dtype == jnp.float32
  assert out["sequence"].shape == (2, 17, 16)
  np.testing.assert_array_equal(out["features"], out["sequence"][:, 0])
  # Registered backbone, config-built.
  built = models.build_backbone(ml_collections.ConfigDict(dict(name="vit", **TINY)))
  assert isinstance(built, ViT) and built.grid == 4


def test_gap_pooling_and_pooled_norm(tiny):
  _, variables = tiny
  gap, fc = ViT(**TINY, pool="gap"), ViT(**TINY, pool="gap", pooled_norm=True)
  no_cls = ViT(**TINY, pool="gap", class_token=False)
  no_cls_params = jax.tree_util.tree_map(lambda x: x, variables["params"])
  del no_cls_params["embeddings"]["cls_token"]
  batch = {"image": _images()}

  @jax.jit
  def run(v, v_no_cls):
    return (gap.apply(v, batch, train=False), fc.apply(v, batch, train=False),
            no_cls.apply(v_no_cls, batch, train=False))

  out, out2, out3 = run(variables, {"params": no_cls_params})
  np.testing.assert_allclose(out["features"], out["sequence"][:, 1:].mean(1), atol=1e-6)
  ln = variables["params"]["final_norm"]
  seq = out2["sequence"][:, 1:].mean(1)
  mu, var = seq.mean(-1, keepdims=True), seq.var(-1, keepdims=True)
  want = (seq - mu) / np.sqrt(var + 1e-6) * ln["scale"] + ln["bias"]
  np.testing.assert_allclose(out2["features"], want, atol=1e-5)
  assert out3["sequence"].shape == (2, 16, 16)


def test_patch_ids_select_after_positions_and_before_the_class_token(tiny):
  model, variables = tiny
  images = _images()
  all_ids = np.tile(np.arange(16, dtype=np.int32), (2, 1))
  perm = np.stack([np.random.RandomState(s).permutation(16) for s in (1, 2)]).astype(np.int32)
  keep = perm[:, :4]

  @jax.jit
  def run(v):
    return [model.apply(v, {"image": images, **extra}, train=False) for extra in (
        {}, {"patch_ids": all_ids}, {"patch_ids": perm}, {"patch_ids": keep})]

  full, same, out, masked = run(variables)
  np.testing.assert_allclose(same["sequence"], full["sequence"], atol=1e-6)
  # Positions are added before the selection: a permutation of all patches permutes the
  # patch tokens and leaves the class token unchanged (attention has no positions of its own).
  np.testing.assert_allclose(out["features"], full["features"], atol=1e-5)
  want = np.take_along_axis(np.asarray(full["sequence"][:, 1:]), perm[:, :, None], axis=1)
  np.testing.assert_allclose(out["sequence"][:, 1:], want, atol=1e-5)
  assert masked["sequence"].shape == (2, 5, 16)
  with pytest.raises(UserError, match=r"patch_ids'\] has shape \(4,\)"):
    jax.eval_shape(lambda v: model.apply(v, {"image": images, "patch_ids": keep[0]},
                                         train=False), variables)


def test_config_and_input_errors_are_one_line(tiny):
  with pytest.raises(ConfigError, match="pool='cls' needs config.model.class_token"):
    ViT(**TINY, class_token=False)
  with pytest.raises(ConfigError, match="image_size=18 is not a positive multiple"):
    ViT(**{**TINY, "image_size": 18})
  with pytest.raises(ConfigError, match="pool: 'max'"):
    ViT(**TINY, pool="max")
  model, variables = tiny
  with pytest.raises(UserError, match=r"batch\['image'\] has shape \(2, 24, 24, 3\), expected "
                                      r"\[batch, 16, 16, channels\]"):
    jax.eval_shape(lambda v: model.apply(v, {"image": _images(size=24)}, train=False), variables)


def test_resample_pos_embedding():
  rng = np.random.RandomState(0)
  pos = rng.randn(16, 8).astype(np.float32)
  assert resample_pos_embedding(pos, 4) is pos
  up = resample_pos_embedding(pos, 6)
  assert up.shape == (36, 8) and isinstance(up, np.ndarray)
  # A constant grid stays constant; a grid linear in its column index stays linear inside.
  const = resample_pos_embedding(np.ones((16, 8), np.float32) * 3.0, 6)
  np.testing.assert_allclose(const, 3.0, rtol=1e-6)
  ramp = np.tile(np.arange(4, dtype=np.float32), 4)[:, None] * np.ones((1, 2), np.float32)
  cols = resample_pos_embedding(ramp, 8).reshape(8, 8, 2)[0, :, 0]
  np.testing.assert_allclose(cols, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)
  down = resample_pos_embedding(jnp.asarray(pos), 2)
  assert isinstance(down, jax.Array) and down.shape == (4, 8)
  with pytest.raises(UserError, match="15 rows is not a square grid"):
    resample_pos_embedding(pos[:15], 4)
  assert resize_for_transfer("backbone/layer_0/mlp/output/kernel", pos, (36, 8)) is None
  assert resize_for_transfer("backbone/embeddings/pos_embedding", pos, (36, 4)) is None
  assert resize_for_transfer("backbone/embeddings/pos_embedding", pos, (36, 8)).shape == (36, 8)


def test_transfer_resamples_position_embeddings_to_the_new_resolution(tiny):
  _, variables = tiny
  source = {"params": {"backbone": variables["params"]}, "model_state": {}}
  big = ViT(**{**TINY, "image_size": 24})
  fresh = jax.eval_shape(lambda: big.init(jax.random.key(3), {"image": _images(size=24)},
                                          train=False))
  fresh = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), fresh)
  target = {"params": {"backbone": fresh["params"]}, "model_state": {}}
  new, report = checkpoint.transfer(target, source)
  pos = new["params"]["backbone"]["embeddings"]["pos_embedding"]
  assert pos.shape == (36, 16)
  np.testing.assert_allclose(
      pos, resample_pos_embedding(np.asarray(variables["params"]["embeddings"]["pos_embedding"]),
                                  6), atol=1e-6)
  assert report["resized"] == ["params/backbone/embeddings/pos_embedding: (16, 16) -> (36, 16)"]
  assert "resized 1: params/backbone/embeddings/pos_embedding" in checkpoint.format_report(report)
  np.testing.assert_array_equal(new["params"]["backbone"]["layer_0"]["mlp"]["output"]["kernel"],
                                variables["params"]["layer_0"]["mlp"]["output"]["kernel"])


def test_presets_address_vit_layers(tiny):
  _, variables = tiny
  params = {"backbone": dict(variables["params"]), "heads": {"classifier": {"logits": {
      "kernel": jnp.zeros((16, 3)), "bias": jnp.zeros((3,))}}}}
  # Two layers: layer_1 is a copy of layer_0 (only the paths matter).
  params["backbone"]["layer_1"] = params["backbone"]["layer_0"]
  assert strategies.unit_depths(params) == {"embeddings": 3, "final_norm": 0, "layer_0": 2,
                                            "layer_1": 1}
  decay = strategies.preset_groups(params, ml_collections.ConfigDict(
      {"name": "layer_decay", "layer_decay": 0.5}))
  assert [(g[1]["name"], g[1]["lr_mult"]) for g in decay] == [
      ("depth_1", 0.5), ("depth_2", 0.25), ("depth_3", 0.125)]
  assert decay[2][0] == r"(?:lora/)?backbone/embeddings/.*"
  frozen = strategies.preset_groups(params, ml_collections.ConfigDict(
      {"name": "freeze_layers", "freeze_layers": 1}))
  assert frozen == [(r"(?:lora/)?backbone/(?:embeddings|layer_0)/.*",
                     {"name": "first_1", "frozen": True})]
  adapted = lora.add_adapters(params, jax.random.key(0), rank=2,
                              targets=r"backbone/layer_\d+/attention/(query|value)/kernel")
  assert sorted(adapted["lora"]["backbone"]["layer_1"]["attention"]) == ["query", "value"]
  assert adapted["lora"]["backbone"]["layer_0"]["attention"]["query"]["kernel"]["a"].shape == (
      16, 2)
