"""Writes tests/fixtures/vision/<name>/: tiny random torchvision / timm / Hugging Face image
models as safetensors, with the pooled features and logits torch computes from them.

Run with the torch venv (made with torch 2.13.0+cpu, torchvision 0.28.0, timm 1.0.31,
transformers 5.24.0):

  bash launch/setup_torch_peer.sh            # .venv-torch/ in the repository, git-ignored
  .venv-torch/bin/pip install torchvision==0.28.0 timm
  .venv-torch/bin/python tools/make_vision_fixtures.py
  .venv-torch/bin/python tools/make_vision_fixtures.py --full /tmp/vision_full   # real sizes

Fixtures (each model.safetensors under ~150 KB; the library's own classes and forward):
  torchvision_resnet50   torchvision Bottleneck blocks (stride on the 3x3 conv, 1x1
                         downsample projections) in torchvision's ResNet, stages of 2, 1, 1, 1
                         blocks at width 4 (planes 4/8/16/32, 128-d features), 10 classes.
                         torchvision's constructor fixes the widths at 64..512, so
                         `TinyTorchvisionResNet` is its __init__ with the widths as an argument;
                         blocks, _make_layer and forward are torchvision's.
  torchvision_resnet18   the same with BasicBlock, one block per stage.
  timm_resnet50          timm.create_model("resnet50", layers=(2, 1, 1, 1), channels=(4, 8, 16,
                         32), stem_width=4, num_classes=10), saved by timm's save_for_hf
                         (config.json with architecture, model_args and pretrained_cfg).
  timm_vit               timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8,
                         embed_dim=32, depth=2, num_heads=2, mlp_ratio=2, num_classes=10):
                         class token, token pooling, pos_embed with a class-token row;
                         save_for_hf with pretrained_cfg mean/std 0.5, crop_pct 0.9, bicubic.
  timm_vit_gap           the same with global_pool="avg" (fc_norm after the pooling) and
                         no_embed_class=True (pos_embed over the patches only).
  hf_vit                 transformers ViTForImageClassification (hidden 32, 2 layers, 2 heads,
                         intermediate 64, image 32, patch 8, 10 labels), save_pretrained +
                         ViTImageProcessor's preprocessor_config.json.

Every BatchNorm gets random weight, bias, running_mean and running_var (eval-mode BatchNorm
matters); ViT parameters get N(0, 0.05) noise on top of the library's initialization (so
biases and LayerNorms are non-trivial). Seeded.

Each <name>/ holds (arrays load with np.load(allow_pickle=False); images are NHWC as ptft_jax
takes them, torch got them permuted to NCHW):
  model.safetensors      the state dict (torchvision: safetensors.torch.save_file; BatchNorm's
                         int64 num_batches_tracked buffers included, as torch saves them)
  config.json            timm and Hugging Face fixtures
  reference.npz          images [2, 64, 64, 3] (ResNets) / [2, 32, 32, 3] (ViTs) float16
                         (N(0, 1) rounded to float16; torch got them as float32),
                         features [2, F] (pooled, pre-logits: forward_head(pre_logits=True) /
                         avgpool+flatten / the class token after the final LayerNorm),
                         logits [2, 10], in eval mode.
                         timm ViTs also: pos_embed_48 [36, 32]: the patch grid of pos_embed
                         resampled to 6x6 by timm's resample_abs_pos_embed(interpolation=
                         "bilinear", antialias=False); images_48 [2, 48, 48, 3] (float16) and
                         features_48 [2, 32]: the model at img_size=48 with that pos_embed.

--full DIR writes the same layouts at the published sizes (torchvision resnet50, timm
resnet50, timm vit_base_patch16_224; random init, 224x224 inputs) into DIR, for a one-off
parity check: `.venv/bin/python tools/check_vision_full.py DIR`.
"""

import argparse
import json
import os
import shutil

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "vision")
NOISE = 0.05
CLASSES = 10


def _import_torchvision():
  """torchvision; its C++ ops are not needed (models only). A torchvision wheel built for
  CUDA torch fails to load its _C library next to a CPU torch and then fails to register
  fake kernels for `torchvision::nms` / `qnms`: declaring those two schemas first lets the
  pure-Python package import."""
  try:
    import torchvision
    return torchvision
  except RuntimeError as e:
    if "torchvision::nms" not in str(e):
      raise
  import sys
  for name in [m for m in sys.modules if m.startswith("torchvision")]:
    del sys.modules[name]
  schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
  torch.library.define("torchvision::nms", schema)
  torch.library.define("torchvision::qnms", schema)
  import torchvision
  return torchvision


def tiny_torchvision_resnet(block_name: str, layers, width: int, num_classes: int):
  """torchvision's ResNet at stage widths (w, 2w, 4w, 8w) instead of (64, 128, 256, 512)."""
  torchvision = _import_torchvision()
  resnet = torchvision.models.resnet
  block = getattr(resnet, block_name)

  class TinyTorchvisionResNet(resnet.ResNet):
    def __init__(self):  # torchvision's ResNet.__init__ with `width` for 64 (and no init loop)
      torch.nn.Module.__init__(self)
      self._norm_layer = torch.nn.BatchNorm2d
      self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
      self.conv1 = torch.nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
      self.bn1 = torch.nn.BatchNorm2d(width)
      self.relu = torch.nn.ReLU(inplace=True)
      self.maxpool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
      self.layer1 = self._make_layer(block, width, layers[0])
      self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
      self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
      self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
      self.avgpool = torch.nn.AdaptiveAvgPool2d((1, 1))
      self.fc = torch.nn.Linear(8 * width * block.expansion, num_classes)

  return TinyTorchvisionResNet()


def randomize_batchnorm(model, gen):
  for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      n = m.num_features
      m.weight.data = torch.rand(n, generator=gen) + 0.5
      m.bias.data = torch.randn(n, generator=gen) * 0.1
      m.running_mean.data = torch.randn(n, generator=gen) * 0.1
      m.running_var.data = torch.rand(n, generator=gen) + 0.5
      m.num_batches_tracked.fill_(7)


def add_noise(model, gen, scale=NOISE):
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * scale)


def _images(n, size, seed):
  """float32 values that float16 holds exactly (reference.npz stores them as float16)."""
  return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float16).astype(np.float32)


def _nchw(images):
  return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def _save_npz(path, **arrays):
  """Images as float16 (exact: see _images), everything else as computed (float32)."""
  np.savez(path, **{k: np.ascontiguousarray(v.astype(np.float16) if k.startswith("images")
                                            else v) for k, v in arrays.items()})


def _fresh(out):
  shutil.rmtree(out, ignore_errors=True)
  os.makedirs(out)


def torchvision_fixture(out, block_name, layers, width, size, seed):
  import safetensors.torch

  gen = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  if width is None:  # --full: the published constructor
    torchvision = _import_torchvision()
    model = getattr(torchvision.models, "resnet50" if block_name == "Bottleneck" else
                    "resnet18")(num_classes=CLASSES)
  else:
    model = tiny_torchvision_resnet(block_name, layers, width, CLASSES)
  randomize_batchnorm(model, gen)
  model.eval()
  _fresh(out)
  safetensors.torch.save_file(model.state_dict(), os.path.join(out, "model.safetensors"))
  images = _images(2, size, seed)
  with torch.no_grad():
    x = _nchw(images)
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    features = torch.flatten(model.avgpool(x), 1)
    logits = model(_nchw(images))
  np.testing.assert_allclose(model.fc(features).numpy(), logits.numpy(), atol=1e-5)
  _save_npz(os.path.join(out, "reference.npz"), images=images, features=features.numpy(),
            logits=logits.numpy())
  return model


def _timm_save(model, out, data_config=None):
  from timm.models._hub import save_for_hf

  save_for_hf(model, out, safe_serialization=True, data_config=data_config)


def timm_resnet_fixture(out, size, seed, full=False):
  import timm

  gen = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  kwargs = {} if full else dict(layers=(2, 1, 1, 1), channels=(4, 8, 16, 32), stem_width=4)
  model = timm.create_model("resnet50", pretrained=False, num_classes=CLASSES, **kwargs)
  randomize_batchnorm(model, gen)
  model.eval()
  _fresh(out)
  _timm_save(model, out)
  images = _images(2, size, seed)
  with torch.no_grad():
    x = model.forward_features(_nchw(images))
    features = model.forward_head(x, pre_logits=True)
    logits = model.forward_head(x)
  _save_npz(os.path.join(out, "reference.npz"), images=images, features=features.numpy(),
            logits=logits.numpy())


def timm_vit_fixture(out, seed, *, gap=False, full=False):
  import timm
  from timm.layers import resample_abs_pos_embed

  gen = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  if full:
    name, kwargs, size = "vit_base_patch16_224", {}, 224
  else:
    name, size = "vit_tiny_patch16_224", 32
    kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
  if gap:
    kwargs.update(global_pool="avg", no_embed_class=True)
  model = timm.create_model(name, pretrained=False, num_classes=CLASSES, **kwargs)
  add_noise(model, gen)
  model.eval()
  _fresh(out)
  data = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.9, interpolation="bicubic")
  _timm_save(model, out, data_config=data)
  images = _images(2, size, seed)
  with torch.no_grad():
    x = model.forward_features(_nchw(images))
    features = model.forward_head(x, pre_logits=True)
    logits = model.forward_head(x)
  arrays = dict(images=images, features=features.numpy(), logits=logits.numpy())
  if not full:
    prefix = 0 if gap else 1
    pos = resample_abs_pos_embed(model.pos_embed.detach(), (6, 6), (4, 4),
                                 num_prefix_tokens=prefix, interpolation="bilinear",
                                 antialias=False)
    big = timm.create_model(name, pretrained=False, num_classes=CLASSES,
                            **{**kwargs, "img_size": 48})
    state = dict(model.state_dict(), pos_embed=pos)
    big.load_state_dict(state)
    big.eval()
    images_48 = _images(2, 48, seed + 1)
    with torch.no_grad():
      features_48 = big.forward_head(big.forward_features(_nchw(images_48)), pre_logits=True)
    arrays.update(pos_embed_48=pos[0, prefix:].numpy(), images_48=images_48,
                  features_48=features_48.numpy())
  _save_npz(os.path.join(out, "reference.npz"), **arrays)


def hf_vit_fixture(out, seed):
  import transformers

  gen = torch.Generator().manual_seed(seed)
  torch.manual_seed(seed)
  config = transformers.ViTConfig(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
      image_size=32, patch_size=8, num_labels=CLASSES)
  model = transformers.ViTForImageClassification(config)
  add_noise(model, gen)
  model.eval()
  _fresh(out)
  model.save_pretrained(out, safe_serialization=True)
  transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
  images = _images(2, 32, seed)
  with torch.no_grad():
    result = model(pixel_values=_nchw(images), output_hidden_states=False)
    features = model.vit(pixel_values=_nchw(images)).last_hidden_state[:, 0]
  np.testing.assert_allclose(model.classifier(features).numpy(), result.logits.numpy(),
                             atol=1e-5)
  _save_npz(os.path.join(out, "reference.npz"), images=images, features=features.numpy(),
            logits=result.logits.numpy())


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--full", default="", help="write full-size models into this directory")
  args = parser.parse_args()
  torch.set_grad_enabled(False)
  if args.full:
    torchvision_fixture(os.path.join(args.full, "torchvision_resnet50"), "Bottleneck", None,
                        None, 224, 0)
    timm_resnet_fixture(os.path.join(args.full, "timm_resnet50"), 224, 1, full=True)
    timm_vit_fixture(os.path.join(args.full, "timm_vit_base"), 2, full=True)
    print(f"wrote {args.full}")
    return
  torchvision_fixture(os.path.join(OUT, "torchvision_resnet50"), "Bottleneck", (2, 1, 1, 1), 4,
                      64, 0)
  torchvision_fixture(os.path.join(OUT, "torchvision_resnet18"), "BasicBlock", (1, 1, 1, 1), 4,
                      64, 1)
  timm_resnet_fixture(os.path.join(OUT, "timm_resnet50"), 64, 2)
  timm_vit_fixture(os.path.join(OUT, "timm_vit"), 3)
  timm_vit_fixture(os.path.join(OUT, "timm_vit_gap"), 4, gap=True)
  hf_vit_fixture(os.path.join(OUT, "hf_vit"), 5)
  for name in sorted(os.listdir(OUT)):
    files = {f: os.path.getsize(os.path.join(OUT, name, f))
             for f in sorted(os.listdir(os.path.join(OUT, name)))}
    print(name, json.dumps(files))


if __name__ == "__main__":
  main()
