"""Parameter groups: matching, errors, frozen leaves, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ptft_jax import base_config, models, optim
from ptft_jax.errors import ConfigError


def _params():
  model = models.build_model(
      base_config().model, {"classifier": models.ClassifierHead(num_classes=3)})
  return model, model.init(jax.random.PRNGKey(0), {"image": jnp.ones((2, 4, 4, 1))})["params"]


def _optim_config(**overrides):
  c = base_config().optim
  for k, v in overrides.items():
    c[k] = v
  return c


def test_first_full_match_wins_and_default_catches_rest():
  _, params = _params()
  cfg = _optim_config(groups=[("backbone/layer_0/.*", {"lr": 0.5}),
                              ("backbone/.*", {"frozen": True})])
  labels, groups = optim.assign_groups(params, cfg)
  assert labels["backbone"]["layer_0"]["kernel"] == "group_0"
  assert labels["backbone"]["layer_1"]["kernel"] == "group_1"
  assert labels["heads"]["classifier"]["logits"]["bias"] == "default"
  assert [g.name for g in groups] == ["group_0", "group_1", "default"]
  assert groups[0].lr == 0.5 and groups[1].frozen
  assert groups[0].num_params == 16 * 256 + 256


def test_substring_is_not_a_match():
  _, params = _params()
  cfg = _optim_config(groups=[("layer_0", {"frozen": True})])  # no fullmatch -> error
  with pytest.raises(ConfigError, match=r"groups\[0\].*matches no parameter"):
    optim.assign_groups(params, cfg)


def test_group_shadowed_by_earlier_group_is_an_error():
  _, params = _params()
  cfg = _optim_config(groups=[("backbone/.*", {}), ("backbone/layer_0/.*", {"lr": 1.0})])
  with pytest.raises(ConfigError, match="taken by an earlier group"):
    optim.assign_groups(params, cfg)


def test_unknown_group_setting_is_an_error():
  _, params = _params()
  with pytest.raises(ConfigError, match=r"unknown settings \['frozn'\]"):
    optim.assign_groups(params, _optim_config(groups=[("backbone/.*", {"frozn": True})]))


def test_frozen_leaves_unchanged_and_stateless_under_adamw_decay():
  _, params = _params()
  cfg = _optim_config(weight_decay=0.1, grad_clip_norm=1.0,
                      groups=[("backbone/.*", {"frozen": True})])
  tx, _ = optim.make_optimizer(params, cfg, total_steps=10)
  state = tx.init(params)
  # No Adam moments anywhere for frozen leaves: every array in the opt state
  # has the shape of a head parameter or is a scalar count.
  head_shapes = {x.shape for x in jax.tree_util.tree_leaves(params["heads"])}
  for leaf in jax.tree_util.tree_leaves(state):
    assert leaf.shape == () or leaf.shape in head_shapes, leaf.shape
  mu_sizes = sum(x.size for x in jax.tree_util.tree_leaves(state) if x.shape != ())
  head_size = sum(x.size for x in jax.tree_util.tree_leaves(params["heads"]))
  assert mu_sizes == 2 * head_size  # mu and nu for the head only
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  new = params
  for _ in range(3):
    updates, state = tx.update(grads, state, new)
    new = optax.apply_updates(new, updates)
  for a, b in zip(jax.tree_util.tree_leaves(params["backbone"]),
                  jax.tree_util.tree_leaves(new["backbone"]), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(params["heads"]["classifier"]["logits"]["kernel"],
                         new["heads"]["classifier"]["logits"]["kernel"])


def test_weight_decay_mask_spares_biases():
  _, params = _params()
  cfg = _optim_config(weight_decay=0.5, lr=0.1, warmup_steps=0, decay="constant",
                      grad_clip_norm=0.0)
  tx, _ = optim.make_optimizer(params, cfg, total_steps=10)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  bias_update = updates["backbone"]["layer_0"]["bias"]
  kernel = params["backbone"]["layer_0"]["kernel"]
  np.testing.assert_array_equal(bias_update, 0)
  np.testing.assert_allclose(updates["backbone"]["layer_0"]["kernel"], -0.1 * 0.5 * kernel,
                             rtol=1e-6)


def test_schedules():
  s = optim.make_schedule(1.0, 110, warmup_steps=10, decay="cosine")
  assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(60)) == pytest.approx(0.5, abs=1e-6)
  lin = optim.make_schedule(1.0, 100, decay="linear")
  assert float(lin(50)) == pytest.approx(0.5)
  with pytest.raises(ConfigError, match="config.optim.decay"):
    optim.make_schedule(1.0, 10, decay="cosin")


def test_sgd_momentum_by_hand():
  params = {"w": jnp.array([1.0])}
  cfg = _optim_config(name="sgd", lr=0.1, momentum=0.9, warmup_steps=0, decay="constant",
                      weight_decay=0.0, grad_clip_norm=0.0, weight_decay_mask="w")
  tx, _ = optim.make_optimizer(params, cfg, 10)
  state = tx.init(params)
  g = {"w": jnp.array([1.0])}
  u1, state = tx.update(g, state, params)
  u2, state = tx.update(g, state, params)
  np.testing.assert_allclose([u1["w"][0], u2["w"][0]], [-0.1, -0.19], rtol=1e-6)
