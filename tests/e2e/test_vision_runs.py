"""Vision families: MLP / CNN / ResNet shapes, BatchNorm freezing, augmentations, configs."""

import json

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ptft_jax import optim, tasks, train
from ptft_jax.models import build_model
from ptft_jax.models.resnet import frozen_norm_paths
from ptft_jax.train import checkpoint
from tests.helpers import flat, load_config

pytestmark = pytest.mark.usefixtures("fast_prng_compile")


# --- shapes and parameter counts ------------------------------------------------------


# --- ResNet runs and BatchNorm through the real train step ----------------------------

DIGITS = type("Info", (), {"num_classes": 10, "image_shape": (8, 8, 1), "label_names": None})()


@pytest.fixture(scope="module")
def resnet_runs(tmp_path_factory):
  """configs/resnet.py tiny on digits: `finetune` from scratch, then `linear` from it."""
  root = tmp_path_factory.mktemp("resnet")
  fine = load_config("resnet", "finetune,tiny,dataset=digits")
  fine.train.tensorboard = False
  fine.train.eval_every, fine.eval_splits = 0, ()  # the linear stage evaluates
  train.run(fine, str(root / "finetune"))
  linear = load_config("resnet", f"linear,tiny,dataset=digits,pretrained={root / 'finetune'}")
  linear.train.tensorboard = False
  train.run(linear, str(root / "linear"))
  return root, linear


def test_resnet_finetune_trains_batch_norm_and_linear_keeps_it_bitwise(resnet_runs):
  root, _ = resnet_runs
  fine, _ = checkpoint.load_params(str(root / "finetune"))
  lin, step = checkpoint.load_params(str(root / "linear"))
  assert step == 3
  f, li = flat(fine["model_state"]), flat(lin["model_state"])
  assert len(f) == 12 and f.keys() == li.keys()  # stem, 2 + 3 in the blocks; mean and var
  for path, value in f.items():
    # Trained away from the init (mean 0, var 1) in finetune, then loaded and never
    # touched by the linear stage, whose norms use these running averages.
    init = 0.0 if path.endswith("mean") else 1.0
    assert not np.allclose(value, init), path
    np.testing.assert_array_equal(value, li[path], err_msg=path)
  fb, lb = flat(fine["params"]["backbone"]), flat(lin["params"]["backbone"])
  assert fb.keys() == lb.keys() and all(np.array_equal(fb[k], lb[k]) for k in fb)
  report = (root / "linear" / "transfer_report.json").read_text()
  assert "model_state/batch_stats/backbone/stem_bn/mean" in report.split('"initialized"')[0]
  with open(root / "linear" / "eval_test.json") as f:
    assert 0.0 <= json.load(f)["accuracy"] <= 1.0


def _linear_model(resnet_runs):
  root, config = resnet_runs
  task, head = tasks.build_task(config, DIGITS)
  model = build_model(config.model, head)
  variables, _ = checkpoint.load_params(str(root / "linear"))
  labels, groups = optim.assign_groups(variables["params"], config.optim)
  frozen = {g.name for g in groups if g.frozen}
  trainable = jax.tree_util.tree_map(lambda lab: lab not in frozen, labels)
  return model, variables["params"], variables["model_state"], trainable


def test_frozen_norms_make_a_training_pass_the_eval_pass(resnet_runs):
  model, params, model_state, trainable = _linear_model(resnet_runs)
  assert len(frozen_norm_paths(trainable, model_state)) == 6
  frozen = model.with_frozen_norms(trainable, model_state)
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (16, 8, 8, 1))}
  variables = {"params": params, **model_state}
  train_out, new_state = frozen.apply(variables, batch, train=True, mutable=["batch_stats"])
  eval_out = model.apply(variables, batch, train=False)
  np.testing.assert_array_equal(train_out["classifier"], eval_out["classifier"])
  # Each example's output is its own, whatever else is in the batch.
  others = batch["image"].at[8:].set(jax.random.uniform(jax.random.PRNGKey(2), (8, 8, 8, 1)))
  mixed = frozen.apply(variables, {"image": others}, train=True, mutable=["batch_stats"])[0]
  np.testing.assert_array_equal(mixed["classifier"][:8], eval_out["classifier"][:8])
  before = flat(model_state)
  for path, value in flat(new_state).items():
    np.testing.assert_array_equal(value, before[path])
  # batch_norm="frozen" does the same without looking at the optimizer groups...
  forced = model.clone(backbone=model.backbone.clone(batch_norm="frozen"))
  out = forced.apply(variables, batch, train=True, mutable=["batch_stats"])[0]
  np.testing.assert_array_equal(out["classifier"], eval_out["classifier"])
  # ...while trainable norms normalize with batch statistics and update their averages.
  out, updated = model.apply(variables, batch, train=True, mutable=["batch_stats"])
  assert not np.allclose(out["classifier"], eval_out["classifier"])
  assert all(not np.array_equal(v, before[k]) for k, v in flat(updated).items())


def test_only_norms_with_frozen_scale_and_bias_are_frozen(resnet_runs):
  model, params, model_state, _ = _linear_model(resnet_runs)

  def frozen_norms(groups):
    labels, found = optim.assign_groups(params, ml_collections.ConfigDict(dict(
        lr=0.1, groups=groups)))
    frozen = {g.name for g in found if g.frozen}
    trainable = jax.tree_util.tree_map(lambda lab: lab not in frozen, labels)
    return frozen_norm_paths(trainable, model_state)

  # tune_bn in configs/resnet.py: convolutions frozen, BatchNorm trained (batch statistics).
  assert frozen_norms([(r"backbone/(?!.*bn).*", {"frozen": True})]) == ()
  assert frozen_norms([(r"backbone/(stem|stage1).*", {"frozen": True})]) == (
      "backbone/stage1_block0/bn1", "backbone/stage1_block0/bn2", "backbone/stem_bn")
  # A norm with only its scale frozen still learns its bias, so it keeps batch statistics.
  assert frozen_norms([(r"backbone/.*/scale", {"frozen": True})]) == ()
  assert model.with_frozen_norms(None, model_state) is model


# --- augmentations --------------------------------------------------------------------


# --- configs, end to end --------------------------------------------------------------


def _quick(config):
  """No TensorBoard files; the pretraining stage skips evaluation (one compile less)."""
  for stage in config.stages.values():
    stage.train.tensorboard = False
  config.stages.pretrain.train.eval_every = 0
  config.stages.pretrain.eval_splits = ()
  return config


@pytest.mark.parametrize("name,dataset", [("mnist_mlp", "mnist"), ("cifar10_cnn", "cifar10")])
def test_mlp_and_cnn_configs_run_on_mock_data(name, dataset, tmp_path):
  config = _quick(load_config(name, "tiny"))
  with tfds.testing.mock_data(num_examples=32):
    result = train.run(config, str(tmp_path))
  assert list(result["stages"]) == ["pretrain", "finetune"]
  report = (tmp_path / "finetune" / "transfer_report.json").read_text()
  assert "params/backbone/" in report
  assert result["stages"]["pretrain"] == {}  # trained, checkpointed, not evaluated
  assert checkpoint.load_params(str(tmp_path / "pretrain"))[1] == 4
  assert 0.0 <= result["summary"]["finetune"]["test_accuracy"] <= 1.0


# --- ViT: MAE pretraining through the loop, then transfer -----------------------------


def test_vit_mae_pretrains_and_its_encoder_transfers(tmp_path):
  """configs/vit_mae.py tiny: the MAE stage trains encoder + decoder through the real loop
  (masked MSE falls); the fine-tuning stage loads the encoder and drops the decoder."""
  from configs import vit_mae

  pretrain = vit_mae.pretrain_stage(0, "mae", tiny=True)
  pretrain.train.steps, pretrain.train.log_every, pretrain.train.eval_every = 20, 4, 0
  pretrain.optim.warmup_steps, pretrain.data.batch_size = 4, 64
  pretrain.train.tensorboard, pretrain.eval_splits = False, ()
  train.run(pretrain, str(tmp_path / "pretrain"))
  with open(tmp_path / "pretrain" / "metrics.jsonl") as f:
    mse = [json.loads(line)["masked_mse"] for line in f if "masked_mse" in line]
  assert len(mse) == 5 and mse[-1] < 0.9 * mse[0]  # the hidden patches' pixels get closer
  finetune = vit_mae.finetune_stage(0, str(tmp_path / "pretrain"), 2, tiny=True)
  finetune.train.tensorboard, finetune.train.eval_every, finetune.eval_splits = False, 0, ()
  train.run(finetune, str(tmp_path / "finetune"))
  with open(tmp_path / "finetune" / "transfer_report.json") as f:
    loaded = json.load(f)["loaded"]
  encoder = flat(checkpoint.load_params(str(tmp_path / "pretrain"))[0]["params"]["backbone"])
  assert sorted(loaded) == sorted(f"params/backbone/{k}" for k in encoder)  # no decoder
