"""torchvision / timm / Hugging Face image model import against torch's outputs.

The fixtures are tiny random models with torch's pooled features and logits
(tools/make_vision_fixtures.py: torch 2.13, torchvision 0.28, timm 1.0.31, transformers
5.24); torch is not needed here. The other fixtures (torchvision ResNet-18, timm ViT with
GAP, HF ViT), resampled position embeddings, sharded loads and the workdir / CLI are in
tests/e2e/test_vision_import.py.
"""

import os
import shutil

import jax
import numpy as np
import pytest
import safetensors.numpy

from ptft_jax.convert import vision
from ptft_jax.errors import CheckpointError, ConfigError
from ptft_jax.models import build_backbone, image_features
from tests.helpers import FIXTURES

FIXTURE = os.path.join(FIXTURES, "vision")
PARITY = ("torchvision_resnet50", "timm_resnet50", "timm_vit")


def _dir(name: str) -> str:
  return os.path.join(FIXTURE, name)


def reference(name: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(_dir(name), "reference.npz"), allow_pickle=False) as f:
    return {k: v.astype(np.float32) for k, v in f.items()}


def logits_of(variables, features):
  head = variables["params"]["heads"]["classifier"]["logits"]
  return np.asarray(features) @ np.asarray(head["kernel"]) + np.asarray(head["bias"])


@pytest.fixture(scope="module")
def loaded():
  return {name: vision.read_vision(_dir(name)) for name in PARITY}


@pytest.mark.parametrize("name", PARITY)
def test_features_and_logits_match_torch(loaded, name):
  got, ref = loaded[name], reference(name)
  features = np.asarray(image_features(got.model_config, got.variables, ref["images"]))
  assert features.shape == ref["features"].shape
  assert np.max(np.abs(features - ref["features"])) <= 1e-4
  assert np.max(np.abs(logits_of(got.variables, features) - ref["logits"])) <= 1e-4


@pytest.mark.parametrize("name", PARITY)
def test_variables_are_the_models_tree(loaded, name):
  got = loaded[name]
  size = got.model_config.get("image_size", 64)
  want = jax.eval_shape(lambda: build_backbone(got.model_config).init(
      jax.random.key(0), {"image": np.zeros((1, size, size, 3), np.float32)}, train=False))
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: tuple(x.shape), tree)
  assert shapes(got.variables["params"]["backbone"]) == shapes(want["params"])
  if got.layout == "resnet":
    assert shapes(got.variables["batch_stats"]["backbone"]) == shapes(want["batch_stats"])
  else:
    assert got.variables["batch_stats"] == {} and "batch_stats" not in want
  assert got.heads == ("classifier",)
  assert got.variables["params"]["heads"]["classifier"]["logits"]["kernel"].shape[1] == 10


def test_configs_and_preprocessing(loaded):
  tv, tm, vit = (loaded[n] for n in PARITY)
  assert (tv.library, tm.library, vit.library) == ("torchvision", "timm", "timm")
  c = tv.model_config
  assert (c.name, c.depth, c.width, c.stem_width, tuple(c.stage_sizes), c.padding,
          c.small_input) == ("resnet", 50, 4, 0, (2, 1, 1, 1), "symmetric", False)
  assert (tm.model_config.width, tm.model_config.stem_width) == (4, 64)  # timm's stem: 64
  v = vit.model_config
  assert (v.name, v.image_size, v.patch_size, v.hidden_size, v.num_layers, v.num_heads,
          v.intermediate_size, v.pool, v.class_token, v.pooled_norm, v.layer_norm_eps) == (
      "vit", 32, 8, 32, 2, 2, 64, "cls", True, False, 1e-6)
  assert tv.preprocessing == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                              "resize": 256, "crop": 224, "interpolation": "bilinear"}
  # timm resnet50.a1_in1k's pretrained_cfg: input 224, crop_pct 0.95, bicubic.
  assert (tm.preprocessing["resize"], tm.preprocessing["crop"],
          tm.preprocessing["interpolation"]) == (235, 224, "bicubic")
  assert vit.preprocessing == {"mean": [0.5] * 3, "std": [0.5] * 3, "resize": 35, "crop": 32,
                               "interpolation": "bicubic"}
  assert vision.preprocessing(_dir("timm_vit")) == vit.preprocessing


def test_class_token_carries_its_position_row(loaded):
  """timm adds pos_embed[0] to the class token: the import folds it into cls_token."""
  raw = safetensors.numpy.load_file(os.path.join(_dir("timm_vit"), "model.safetensors"))
  emb = loaded["timm_vit"].variables["params"]["backbone"]["embeddings"]
  np.testing.assert_array_equal(emb["cls_token"], raw["cls_token"][0, 0] + raw["pos_embed"][0, 0])
  np.testing.assert_array_equal(emb["pos_embedding"], raw["pos_embed"][0, 1:])
  np.testing.assert_array_equal(  # packed q|k|v rows -> key kernel [in, out]
      loaded["timm_vit"].variables["params"]["backbone"]["layer_1"]["attention"]["key"]["kernel"],
      raw["blocks.1.attn.qkv.weight"][32:64].T)


def _copy(name, tmp_path) -> str:
  out = str(tmp_path / name)
  shutil.copytree(_dir(name), out)
  return out


def _edit(model_dir, edit):
  path = os.path.join(model_dir, "model.safetensors")
  tensors = safetensors.numpy.load_file(path)
  edit(tensors)
  safetensors.numpy.save_file(tensors, path)


def _one_line(match, fn, *args, error=CheckpointError, **kwargs):
  with pytest.raises(error, match=match) as e:
    fn(*args, **kwargs)
  assert "\n" not in str(e.value)
  return str(e.value)


def test_strict_load_errors_are_one_line(tmp_path):
  resnet = _copy("torchvision_resnet50", tmp_path)
  _edit(resnet, lambda t: t.update({"layer1.0.se.fc.weight": np.zeros((2, 2), np.float32)}))
  _one_line(r"unexpected tensors for a resnet model: layer1\.0\.se\.fc\.weight",
            vision.load_vision, resnet)
  _edit(resnet, lambda t: (t.pop("layer1.0.se.fc.weight"), t.pop("layer2.0.bn1.running_var")))
  _one_line(r"missing tensors for a resnet model: layer2\.0\.bn1\.running_var",
            vision.load_vision, resnet)
  _edit(resnet, lambda t: t.update({"layer2.0.bn1.running_var": np.ones((9,), np.float32)}))
  _one_line(r"tensor 'layer2\.0\.bn1\.running_var' has shape \(9,\), expected \(8,\)",
            vision.load_vision, resnet)
  _edit(resnet, lambda t: t.update({"layer2.0.bn1.running_var": np.ones((8,), np.int32)}))
  _one_line(r"'layer2\.0\.bn1\.running_var' has dtype I32, expected a float dtype",
            vision.load_vision, resnet)
  _one_line(r"--arch resnet18 has basic blocks but the file has bottleneck blocks",
            vision.load_vision, _dir("torchvision_resnet50"), "resnet18")
  _one_line(r"--arch vit \(vit\) but the tensor names are a resnet layout",
            vision.load_vision, _dir("torchvision_resnet50"), "vit")
  _one_line(r"--arch 'convnext': use one of", vision.load_vision, _dir("timm_vit"), "convnext",
            error=ConfigError)
  # Without config.json a hidden width of 32 gives no number of heads.
  vit = _copy("timm_vit", tmp_path)
  os.remove(os.path.join(vit, "config.json"))
  _one_line(r"cannot tell the number of attention heads of a hidden width 32",
            vision.load_vision, vit)
  assert vision.preprocessing(vit)["crop"] == 224  # ImageNet defaults without config.json
  pickle = tmp_path / "resnet50.pth"
  pickle.write_bytes(b"\x80\x02")
  _one_line(r"resnet50\.pth: a torch pickle is never read", vision.load_vision, str(pickle))
  other = tmp_path / "other"
  other.mkdir()
  safetensors.numpy.save_file({"w": np.zeros(2, np.float32)}, str(other / "model.safetensors"))
  _one_line(r"not a recognized image model", vision.load_vision, str(other))


def test_a_single_safetensors_file_and_the_resnet_name(tmp_path):
  path = tmp_path / "resnet.safetensors"
  shutil.copyfile(os.path.join(_dir("torchvision_resnet50"), "model.safetensors"), path)
  config, variables = vision.load_vision(str(path), "resnet")
  assert config.depth == 50 and "classifier" in variables["params"]["heads"]
  assert vision.library_of(str(path)) == "torchvision"
  _one_line(r"--arch resnet50 has \(3, 4, 6, 3\) blocks per stage but the file has "
            r"\(2, 1, 1, 1\)", vision.load_vision, str(path), "resnet50")
