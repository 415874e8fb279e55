"""Vision families: MLP / CNN / ResNet shapes, BatchNorm freezing, augmentations, configs."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptft_jax import optim, tasks
from ptft_jax.errors import ConfigError
from ptft_jax.models import ResNet, build_backbone, build_model
from ptft_jax.tasks import augment
from ptft_jax.train import steps
from tests.helpers import count_params, load_config

pytestmark = pytest.mark.usefixtures("fast_prng_compile")


def abstract_init(model, batch):
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))


# --- shapes and parameter counts ------------------------------------------------------


@pytest.mark.parametrize("depth,small,size,params,stats,width", [
    # torchvision's resnet18 / resnet50 minus their 1000-way fc layer.
    (18, False, 64, 11_176_512, 9_600, 512),
    (50, False, 64, 23_508_032, 53_120, 2048),
    (18, True, 32, 11_168_832, 9_600, 512),  # 3x3 stem: 64 * 3 * (9 - 49) fewer
    (50, True, 8, 23_500_352, 53_120, 2048),
])
def test_resnet_shapes_and_parameter_counts(depth, small, size, params, stats, width):
  model = ResNet(depth=depth, small_input=small)
  batch = {"image": jnp.zeros((2, size, size, 3))}
  variables = abstract_init(model, batch)
  assert count_params(variables["params"]) == params
  assert count_params(variables["batch_stats"]) == stats
  out = jax.eval_shape(lambda v: model.apply(v, batch, train=False), variables)
  assert out["features"].shape == (2, width)


def test_transfer_recipe_is_a_frozen_resnet50_with_a_1024_hidden_head():
  c = load_config("resnet", "linear")
  assert (c.model.name, c.model.depth, c.model.batch_norm) == ("resnet", 50, "auto")
  assert list(c.optim.groups) == [("backbone/.*", {"frozen": True})]
  info = type("Info", (), {"num_classes": 10, "image_shape": (32, 32, 3)})()
  _, head = tasks.build_task(c, info)
  model = build_model(c.model, head)
  variables = abstract_init(model, {"image": jnp.zeros((2, 32, 32, 3))})
  assert count_params(variables["params"]["backbone"]) == 23_500_352
  assert count_params(variables["params"]["heads"]) == 2048 * 1024 + 1024 + 1024 * 10 + 10
  labels, groups = optim.assign_groups(variables["params"], c.optim)
  assert groups[0].frozen and groups[0].num_params == 23_500_352


def test_mlp_and_cnn_configs_have_the_issue_shapes():
  mlp = load_config("mnist_mlp")
  pre, fine = mlp.stages.pretrain, mlp.stages.finetune
  info = type("Info", (), {"num_classes": 10, "image_shape": (28, 28, 1)})()
  batch = {"image": jnp.zeros((2, 28, 28, 1))}
  ae = abstract_init(build_model(pre.model, tasks.build_task(pre, info)[1]), batch)["params"]
  assert ae["backbone"]["layer_0"]["kernel"].shape == (784, 128)
  assert ae["heads"]["decoder"]["out"]["kernel"].shape == (128, 784)
  cls = abstract_init(build_model(fine.model, tasks.build_task(fine, info)[1]), batch)["params"]
  assert cls["heads"]["classifier"]["logits"]["kernel"].shape == (128, 10)
  assert count_params(cls) == 784 * 128 + 128 + 128 * 10 + 10

  cnn = load_config("cifar10_cnn")
  info = type("Info", (), {"num_classes": 10, "image_shape": (32, 32, 3)})()
  fine = cnn.stages.finetune
  p = abstract_init(build_model(fine.model, tasks.build_task(fine, info)[1]),
                    {"image": jnp.zeros((2, 32, 32, 3))})["params"]
  shapes = {k: v["kernel"].shape for k, v in p["backbone"].items()}
  assert shapes == {"conv_0": (3, 3, 3, 64), "conv_1": (3, 3, 64, 128),
                    "dense_0": (8 * 8 * 128, 1000)}
  assert p["heads"]["classifier"]["logits"]["kernel"].shape == (1000, 10)
  assert cnn.stages.pretrain.task.name == "contrastive"


def test_bad_resnet_settings_are_config_errors():
  with pytest.raises(ConfigError, match="config.model.depth: ResNet depth 20"):
    build_backbone(ml_collections.ConfigDict({"name": "resnet", "depth": 20}))
  with pytest.raises(ConfigError, match="config.model.batch_norm: 'freeze'"):
    build_backbone(ml_collections.ConfigDict({"name": "resnet", "batch_norm": "freeze"}))


# --- ResNet runs and BatchNorm through the real train step ----------------------------

DIGITS = type("Info", (), {"num_classes": 10, "image_shape": (8, 8, 1), "label_names": None})()


def test_simclr_resnet_train_step_builds():
  """The simclr variant's real train step, traced (not compiled): shapes and metrics."""
  config = load_config("resnet", "simclr,tiny,dataset=digits")
  task, head = tasks.build_task(config, DIGITS)
  model = build_model(config.model, head)
  batch = {"image": jnp.zeros((16, 8, 8, 1))}
  params, model_state = jax.eval_shape(lambda: steps.init_variables(
      model, batch, jax.random.PRNGKey(0)))
  tx, _ = optim.make_optimizer(params, config.optim, 3)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
           "opt_state": jax.eval_shape(tx.init, params), "rng": jax.random.PRNGKey(0)}
  new_state, metrics = jax.eval_shape(steps.make_train_step(model, task, tx), state, batch)
  assert {"loss", "grad_norm", "view_retrieval"} <= set(metrics)
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
  assert dict(task.augment) == {"crop_scale": 0.08, "flip": True, "color": 0.5,
                                "color_prob": 0.8, "grayscale": 0.2}


# --- augmentations --------------------------------------------------------------------


def test_augmentations_are_seeded_shaped_and_in_range():
  images = jax.random.uniform(jax.random.PRNGKey(0), (8, 16, 16, 3))
  simclr = dict(crop_scale=0.08, flip=True, color=0.5, grayscale=0.2)

  @jax.jit
  def run(images):
    key = jax.random.PRNGKey(3)
    return {
        "a": augment.augment_images(jax.random.PRNGKey(1), images, **simclr),
        "c": augment.augment_images(jax.random.PRNGKey(2), images, **simclr),
        "whole_crop": augment.random_resized_crop(key, images, 1.0, ratio=(1.0, 1.0)),
        "zoom": augment.random_resized_crop(key, images, 0.25, ratio=(1.0, 1.0)),
        "flip": augment.random_flip(key, images),
        "gray": augment.random_grayscale(key, images, 1.0),
        "hue_turn": augment._rotate_hue(images, jnp.ones(8)),
        "color_1ch": augment.color_distort(key, images[..., :1], 0.5),
    }

  out = run(images)
  a = out["a"]
  np.testing.assert_array_equal(a, run(images)["a"])
  assert a.shape == images.shape and not np.allclose(a, out["c"])
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  # A crop of the whole image at aspect 1 is the identity; a quarter-area one zooms in.
  np.testing.assert_allclose(out["whole_crop"], images, atol=1e-6)
  assert out["zoom"].shape == images.shape and not np.allclose(out["zoom"], images)
  flipped = np.asarray(out["flip"])
  kinds = [np.array_equal(flipped[i], images[i]) - np.array_equal(flipped[i], images[i, :, ::-1])
           for i in range(8)]
  assert set(kinds) == {1, -1}  # some mirrored, some kept, each exactly
  gray = np.asarray(out["gray"])
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
  np.testing.assert_allclose(gray[..., 0], images @ jnp.array([0.2989, 0.587, 0.114]),
                             rtol=1e-5)
  np.testing.assert_allclose(out["hue_turn"], images, atol=1e-5)  # a whole turn of hue
  assert out["color_1ch"].shape == (8, 16, 16, 1)


def test_original_augment_options_are_unchanged():
  images = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))

  @jax.jit
  def run(key, images):
    k_shift, k_jit, k_drop, k_noise = jax.random.split(key, 4)
    want = augment.random_shift(k_shift, images, 1)
    want = augment.color_jitter(k_jit, want, 0.2)
    want = augment.pixel_dropout(k_drop, want, 0.25)
    want = augment.gaussian_noise(k_noise, want, 0.1)
    got = augment.augment_images(key, images, max_shift=1, jitter=0.2, dropout=0.25, noise=0.1)
    return got, want

  got, want = run(jax.random.PRNGKey(5), images)
  np.testing.assert_array_equal(got, want)


def test_unknown_augment_option_is_one_line():
  with pytest.raises(ConfigError, match=r"config.task.augment: unknown option\(s\) \['blur'\]"):
    augment.augment_images(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)), blur=1.0)


# --- configs, end to end --------------------------------------------------------------




@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 5, 7, 3), (1, 2, 2, 1)])
def test_cnn_max_pool_equals_flax_and_has_the_same_gradient(shape):
  import flax.linen as nn

  from ptft_jax.models.cnn import max_pool_2x2

  x = jax.random.normal(jax.random.PRNGKey(0), shape)  # no ties: one gradient path per window
  np.testing.assert_array_equal(max_pool_2x2(x), nn.max_pool(x, (2, 2), strides=(2, 2)))
  ours = jax.grad(lambda x: jnp.sum(jnp.sin(max_pool_2x2(x))))(x)
  flax_grad = jax.grad(lambda x: jnp.sum(jnp.sin(nn.max_pool(x, (2, 2), strides=(2, 2)))))(x)
  np.testing.assert_allclose(ours, flax_grad, rtol=1e-6, atol=1e-7)
