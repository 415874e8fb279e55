"""Parameter groups on a scanned stack: row k of `layers/...` is `layer_{k}/...`.

Each layer-wise preset trains a tiny scanned BERT / GPT exactly as the looped one
from the same init (params after `layout.scan_to_loop`, EMA included); frozen rows
stay bitwise unchanged; the groups report which rows of a stacked leaf they hold.
"""

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ptft_jax import base_config, optim
from ptft_jax.errors import ConfigError
from ptft_jax.models import bert, gpt, layout
from ptft_jax.optim import lora
from ptft_jax.train import finetune
from tests.helpers import flat

SMALL = dict(vocab_size=32, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=16,
             max_position_embeddings=8, dropout_rate=0.0, attention_dropout_rate=0.0)
BATCH = {"input_ids": (np.arange(16).reshape(2, 8) * 5 % 32).astype(np.int32)}
PRESETS = {
    "freeze_layers": dict(name="freeze_layers", freeze_layers=1),
    "layer_decay": dict(name="layer_decay", layer_decay=0.5),
    "gradual_unfreeze": dict(name="gradual_unfreeze", unfreeze_every=1),
    "discriminative": dict(name="discriminative", backbone_lr_mult=0.3),
}


def _optim(strategy=None, **kw):
  c = base_config().optim
  # Clipping, decay, warmup, a schedule and EMA all on, so each sees the rows apart.
  c.lr, c.warmup_steps, c.decay, c.weight_decay = 0.05, 0, "cosine", 0.1
  c.grad_clip_norm, c.ema_decay = 0.05, 0.5
  # The key biases' gradient is zero up to rounding (softmax ignores a shift); Adam with a
  # tiny eps would blow that noise, which differs between two compiled programs, up to lr.
  c.eps = 1e-3
  c.update(kw)
  if strategy:
    c.strategy.update(strategy)
  return c


def _models(family):
  looped, scanned = _model(family, False), _model(family, True)
  params = {"backbone": looped.init(jax.random.key(0), BATCH, train=False)["params"],
            "heads": {"out": {"kernel": jax.random.normal(jax.random.key(1), (16, 3))}}}
  return looped, scanned, params


@functools.cache
def _model(family, scan):
  return {"bert": bert, "gpt": gpt}[family](scan_layers=scan, **SMALL)


@functools.cache
def _grad(model, alpha=None):
  """The jitted gradient of a fixed regression loss; one compile per model for all tests."""
  target = jax.random.normal(jax.random.key(2), (2, 8, 3))

  def loss(p):
    p = lora.merge_lora(p, alpha) if alpha else p
    seq = model.apply({"params": p["backbone"]}, BATCH, train=False)["sequence"]
    return jnp.mean((seq @ p["heads"]["out"]["kernel"] - target) ** 2)

  return jax.jit(jax.grad(loss))


def _train(model, params, optim_config, steps=3, alpha=None):
  """`steps` optimizer steps; (params, EMA params, groups)."""
  tx, groups = optim.make_optimizer(params, optim_config, total_steps=4)
  update = jax.jit(tx.update)
  state = tx.init(params)
  for _ in range(steps):
    updates, state = update(_grad(model, alpha)(params), state, params)
    params = optax.apply_updates(params, updates)
  return params, optim.ema_params(params, state), groups


def _assert_close(a, b, atol=1e-6):
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_allclose(np.asarray(fa[k]), np.asarray(fb[k]), atol=atol, rtol=1e-6,
                               err_msg=k)


@pytest.mark.parametrize(("family", "preset", "name"), [
    ("bert", "freeze_layers", "adamw"), ("bert", "layer_decay", "adamw"),
    ("bert", "gradual_unfreeze", "adamw"), ("bert", "discriminative", "adamw"),
    ("bert", "layer_decay", "sgd"), ("gpt", "gradual_unfreeze", "adamw")])
def test_scanned_preset_trains_like_looped(family, preset, name):
  looped, scanned, params = _models(family)
  config = _optim(PRESETS[preset], name=name)
  want, want_ema, looped_groups = _train(looped, params, config)
  got, got_ema, groups = _train(scanned, layout.loop_to_scan(params), config)
  assert [(g.name, g.num_params) for g in groups] == [
      (g.name, g.num_params) for g in looped_groups]
  assert optim.param_counts(groups) == optim.param_counts(looped_groups)
  _assert_close(layout.scan_to_loop(got), want)
  _assert_close(layout.scan_to_loop(got_ema), want_ema)
  moved = {k for k, v in flat(want).items() if not np.array_equal(v, flat(params)[k])}
  assert any("layer_0" in k for k in moved) == (preset != "freeze_layers")
  assert any("layer_1" in k for k in moved)
  if preset == "freeze_layers":  # layer 0 (row 0) and the embeddings: bitwise
    back, start = flat(layout.scan_to_loop(got)), flat(params)
    for k in start:
      if "layer_0" in k or "embeddings" in k:
        assert np.array_equal(back[k], start[k]), k
    for k, v in flat(layout.scan_to_loop(got_ema)).items():
      if "layer_0" in k:
        assert np.array_equal(v, start[k]), k


def test_rows_in_groups_table_mask_and_json(tmp_path):
  _, _, params = _models("bert")
  scanned = layout.loop_to_scan(params)
  config = _optim(dict(name="freeze_layers", freeze_layers=1))
  labels, groups = optim.assign_groups(scanned, config)
  kernel = "backbone/layers/attention/query/kernel"
  assert flat(labels)[kernel] == "first_1|default"  # row 0 frozen, row 1 trains
  first, default = groups
  assert (kernel, (0,)) in first.rows and (kernel, (1,)) in default.rows
  assert kernel not in first.leaves + default.leaves
  assert flat(optim.trainable_mask(scanned, groups))[kernel]  # a gradient for row 1
  assert "21 (row 0)" in optim.group_table(groups)
  ft = finetune.FineTuning(lora=None, compute_dtype=None, accumulation_steps=1, ema=False)
  finetune.write_param_groups_json(str(tmp_path), groups, scanned, ft)
  record = json.loads((tmp_path / "param_groups.json").read_text())
  assert record["groups"][0]["rows"][kernel] == [0] and record["groups"][0]["leaves"] == 21
  assert record["groups"][1]["rows"][kernel] == [1]
  assert record["frozen"] == optim.param_counts(
      optim.assign_groups(params, config)[1])["frozen"]
  # Rows of different frozen groups only: the leaf is frozen (no gradient, no state).
  both = _optim(groups=[("backbone/layer_0/.*", {"frozen": True, "name": "a"}),
                        ("backbone/layer_1/.*", {"frozen": True, "name": "b"})])
  _, split = optim.assign_groups(scanned, both)
  assert not flat(optim.trainable_mask(scanned, split))[kernel]
  # A regex on the stacked path takes every row, as before.
  _, whole = optim.assign_groups(scanned, _optim(groups=[("backbone/layers/.*", {"lr": 1.0})]))
  assert kernel in whole[0].leaves and not whole[0].rows


def test_what_stays_per_array_is_one_error_line():
  _, _, params = _models("bert")
  scanned = layout.loop_to_scan(params)
  with pytest.raises(ConfigError, match=r"weight_decay_mask=.*some layers of the stacked leaf"):
    optim.make_optimizer(scanned, _optim(weight_decay_mask=r"backbone/layer_0/.*kernel"), 4)
  with pytest.raises(ConfigError, match=r"holds '\|'"):
    optim.assign_groups(scanned, _optim(groups=[("backbone/.*", {"name": "a|b"})]))


def test_scanned_lora_is_per_layer_and_trains_like_looped():
  looped, scanned, params = _models("bert")
  targets = r"backbone/layer_\d+/attention/(query|value)/kernel"
  with_lora = lora.add_adapters(params, jax.random.key(3), rank=2, targets=targets)
  stacked = lora.add_adapters(layout.loop_to_scan(params), jax.random.key(3), rank=2,
                              targets=targets)
  ab = stacked["lora"]["backbone"]["layers"]["attention"]["query"]["kernel"]
  assert ab["a"].shape == (2, 16, 2) and ab["b"].shape == (2, 2, 16)
  # The same seed gives the same adapters in either layout.
  _assert_close(layout.scan_to_loop(stacked), with_lora, atol=0)
  # b != 0 so the merge is not a no-op, then LoRA training in either layout.
  bump = lambda t: jax.tree_util.tree_map(lambda x: x + 0.1, t)
  with_lora = {**with_lora, "lora": bump(with_lora["lora"])}
  stacked = layout.loop_to_scan(with_lora)
  merge = lambda p: lora.merge_lora(p, alpha=4.0)
  _assert_close(layout.scan_to_loop(merge(stacked)), merge(with_lora))
  config = _optim(dict(name="lora"))
  want, _, _ = _train(looped, with_lora, config, alpha=4.0)
  got, _, _ = _train(scanned, stacked, config, alpha=4.0)
  _assert_close(layout.scan_to_loop(got), want)
  assert lora.adapter_paths(stacked) == ["backbone/layers/attention/query/kernel",
                                         "backbone/layers/attention/value/kernel"]
  with pytest.raises(ConfigError, match="some layers of the stacked kernel"):
    lora.add_adapters(layout.loop_to_scan(params), jax.random.key(3), rank=2,
                      targets=r"backbone/layer_1/attention/query/kernel")


def test_old_scanned_adapters_still_merge():
  """Adapters written before per-layer LoRA (a [L * in, rank], one b) merge as they did."""
  _, _, params = _models("bert")
  stacked = layout.loop_to_scan(params)
  kernel = stacked["backbone"]["layers"]["attention"]["query"]["kernel"]
  a = jax.random.normal(jax.random.key(4), (2 * 16, 2))
  b = jax.random.normal(jax.random.key(5), (2, 16))
  old = {**stacked, "lora": {"backbone": {"layers": {"attention": {"query": {"kernel": {
      "a": a, "b": b}}}}}}}
  merged = lora.merge_lora(old, alpha=2.0)["backbone"]["layers"]["attention"]["query"]["kernel"]
  np.testing.assert_allclose(merged, kernel + (a @ b).reshape(kernel.shape), atol=1e-6)


def test_presets_on_scanned_stack_use_looped_names():
  _, _, params = _models("bert")
  scanned = layout.loop_to_scan(params)
  assert optim.strategies.unit_depths(scanned) == optim.strategies.unit_depths(params) == {
      "embeddings": 3, "layer_0": 2, "layer_1": 1, "pooler": 0}
  for preset in PRESETS.values():
    strategy = ml_collections.ConfigDict(preset)
    assert (optim.strategies.preset_groups(scanned, strategy)
            == optim.strategies.preset_groups(params, strategy))
