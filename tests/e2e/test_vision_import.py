"""Vision imports beyond the quick tier: every fixture's parity (torchvision ResNet-18, timm
ViT with GAP + fc_norm + no_embed_class, Hugging Face ViT), ViTs loaded at another
resolution against timm's own resampling, sharded loads on fsdp=8 (8 simulated devices,
tests/conftest.py) equal to the host load, the workdir + CLI, transfer into a fine-tuning
Model, a ViT imported with scanned layers. Published sizes: tools/check_vision_full.py.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptft_jax import models
from ptft_jax.convert import vision
from ptft_jax.convert import workdir as convert_workdir
from ptft_jax.models import image_features
from ptft_jax.models.heads import ClassifierHead
from ptft_jax.parallel import sharding
from ptft_jax.train import checkpoint, placement
from tests.helpers import FIXTURES, flat
from tests.unit.test_vision_import import logits_of, reference

FIXTURE = os.path.join(FIXTURES, "vision")
ALL = ("torchvision_resnet50", "torchvision_resnet18", "timm_resnet50", "timm_vit",
       "timm_vit_gap", "hf_vit")


def _dir(name: str) -> str:
  return os.path.join(FIXTURE, name)


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh({"fsdp": 8})


@pytest.mark.parametrize("name", ("torchvision_resnet18", "timm_vit_gap", "hf_vit"))
def test_other_fixtures_match_torch(name):
  got, ref = vision.read_vision(_dir(name)), reference(name)
  features = np.asarray(image_features(got.model_config, got.variables, ref["images"]))
  assert np.max(np.abs(features - ref["features"])) <= 1e-4
  assert np.max(np.abs(logits_of(got.variables, features) - ref["logits"])) <= 1e-4
  c = got.model_config
  if name == "timm_vit_gap":
    assert (c.pool, c.pooled_norm, c.class_token) == ("gap", True, True)
  if name == "hf_vit":
    assert (got.library, c.layer_norm_eps, c.pool) == ("transformers", 1e-12, "cls")
    assert got.preprocessing == {"mean": [0.5] * 3, "std": [0.5] * 3, "resize": 32,
                                 "crop": 32, "interpolation": "bilinear"}
  if name == "torchvision_resnet18":
    assert (c.depth, tuple(c.stage_sizes)) == (18, (1, 1, 1, 1))


@pytest.mark.parametrize("name", ("timm_vit", "timm_vit_gap"))
def test_vit_at_another_resolution_matches_timms_resampling(name):
  ref = reference(name)
  config, variables = vision.load_vision(_dir(name), image_size=48)
  pos = variables["params"]["backbone"]["embeddings"]["pos_embedding"]
  assert config.image_size == 48 and pos.shape == (36, 32)
  np.testing.assert_allclose(pos, ref["pos_embed_48"], atol=1e-6)
  features = np.asarray(image_features(config, variables, ref["images_48"]))
  assert np.max(np.abs(features - ref["features_48"])) <= 1e-4


@pytest.mark.parametrize("name", ALL)
def test_sharded_load_gives_identical_features(mesh, name):
  host = vision.read_vision(_dir(name))
  config, variables = vision.load_vision(
      _dir(name), placement=placement.placer(placement.layout(mesh)))
  got, want = flat(variables), flat(host.variables)
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)
  # Each leaf lies as the rules place its Model path (dimensions 8 does not divide stay whole).
  rules = placement.layout(mesh)
  split = 0
  for path, leaf in flat_leaves(variables).items():
    model_path = path.split("/", 1)[1]  # params/backbone/... -> backbone/...
    assert leaf.sharding.spec == rules.spec(model_path, leaf.shape), path
    split += not leaf.sharding.is_fully_replicated
  assert split > 0
  ref = reference(name)
  features = np.asarray(image_features(config, variables, ref["images"]))
  host_features = np.asarray(image_features(host.model_config, host.variables, ref["images"]))
  np.testing.assert_allclose(features, host_features, atol=1e-5)  # sharded reduction order
  assert np.max(np.abs(features - ref["features"])) <= 1e-4


def flat_leaves(tree) -> dict:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(str(k.key) for k in path): leaf for path, leaf in leaves}


def _cli(argv):
  from ptft_jax.convert.__main__ import main

  return main(argv)


def test_workdir_import_cli_and_transfer(mesh, tmp_path, capsys):
  out = str(tmp_path / "r50")
  _cli(["vision", "--src", _dir("timm_resnet50"), "--workdir", out])
  line = capsys.readouterr().out
  assert "(timm ResNet depth 50, width 4, blocks (2, 1, 1, 1)) + heads ['classifier']" in line
  with open(os.path.join(out, vision.PREPROCESSING_FILE)) as f:
    assert json.load(f) == vision.preprocessing(_dir("timm_resnet50"))
  model_config = convert_workdir.read_model_config(out)
  assert (model_config.name, model_config.padding, model_config.stem_width) == (
      "resnet", "symmetric", 64)
  saved, _ = checkpoint.load_params(out, sharding=placement.layout(mesh))
  ref = reference("timm_resnet50")
  # A fine-tuning Model (new 3-class head) gets backbone + BatchNorm statistics by transfer.
  model = models.build_model(model_config, {"classifier": ClassifierHead(3)})
  fresh = jax.eval_shape(lambda: model.init(jax.random.key(0), {"image": ref["images"]}))
  fresh = jax.tree_util.tree_map(lambda x: jnp.zeros(x.shape, x.dtype), fresh)  # no slow init
  target = {"params": fresh["params"], "model_state": {"batch_stats": fresh["batch_stats"]}}
  new, report = checkpoint.transfer(target, saved)
  assert report["resized"] == [] and not any("backbone" in p for p in report["initialized"])
  assert any(p.startswith("model_state/batch_stats/backbone/stem_bn") for p in report["loaded"])
  variables = {"params": new["params"], "batch_stats": new["model_state"]["batch_stats"]}
  features = np.asarray(image_features(model_config, variables, ref["images"]))
  assert np.max(np.abs(features - ref["features"])) <= 1e-4
  # A ViT imported at 48 px (--image-size) writes that resolution.
  vit = str(tmp_path / "vit")
  _cli(["vision", "--src", _dir("timm_vit"), "--workdir", vit, "--arch",
        "vit_tiny_patch16_224", "--image-size", "48"])
  assert "image 48, pool cls" in capsys.readouterr().out
  assert convert_workdir.read_model_config(vit).image_size == 48
  # The workdir writer's own entry point, on the fsdp mesh: a HF ViT and its processor config.
  hf = convert_workdir.import_vision(_dir("hf_vit"), str(tmp_path / "hf"), mesh=mesh)
  assert (hf.layout, hf.heads) == ("hf_vit", ("classifier",))
  with open(tmp_path / "hf" / vision.PREPROCESSING_FILE) as f:
    assert json.load(f)["interpolation"] == "bilinear"


def test_vit_scan_layers_matches_torch():
  """An imported ViT loads straight into the scanned layout (`layers/...`, one nn.scan)."""
  config, imported = vision.load_vision(_dir("timm_vit"), scan_layers=True)
  ref = reference("timm_vit")
  assert imported["params"]["backbone"]["layers"]["mlp"]["output"]["kernel"].shape == (2, 64, 32)
  features = np.asarray(image_features(config, imported, ref["images"]))
  assert np.max(np.abs(features - ref["features"])) <= 1e-4
