"""Fine-tuning toolkit: presets, gradual unfreezing, LoRA, accumulation, precision, EMA,
mixup, early stopping and the best checkpoint."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ptft_jax import base_config, models, optim, tasks
from ptft_jax.errors import ConfigError
from ptft_jax.optim import lora, strategies
from ptft_jax.parallel import sharding
from ptft_jax.tasks import losses
from ptft_jax.train import checkpoint, early_stopping, finetune, steps
from tests.helpers import flat, tiny_config


def _mlp(hidden=(8, 4), classes=3):
  c = base_config()
  c.model.hidden_sizes = hidden
  model = models.build_model(c.model, {"classifier": models.ClassifierHead(num_classes=classes)})
  params = model.init(jax.random.PRNGKey(0), {"image": jnp.ones((2, 4, 4, 1))})["params"]
  return model, params


def _optim(**kw):
  c = base_config().optim
  c.warmup_steps, c.decay, c.grad_clip_norm = 0, "constant", 0.0
  for k, v in kw.items():
    if k == "strategy":
      c.strategy.update(v)
    else:
      c[k] = v
  return c


def _batch(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return {"image": jnp.asarray(rng.normal(size=(n, 4, 4, 1)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, 3, n), jnp.int32)}


def _state(params, tx, model_state=None):
  return {"step": jnp.int32(0), "params": params, "model_state": model_state or {},
          "opt_state": tx.init(params), "rng": jax.random.PRNGKey(1)}


# --- parameter groups and presets ---------------------------------------------------------------

def test_group_schedule_name_and_their_errors():
  _, params = _mlp()
  cfg = _optim(decay="cosine", groups=[
      ("backbone/layer_0/.*", {"name": "bottom", "schedule": "linear", "lr": 0.5})])
  _, groups = optim.assign_groups(params, cfg)
  assert [(g.name, g.schedule) for g in groups] == [("bottom", "linear"), ("default", "cosine")]
  table = optim.group_table(groups).splitlines()
  assert table[0].split() == ["group", "regex", "leaves", "params", "lr", "schedule", "wd",
                              "frozen"]
  assert table[1].split()[:6] == ["bottom", "backbone/layer_0/.*", "2", "136", "0.5", "linear"]
  with pytest.raises(ConfigError, match=r"groups\[0\].*schedule 'cosin' is not one of"):
    optim.assign_groups(params, _optim(groups=[("backbone/.*", {"schedule": "cosin"})]))
  with pytest.raises(ConfigError, match=r"groups\[1\]: group name 'a' is used twice"):
    optim.assign_groups(params, _optim(groups=[
        ("backbone/layer_0/.*", {"name": "a"}), ("backbone/layer_1/.*", {"name": "a"})]))
  with pytest.raises(ConfigError, match="'default' is reserved"):
    optim.assign_groups(params, _optim(groups=[("backbone/.*", {"name": "default"})]))


def test_strategy_presets_expand_to_groups():
  _, params = _mlp()
  probe = optim.assign_groups(params, _optim(strategy={"name": "linear_probe"}))[1]
  assert [(g.name, g.frozen, len(g.leaves)) for g in probe] == [
      ("backbone", True, 4), ("default", False, 2)]
  assert optim.param_counts(probe) == {"total": 16 * 8 + 8 + 8 * 4 + 4 + 4 * 3 + 3,
                                       "trainable": 15, "frozen": 16 * 8 + 8 + 8 * 4 + 4}
  first = optim.assign_groups(params, _optim(strategy={"name": "freeze_layers",
                                                       "freeze_layers": 1}))[1]
  assert first[0].frozen and first[0].leaves == (
      "backbone/layer_0/bias", "backbone/layer_0/kernel")
  disc = optim.assign_groups(params, _optim(lr=0.1, strategy={
      "name": "discriminative", "backbone_lr_mult": 0.2}))[1]
  assert [g.lr for g in disc] == pytest.approx([0.02, 0.1])
  assert optim.assign_groups(params, _optim(strategy={"name": "full"}))[1][0].name == "default"
  # Explicit groups come first and win; a preset group left with nothing is dropped.
  mixed = optim.assign_groups(params, _optim(
      groups=[("backbone/.*", {"lr": 0.3})], strategy={"name": "linear_probe"}))[1]
  assert [(g.name, g.frozen) for g in mixed] == [("group_0", False), ("default", False)]
  with pytest.raises(ConfigError, match=r"strategy.name: unknown strategy 'probe'"):
    optim.assign_groups(params, _optim(strategy={"name": "probe"}))
  with pytest.raises(ConfigError, match=r"freeze_layers=3: the backbone has 2 layers"):
    optim.assign_groups(params, _optim(strategy={"name": "freeze_layers", "freeze_layers": 3}))


def test_unit_depths_per_model_family():
  def depths(mc, batch):
    backbone = models.build_backbone(ml_collections.ConfigDict(mc))
    shapes = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), batch, train=False))
    return strategies.unit_depths({"backbone": shapes["params"], "heads": {}})

  image, ids = {"image": jnp.ones((2, 8, 8, 1))}, {"input_ids": jnp.ones((2, 8), jnp.int32)}
  assert depths(dict(name="cnn", channels=(4, 8), dense_sizes=(8,)), image) == {
      "conv_0": 3, "conv_1": 2, "dense_0": 1}
  bert = dict(name="bert", vocab_size=40, hidden_size=8, num_layers=2, num_heads=2,
              intermediate_size=16, max_position_embeddings=8)
  assert depths(bert, ids) == {"embeddings": 3, "layer_0": 2, "layer_1": 1, "pooler": 0}
  # Only the paths matter: the RNN's and ResNet's layouts (see models/rnn.py, resnet.py).
  leaf = {"kernel": jnp.zeros((1, 1))}
  rnn = {"backbone": {u: leaf for u in ("embed", "layer_0_forward", "layer_0_backward",
                                        "layer_1_forward", "layer_1_backward")}}
  assert strategies.unit_depths(rnn) == {"embed": 3, "layer_0_backward": 2, "layer_0_forward": 2,
                                         "layer_1_backward": 1, "layer_1_forward": 1}
  resnet = {"backbone": {u: leaf for u in ("stem_conv", "stem_bn", "stage1_block0",
                                           "stage1_block1", "stage2_block0")}}
  assert strategies.unit_depths(resnet) == {"stage1_block0": 3, "stage1_block1": 2,
                                            "stage2_block0": 1, "stem_bn": 4, "stem_conv": 4}


def test_layer_decay_learning_rates_by_hand():
  _, params = _mlp()
  cfg = _optim(name="sgd", momentum=0.0, lr=0.8, weight_decay=0.0,
               strategy={"name": "layer_decay", "layer_decay": 0.5})
  tx, groups = optim.make_optimizer(params, cfg, total_steps=10)
  # heads depth 0 -> 0.8; layer_1 depth 1 -> 0.4; layer_0 depth 2 -> 0.2
  assert {g.name: g.lr for g in groups} == pytest.approx(
      {"depth_1": 0.4, "depth_2": 0.2, "default": 0.8})
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  u = flat(updates)
  np.testing.assert_allclose(u["backbone/layer_0/kernel"], -0.2, rtol=1e-6)
  np.testing.assert_allclose(u["backbone/layer_1/bias"], -0.4, rtol=1e-6)
  np.testing.assert_allclose(u["heads/classifier/logits/kernel"], -0.8, rtol=1e-6)


def test_gradual_unfreezing_gates_without_resetting_state():
  _, params = _mlp()
  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.3), params)
  cfg = _optim(lr=0.1, weight_decay=0.1)

  def trajectory(tx, n):
    state, p, out = tx.init(params), params, []
    for _ in range(n):
      updates, state = tx.update(grads, state, p)
      p = optax.apply_updates(p, updates)
      out.append((flat(p), state))
    return out

  gradual, groups = optim.make_optimizer(
      params, _optim(lr=0.1, weight_decay=0.1,
                     strategy={"name": "gradual_unfreeze", "unfreeze_every": 3}), 20)
  assert [(g.name, g.unfreeze_at) for g in groups] == [
      ("depth_1", 3), ("depth_2", 6), ("default", 0)]
  assert "until 3" in optim.group_table(groups)
  full, _ = optim.make_optimizer(params, cfg, 20)
  got, ref = trajectory(gradual, 8), trajectory(full, 8)
  start = flat(params)
  for step, (p, _) in enumerate(got, start=1):  # step = updates applied so far
    for path in p:
      unfreeze = 3 if "layer_1" in path else 6 if "layer_0" in path else 0
      if step <= unfreeze:  # not trained yet: bitwise unchanged (weight decay included)
        np.testing.assert_array_equal(p[path], start[path], err_msg=f"{path} @ {step}")
      else:  # trains as a full run started at its unfreeze step (Adam's count starts then)
        np.testing.assert_allclose(p[path], ref[step - unfreeze - 1][0][path], rtol=1e-6,
                                   err_msg=f"{path} @ {step}")
  # The head's Adam moments never reset when deeper groups unfroze.
  head_mu = lambda s: [x for x in jax.tree_util.tree_leaves(s) if x.shape == (4, 3)]
  for (_, s_got), (_, s_ref) in zip(got, ref, strict=True):
    for a, b in zip(head_mu(s_got), head_mu(s_ref), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-6)


# --- LoRA --------------------------------------------------------------------------------------

def test_lora_merge_equals_unmerged_forward_and_step0_is_base():
  model, params = _mlp()
  with_lora = lora.add_adapters(params, jax.random.PRNGKey(3), rank=2,
                                targets=r"backbone/layer_\d/kernel")
  assert lora.adapter_paths(with_lora) == ["backbone/layer_0/kernel", "backbone/layer_1/kernel"]
  ab = with_lora["lora"]["backbone"]["layer_0"]["kernel"]
  assert ab["a"].shape == (16, 2) and ab["b"].shape == (2, 8)
  merged0 = lora.merge_lora(with_lora, alpha=4.0)
  for k, v in flat(params).items():  # b = 0: step 0 is exactly the base model
    np.testing.assert_array_equal(flat(merged0)[k], v)
  # Train-like adapters, then compare with the explicit x @ W + s * (x @ a) @ b forward.
  b = jax.random.normal(jax.random.PRNGKey(4), (2, 8))
  with_lora["lora"]["backbone"]["layer_0"]["kernel"]["b"] = b
  merged = lora.merge_lora(with_lora, alpha=4.0)
  x = _batch(4)["image"]
  got = model.apply({"params": merged}, {"image": x})["features"]["features"]
  rows = x.reshape(4, -1)
  base = params["backbone"]
  h = rows @ base["layer_0"]["kernel"] + base["layer_0"]["bias"] + (
      (rows @ ab["a"]) @ b) * (4.0 / 2)
  h = jax.nn.relu(h)
  want = jax.nn.relu(h @ base["layer_1"]["kernel"] + base["layer_1"]["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  conv = {"backbone": {"conv_0": {"kernel": jnp.ones((3, 3, 2, 5))}}}
  merged_conv = lora.merge_lora(lora.add_adapters(
      conv, jax.random.PRNGKey(0), rank=1, targets=".*"), 1.0)
  assert merged_conv["backbone"]["conv_0"]["kernel"].shape == (3, 3, 2, 5)
  with pytest.raises(ConfigError, match=r"config.lora.targets='nothing' matches no kernel"):
    lora.add_adapters(params, jax.random.PRNGKey(0), rank=2, targets="nothing")


def test_lora_base_frozen_bitwise_without_optimizer_state():
  model, params = _mlp()
  params = lora.add_adapters(params, jax.random.PRNGKey(3), rank=2, targets=r"backbone/.*/kernel")
  cfg = _optim(weight_decay=0.1, grad_clip_norm=1.0, lr=0.05, strategy={"name": "lora"})
  tx, groups = optim.make_optimizer(params, cfg, 10)
  trainable = optim.trainable_mask(params, groups)
  counts = optim.param_counts(groups)
  adapters = (16 + 8) * 2 + (8 + 4) * 2
  assert counts["trainable"] == adapters + 4 * 3 + 3
  state = _state(params, tx)
  moments = sum(x.size for x in jax.tree_util.tree_leaves(state["opt_state"]) if x.ndim)
  assert moments == 2 * counts["trainable"]  # mu and nu of adapters + head only
  task = tasks.Classification(num_classes=3)
  step = jax.jit(steps.make_train_step(model, task, tx, trainable=trainable,
                                       param_fn=lambda p: lora.merge_lora(p, 16.0)))
  for i in range(3):
    state, _ = step(state, _batch(seed=i))
  before, after = flat(params), flat(state["params"])
  for path in before:
    if path.startswith("backbone/"):
      np.testing.assert_array_equal(after[path], before[path], err_msg=path)
  assert np.abs(after["lora/backbone/layer_0/kernel/b"]).max() > 0


# --- the step: accumulation, precision, EMA, mixup ----------------------------------------------

class _BnBackbone(nn.Module):
  @nn.compact
  def __call__(self, batch, *, train):
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    x = nn.Dense(6, name="layer_0")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.8, name="bn")(x)
    return {"features": nn.relu(x)}


def test_accumulation_equals_one_big_batch_and_threads_batch_stats():
  model, params = _mlp()
  tx, _ = optim.make_optimizer(params, _optim(lr=0.01), 10)
  task = tasks.Classification(num_classes=3)
  batch = _batch(16)
  out = {}
  for k in (1, 4):
    step = jax.jit(steps.make_train_step(model, task, tx, accumulation_steps=k))
    state, metrics = step(_state(params, tx), batch)
    state, metrics2 = step(state, _batch(16, seed=1))
    out[k] = (flat(state["params"]), float(metrics["loss"]), float(metrics2["accuracy"]))
  assert out[1][1] == pytest.approx(out[4][1], rel=1e-5)
  assert out[1][2] == pytest.approx(out[4][2], abs=1e-6)
  for path in out[1][0]:
    np.testing.assert_allclose(out[4][0][path], out[1][0][path], rtol=1e-4, atol=1e-6,
                               err_msg=path)
  # BatchNorm statistics: microbatch i (rows i, i+2, ...) updates them after microbatch i-1.
  bn_model = models.Model(backbone=_BnBackbone(), heads={"classifier": models.ClassifierHead(3)})
  variables = bn_model.init(jax.random.PRNGKey(0), {"image": batch["image"][:2]})
  ms = {"batch_stats": variables["batch_stats"]}
  tx, _ = optim.make_optimizer(variables["params"], _optim(), 10)
  step = jax.jit(steps.make_train_step(bn_model, task, tx, accumulation_steps=2))
  state, _ = step(_state(variables["params"], tx, ms), batch)
  want = ms
  for i in range(2):
    _, want = bn_model.apply({"params": variables["params"], **want},
                             {"image": batch["image"][i::2]}, train=True, mutable=["batch_stats"])
  for path, value in flat(want).items():
    np.testing.assert_allclose(flat(state["model_state"])[path], value, rtol=1e-5, err_msg=path)


def test_bfloat16_compute_keeps_float32_params_and_state():
  model, params = _mlp()
  tx, _ = optim.make_optimizer(params, _optim(lr=0.01), 10)
  task = tasks.Classification(num_classes=3)
  f32 = steps.make_train_step(model, task, tx)
  bf16 = steps.make_train_step(model, task, tx, compute_dtype=jnp.bfloat16)
  jaxpr = str(jax.make_jaxpr(bf16)(_state(params, tx), _batch()))
  assert "bf16[16,8]" in jaxpr and "dot_general" in jaxpr
  (s32, m32), (s16, m16) = [jax.jit(f)(_state(params, tx), _batch()) for f in (f32, bf16)]
  assert {x.dtype for x in jax.tree_util.tree_leaves((s16["params"], s16["opt_state"]))
          if x.ndim} == {jnp.dtype("float32")}
  assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=2e-2)
  assert float(m16["loss"]) != float(m32["loss"])  # it really ran in bfloat16


def test_ema_of_params_by_hand_and_only_for_trainable():
  _, params = _mlp()
  cfg = _optim(name="sgd", momentum=0.0, lr=0.1, weight_decay=0.0, ema_decay=0.5,
               groups=[("backbone/.*", {"frozen": True})])
  tx, _ = optim.make_optimizer(params, cfg, 10)
  state, p = tx.init(params), params
  ema_shapes = [x.shape for x in jax.tree_util.tree_leaves(state) if x.ndim]
  assert sorted(ema_shapes) == [(3,), (4, 3)]  # only the head is averaged
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  for _ in range(2):
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
  ema = optim.ema_params(p, state)
  w0 = params["heads"]["classifier"]["logits"]["kernel"]
  # e1 = .5 w0 + .5 (w0 - .1);  e2 = .5 e1 + .5 (w0 - .2)
  np.testing.assert_allclose(ema["heads"]["classifier"]["logits"]["kernel"], w0 - 0.125,
                             rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(ema["backbone"]),
                  jax.tree_util.tree_leaves(p["backbone"]), strict=True):
    assert a is b  # frozen leaves: the params themselves


def test_mixup_mixes_images_and_soft_labels():
  task = tasks.Classification(num_classes=3, mixup_alpha=0.4)
  batch = _batch(8)
  inputs = task.inputs(batch, jax.random.PRNGKey(0), True)
  lam, perm = float(inputs["mix_lambda"]), np.asarray(inputs["mix_index"])
  assert 0 < lam < 1 and sorted(perm) == list(range(8))
  np.testing.assert_allclose(inputs["image"], lam * batch["image"] + (1 - lam) * batch["image"][
      perm], rtol=1e-6)
  logits = jax.random.normal(jax.random.PRNGKey(1), (8, 3))
  loss, _ = task.loss({"classifier": logits}, inputs, batch)
  soft = lam * jax.nn.one_hot(batch["label"], 3) + (1 - lam) * jax.nn.one_hot(
      batch["label"][perm], 3)
  want = jnp.mean(-jnp.sum(soft * jax.nn.log_softmax(logits), -1))
  assert float(loss) == pytest.approx(float(want), rel=1e-6)
  assert task.inputs(batch, jax.random.PRNGKey(0), False) is batch  # eval: untouched
  assert float(losses.softmax_cross_entropy(logits, batch["label"]).mean()) != pytest.approx(
      float(loss))


# --- early stopping and the best checkpoint ------------------------------------------------------

def test_early_stopping_stops_at_the_right_step():
  rule = early_stopping.EarlyStopping("accuracy", mode="max", patience=2, min_delta=0.01)
  seq = [(10, 0.5), (20, 0.6), (30, 0.605), (40, 0.55), (50, 0.9)]
  stopped_at = next(step for step, v in seq if (rule.update(step, v), rule.should_stop)[1])
  assert stopped_at == 40 and (rule.best, rule.best_step) == (0.6, 20)
  low = early_stopping.EarlyStopping("loss", mode="min", patience=1)
  assert [low.update(s, v) for s, v in [(1, 3.0), (2, 2.0), (3, float("nan"))]] == [
      True, True, False]
  assert low.should_stop
  never = early_stopping.EarlyStopping("loss", mode="min", patience=0)
  for s in range(10):
    never.update(s, 1.0)
  assert not never.should_stop
  with pytest.raises(ConfigError, match="mode='up'"):
    early_stopping.EarlyStopping("loss", mode="up")


def test_best_keeper_saves_best_and_replays_on_resume(tmp_path):
  params = {"w": jnp.arange(3.0)}
  keeper = early_stopping.BestKeeper(
      early_stopping.EarlyStopping("accuracy", patience=2), str(tmp_path), start_step=0,
      keep_best=True)
  decisions = []
  for step, v in [(2, 0.5), (4, 0.7), (6, 0.6), (8, 0.65)]:
    state = {"params": {"w": params["w"] + step}, "model_state": {}}
    decisions.append(keeper.record_and_save_best(
        step, {"accuracy": v, "loss": 1.0}, lambda s=state: s))
  assert decisions == [False, False, False, True]
  best = json.load(open(tmp_path / "best.json"))
  assert (best["step"], best["value"], best["metric"]) == (4, 0.7, "accuracy")
  restored, step = keeper.best_state(None)
  assert step == 4 and np.asarray(restored["params"]["w"]).tolist() == [4.0, 5.0, 6.0]
  assert checkpoint.make_manager(str(tmp_path / "best"), read_only=True).all_steps() == [4]
  keeper.close()
  # A run resumed from step 6 replays only the evaluations up to 6.
  resumed = early_stopping.BestKeeper(
      early_stopping.EarlyStopping("accuracy", patience=2), str(tmp_path), start_step=6,
      keep_best=True)
  assert (resumed.rule.best_step, resumed.rule.bad_evals, resumed.stopped) == (4, 1, False)
  with pytest.raises(ConfigError, match=r"metric='accuracy' is not a validation metric.*'mse'"):
    resumed.record_and_save_best(8, {"mse": 1.0}, dict)


def test_fine_tuning_config_errors():
  mesh = sharding.make_mesh({"data": -1})
  with pytest.raises(ConfigError, match=r"accumulation_steps=3 must be >= 1 and divide "
                                        r"config.data.batch_size=32"):
    finetune.FineTuning.from_config(tiny_config(optim__accumulation_steps=3), mesh)
  with pytest.raises(ConfigError, match=r"batch_size / config.optim.accumulation_steps=4 is not "
                                        r"divisible by the 8 data-parallel devices"):
    finetune.FineTuning.from_config(tiny_config(optim__accumulation_steps=8), mesh)
  bad = tiny_config()
  bad.optim.strategy.name = "lora"
  with pytest.raises(ConfigError, match="strategy.name='lora' needs config.lora.rank >= 1"):
    finetune.FineTuning.from_config(bad, mesh)
  with pytest.raises(ConfigError, match="compute_dtype='fp8'"):
    finetune.FineTuning.from_config(tiny_config(train__compute_dtype="fp8"), mesh)
  with pytest.raises(ConfigError, match="needs config.train.eval_every > 0"):
    early_stopping.keeper(tiny_config(train__eval_every=0, train__early_stopping=dict(
        metric="accuracy")), "/nonexistent", 0)


# --- the comparison ---------------------------------------------------------------------------

