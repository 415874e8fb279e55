"""torchvision / timm / Hugging Face image models -> ptft_jax `resnet` / `vit` (safetensors only).

The layout is recognized from the tensor names (`arch` may name it):

  resnet   torchvision and timm ResNets (`conv1.weight`, `bn1.*`, `layer{s}.{b}.conv{k}.weight`,
           `layer{s}.{b}.downsample.{0,1}.*`, `fc.*`; the two libraries use the same names):
           basic blocks (ResNet-18/34) or bottlenecks (`conv3`: ResNet-50/101/152, stride on
           the 3x3 conv), any number of blocks per stage (`stage_sizes`), stage widths
           w, 2w, 4w, 8w, any stem width. Imported with `padding="symmetric"` (torch pads 3
           around the 7x7/2 stem, 1 around 3x3 convs and the max-pool; Flax's SAME would pad
           strided layers asymmetrically). Torch conv weights [out, in, kh, kw] -> our kernels
           [kh, kw, in, out]; BatchNorm weight/bias -> params scale/bias, running_mean /
           running_var -> `batch_stats` mean/var (epsilon 1e-5 and momentum 0.1 as torch's
           defaults: see models/resnet.py); `num_batches_tracked` buffers are skipped.
  vit      timm VisionTransformer (`patch_embed.proj`, `cls_token`, `pos_embed`,
           `blocks.{i}.norm1|attn.qkv|attn.proj|norm2|mlp.fc1|mlp.fc2`, `norm` or `fc_norm`,
           `head`): the packed `attn.qkv` [3 * hidden, hidden] is split by row ranges into
           query / key / value; a class-token row of `pos_embed` is added into `cls_token`
           (see models/vit.py), `no_embed_class` tables load as they are; token or "avg"
           pooling (`fc_norm` -> `pooled_norm=True`). Heads come from config.json's
           `model_args.num_heads`, else a timm name (`--arch vit_base_patch16_224` or
           config.json's `architecture`), else the standard size of the hidden width
           (192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16).
  hf_vit   Hugging Face ViTModel / ViTForImageClassification (config.json model_type "vit";
           `vit.` prefix or none). Its tanh `pooler` (not part of the pre-logits) is skipped.

The classifier (`fc` / `head` / HF `classifier`, a Linear [classes, features]) loads as
`heads/classifier/logits/{kernel, bias}`, the layout of models.heads.ClassifierHead with no
hidden layers (the head name image classification uses); a fine-tuning run with another
class count re-initializes it as usual.

A path is a directory holding `model.safetensors` (or `model.safetensors.index.json` and its
files) with an optional `config.json` (timm's hub format: `architecture`, `model_args`,
`pretrained_cfg`; or a Hugging Face config), or one `.safetensors` file (its directory's
config.json is read if present). A torch pickle (`.pth`, `.bin`, `.pt`) is never read: save
its state dict with safetensors first.

Loading is strict, as the HF converters: unsafe names, unexpected or missing tensors, non-float
dtypes and shape mismatches each raise a one-line CheckpointError naming the file and the
tensor with both shapes. With a `placement` every leaf is a jax.Array made by
`jax.make_array_from_callback`, each device reading only its slice of the memory-mapped file
(conv kernels and Linear weights transposed per slice); position embeddings and the class
token (a few rows) are computed on the host first.

  model_config, variables = load_vision("resnet50/")
  features = ptft_jax.models.image_features(model_config, variables, images)   # [b, 2048]

The weights' preprocessing (`preprocessing(path)`, written to the workdir as
preprocessing.json by `import_vision`):
  torchvision (no config.json)  ImageNet mean/std, resize 256, crop 224, bilinear
  timm (config.json pretrained_cfg)  its mean/std, crop = input_size, resize =
                                floor(crop / crop_pct), its interpolation
  Hugging Face (preprocessor_config.json)  image_mean/std, size, crop_size, resample
  otherwise                     ImageNet defaults
"""

import argparse
import contextlib
import dataclasses
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np

from ptft_jax.convert import safetensors_io
from ptft_jax.convert.safetensors_io import CONFIG_FILE, WEIGHTS_FILE, Placement
from ptft_jax.errors import CheckpointError, ConfigError

LAYOUTS = ("resnet", "vit", "hf_vit")
PREPROCESSING_FILE = "preprocessing.json"
HF_PREPROCESSOR_FILE = "preprocessor_config.json"
IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], resize=256, crop=224,
                interpolation="bilinear")
INTERPOLATIONS = ("bilinear", "bicubic")
HEAD = "classifier"  # heads/<HEAD>/logits: the image classification task's head
# timm ViT size word -> (hidden, heads); the hidden width alone -> heads.
VIT_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12), "large": (1024, 16),
             "huge": (1280, 16)}
VIT_HEADS = {hidden: heads for hidden, heads in VIT_SIZES.values()}
_VIT_NAME = re.compile(r"vit_(tiny|small|base|large|huge)_patch(\d+)_(?:clip_)?(\d+)")
_RESNET_NAME = re.compile(r"resnet(18|34|50|101|152)")
_PICKLES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
_CONV = (2, 3, 1, 0)  # torch [out, in, kh, kw] -> ours [kh, kw, in, out]
_LINEAR = (1, 0)  # torch [out, in] -> ours [in, out]


@dataclasses.dataclass(frozen=True)
class Spec:
  """One leaf of ours read from one tensor of the file.

  `path` starts at the variables' root (`("params", "backbone", "stem_conv", "kernel")`);
  `shape` is the file tensor's (checked); our leaf is `file[rows].transpose(perm)` where
  `rows` is a range of the file's first axis (the packed q|k|v of timm's `attn.qkv`).
  """

  name: str
  path: tuple[str, ...]
  shape: tuple[int, ...]
  perm: tuple[int, ...] | None = None
  rows: tuple[int, int] | None = None

  @property
  def ours(self) -> tuple[int, ...]:
    shape = list(self.shape)
    if self.rows is not None:
      shape[0] = self.rows[1] - self.rows[0]
    return tuple(shape[i] for i in self.perm) if self.perm else tuple(shape)


@dataclasses.dataclass(frozen=True)
class Computed:
  """One leaf computed on the host from whole (small) tensors: `fn({name: array})`."""

  names: tuple[str, ...]
  path: tuple[str, ...]
  shape: tuple[int, ...]
  fn: Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclasses.dataclass
class Plan:
  """What a file holds and how it becomes ours: the model config, the leaves, what the file
  may hold besides (`skip`), and the tensor shapes the leaves expect (`expect`)."""

  layout: str
  model_config: ml_collections.ConfigDict
  leaves: list
  expect: dict[str, tuple[int, ...]]
  skip: Callable[[str], bool] = lambda name: False
  heads: tuple[str, ...] = ()


# --- files -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _weights_dir(path: str):
  """The directory `safetensors_io.Tensors` reads for `path` (a single .safetensors file is
  linked as `model.safetensors` in a temporary directory) and the directory of its side files."""
  path = os.fspath(path)
  if os.path.isdir(path):
    yield path, path
    return
  if path.endswith(_PICKLES) or os.path.basename(path) in ("pytorch_model.bin",):
    raise CheckpointError(
        f"{path}: a torch pickle is never read; save its state dict as safetensors "
        "(safetensors.torch.save_file(torch.load(path, map_location='cpu'), 'model.safetensors'))")
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: not found (expected a directory with {WEIGHTS_FILE} or a "
                          ".safetensors file)")
  if not path.endswith(".safetensors"):
    raise CheckpointError(f"{path}: not a .safetensors file")
  tmp = tempfile.mkdtemp(prefix="ptft_vision_")
  try:
    os.symlink(os.path.abspath(path), os.path.join(tmp, WEIGHTS_FILE))
    yield tmp, os.path.dirname(os.path.abspath(path))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _side_json(side_dir: str, name: str) -> dict | None:
  path = os.path.join(side_dir, name)
  if not os.path.isfile(path):
    return None
  data = safetensors_io.read_json(path, "a JSON object")
  if not isinstance(data, dict):
    raise CheckpointError(f"{path}: not a JSON object")
  return data


def _normalize(path: str, names: list[str]) -> dict[str, str]:
  """Strips a wrapper prefix (DDP's `module.`, a `model.` of a training checkpoint) and
  Hugging Face's `vit.` (the classifier keeps its name)."""
  return safetensors_io.strip_prefixes(path, names, ("module.", "model.", "vit."),
                                       keep=("classifier.weight", "classifier.bias"))


# --- layouts ---------------------------------------------------------------------------------


def detect_layout(names, hf_config: Mapping[str, Any] | None = None) -> str | None:
  """"resnet" | "vit" | "hf_vit" from the (normalized) tensor names, else None."""
  names = set(names)
  if hf_config and hf_config.get("model_type") == "vit" or any(
      n.startswith("embeddings.patch_embeddings.") for n in names):
    return "hf_vit"
  if "patch_embed.proj.weight" in names:
    return "vit"
  if any(n.startswith("layer1.") for n in names) and any(n.startswith("conv1.") for n in names):
    return "resnet"
  return None


def _arch_layout(arch: str | None) -> str | None:
  """The layout an `arch` names: a layout, or a torchvision / timm model name."""
  if arch is None:
    return None
  if arch in LAYOUTS:
    return arch
  if arch == "timm_vit":
    return "vit"
  if _RESNET_NAME.fullmatch(arch):
    return "resnet"
  if _VIT_NAME.fullmatch(arch.split(".")[0]):
    return "vit"
  raise ConfigError(f"--arch {arch!r}: use one of {', '.join(LAYOUTS)}, resnet18/34/50/101/152 "
                    "or a timm ViT name (vit_base_patch16_224)")


class _Tree:
  """Collects Specs / Computed leaves and the shapes they expect."""

  def __init__(self):
    self.leaves: list = []
    self.expect: dict[str, tuple[int, ...]] = {}

  def add(self, name: str, path: str, shape, perm=None, rows=None):
    self.leaves.append(Spec(name, tuple(path.split("/")), tuple(shape), perm, rows))
    self.expect[name] = tuple(shape)

  def compute(self, names: dict[str, tuple[int, ...]], path: str, shape, fn):
    self.leaves.append(Computed(tuple(names), tuple(path.split("/")), tuple(shape), fn))
    self.expect.update(names)

  def linear(self, module: str, path: str, n_out: int, n_in: int, bias: bool = True):
    self.add(f"{module}.weight", f"{path}/kernel", (n_out, n_in), _LINEAR)
    if bias:
      self.add(f"{module}.bias", f"{path}/bias", (n_out,))

  def norm(self, module: str, path: str, n: int):
    self.add(f"{module}.weight", f"{path}/scale", (n,))
    self.add(f"{module}.bias", f"{path}/bias", (n,))


def _shape(tensors, name: str) -> tuple[int, ...] | None:
  return tensors.shape(name) if name in tensors.names else None


def _resnet_plan(tensors, arch: str | None, where: str) -> Plan:
  names = set(tensors.names)
  if "conv1.0.weight" in names or "conv1.weight" not in names:
    raise CheckpointError(f"{where}: no single stem conv 'conv1.weight' (a deep stem, as timm's "
                          "resnet*c/d/s, is not supported); only torchvision / timm plain ResNets")
  stem = _shape(tensors, "conv1.weight")
  if len(stem) != 4 or stem[2:] != (7, 7):
    raise CheckpointError(f"{where}: tensor 'conv1.weight' has shape {stem}, expected "
                          "(stem_width, channels, 7, 7) (the ImageNet 7x7/2 stem)")
  blocks: dict[int, int] = {}
  for n in names:
    if m := re.match(r"layer(\d+)\.(\d+)\.", n):
      s, b = int(m.group(1)), int(m.group(2))
      blocks[s] = max(blocks.get(s, 0), b + 1)
  stages = sorted(blocks)
  if stages != list(range(1, len(stages) + 1)):
    raise CheckpointError(f"{where}: ResNet stages {stages} are not layer1..layer{len(stages)}")
  sizes = tuple(blocks[s] for s in stages)
  bottleneck = "layer1.0.conv3.weight" in names
  kind = "bottleneck" if bottleneck else "basic"
  from ptft_jax.models.resnet import STAGES

  depths = [d for d, (k, b) in STAGES.items() if k == kind and b == sizes]
  if arch and (m := _RESNET_NAME.fullmatch(arch)):
    if STAGES[int(m.group(1))][0] != kind:
      raise CheckpointError(f"{where}: --arch {arch} has {STAGES[int(m.group(1))][0]} blocks but "
                            f"the file has {kind} blocks")
    if int(m.group(1)) not in depths:
      raise CheckpointError(f"{where}: --arch {arch} has {STAGES[int(m.group(1))][1]} blocks per "
                            f"stage but the file has {sizes}")
  width = _shape(tensors, "layer1.0.conv1.weight")[0]
  stem_width, channels = stem[0], stem[1]
  config = dict(name="resnet", depth=depths[0] if depths else (50 if bottleneck else 18),
                width=width, stem_width=0 if stem_width == width else stem_width,
                small_input=False, stage_sizes=() if depths else sizes, batch_norm="auto",
                padding="symmetric", dtype="float32")
  t = _Tree()

  def conv(name, path, n_out, n_in, k):
    t.add(f"{name}.weight", f"params/backbone/{path}/kernel", (n_out, n_in, k, k), _CONV)

  def bn(name, path, n):
    t.add(f"{name}.weight", f"params/backbone/{path}/scale", (n,))
    t.add(f"{name}.bias", f"params/backbone/{path}/bias", (n,))
    t.add(f"{name}.running_mean", f"batch_stats/backbone/{path}/mean", (n,))
    t.add(f"{name}.running_var", f"batch_stats/backbone/{path}/var", (n,))

  conv("conv1", "stem_conv", stem_width, channels, 7)
  bn("bn1", "stem_bn", stem_width)
  inplanes = stem_width
  for s, count in enumerate(sizes, start=1):
    planes = width * 2 ** (s - 1)
    out = 4 * planes if bottleneck else planes
    for b in range(count):
      hf, ours = f"layer{s}.{b}", f"stage{s}_block{b}"
      stride = 2 if s > 1 and b == 0 else 1
      specs = ([(planes, inplanes, 1), (planes, planes, 3), (out, planes, 1)] if bottleneck
               else [(planes, inplanes, 3), (planes, planes, 3)])
      for k, (n_out, n_in, size) in enumerate(specs, start=1):
        conv(f"{hf}.conv{k}", f"{ours}/conv{k}", n_out, n_in, size)
        bn(f"{hf}.bn{k}", f"{ours}/bn{k}", n_out)
      if inplanes != out or stride != 1:
        conv(f"{hf}.downsample.0", f"{ours}/proj_conv", out, inplanes, 1)
        bn(f"{hf}.downsample.1", f"{ours}/proj_bn", out)
      inplanes = out
  heads = ()
  if "fc.weight" in names:
    classes = _shape(tensors, "fc.weight")[0]
    t.linear("fc", f"params/heads/{HEAD}/logits", classes, inplanes)
    heads = (HEAD,)
  return Plan("resnet", ml_collections.ConfigDict(config), t.leaves, t.expect,
              skip=lambda n: n.endswith(".num_batches_tracked"), heads=heads)


def _square(n: int) -> int | None:
  root = math.isqrt(n) if n > 0 else -1
  return root if root * root == n else None


def _vit_common(t: _Tree, *, hidden: int, patch: int, channels: int, grid: int,
                image_size: int, cls_row: bool, class_token: bool, names: dict[str, str],
                pos_shape: tuple[int, ...]):
  """Patch embedding, position table (class-token row folded into the class token) and
  class token; `names` maps "patch", "pos", "cls" to the file's names."""
  t.add(f"{names['patch']}.weight", "params/backbone/embeddings/patch/kernel",
        (hidden, channels, patch, patch), _CONV)
  t.add(f"{names['patch']}.bias", "params/backbone/embeddings/patch/bias", (hidden,))
  new_grid = image_size // patch
  first = 1 if cls_row else 0

  def positions(arrays):
    from ptft_jax.models.vit import resample_pos_embedding

    table = arrays[names["pos"]].reshape(pos_shape[-2], hidden)[first:]
    return resample_pos_embedding(np.asarray(table, np.float32), new_grid)

  t.compute({names["pos"]: pos_shape}, "params/backbone/embeddings/pos_embedding",
            (new_grid * new_grid, hidden), positions)
  if class_token:
    def cls(arrays):
      token = arrays[names["cls"]].reshape(hidden)
      if cls_row:  # what the torch model adds to the class token
        token = token + arrays[names["pos"]].reshape(pos_shape[-2], hidden)[0]
      return np.asarray(token, np.float32)

    shapes = {names["cls"]: (1, 1, hidden)}
    if cls_row:
      shapes[names["pos"]] = pos_shape
    t.compute(shapes, "params/backbone/embeddings/cls_token", (hidden,), cls)


def _vit_plan(tensors, arch: str | None, side: dict | None, where: str,
              image_size: int | None) -> Plan:
  names = set(tensors.names)
  side = side or {}
  model_args = side.get("model_args") or {}
  hidden, channels, patch, patch_w = _shape(tensors, "patch_embed.proj.weight")
  if patch != patch_w:
    raise CheckpointError(f"{where}: tensor 'patch_embed.proj.weight' has non-square patches "
                          f"{(patch, patch_w)}")
  depth = 1 + max((int(m.group(1)) for n in names if (m := re.match(r"blocks\.(\d+)\.", n))),
                  default=-1)
  if depth == 0:
    raise CheckpointError(f"{where}: no transformer blocks ('blocks.0.*')")
  class_token = "cls_token" in names
  if "pos_embed" not in names:
    raise CheckpointError(f"{where}: missing tensors: pos_embed (only learned absolute "
                          "position embeddings are supported)")
  pos_shape = _shape(tensors, "pos_embed")
  tokens = pos_shape[-2] if len(pos_shape) == 3 else -1
  if len(pos_shape) != 3 or pos_shape[0] != 1 or pos_shape[2] != hidden:
    raise CheckpointError(f"{where}: tensor 'pos_embed' has shape {pos_shape}, expected "
                          f"(1, tokens, {hidden})")
  given = model_args.get("img_size")
  given = given[0] if isinstance(given, (list, tuple)) else given
  if class_token and _square(tokens - 1) and not (given and _square(tokens) == given // patch):
    cls_row, grid = True, _square(tokens - 1)
  elif _square(tokens):
    cls_row, grid = False, _square(tokens)
  else:
    raise CheckpointError(f"{where}: tensor 'pos_embed' has {tokens} rows: not a square patch "
                          "grid (plus a class-token row)")
  if given and given != grid * patch:
    raise CheckpointError(f"{where}: config.json model_args.img_size {given} does not match "
                          f"pos_embed's {grid}x{grid} grid of {patch}-pixel patches")
  # Heads: config.json, a timm name, the standard size of this width.
  heads = model_args.get("num_heads")
  name_arch = (arch if arch and _VIT_NAME.fullmatch(arch.split(".")[0]) else
               str(side.get("architecture") or ""))
  if heads is None and (m := _VIT_NAME.fullmatch(name_arch.split(".")[0])):
    size_hidden, heads = VIT_SIZES[m.group(1)]
    if size_hidden != hidden:
      raise CheckpointError(f"{where}: {name_arch} is hidden {size_hidden} but "
                            f"'patch_embed.proj.weight' has {hidden} channels")
  if heads is None:
    heads = VIT_HEADS.get(hidden)
  if heads is None or hidden % int(heads):
    raise CheckpointError(f"{where}: cannot tell the number of attention heads of a hidden "
                          f"width {hidden}; give a config.json with model_args.num_heads or "
                          "--arch vit_<size>_patch<p>_<res>")
  heads = int(heads)
  inter = _shape(tensors, "blocks.0.mlp.fc1.weight")
  inter = inter[0] if inter else 4 * hidden
  qkv_bias = "blocks.0.attn.qkv.bias" in names
  pooled_norm = "fc_norm.weight" in names
  pool_name = side.get("global_pool", model_args.get("global_pool"))
  if pool_name is None or pool_name == "":
    pool = "gap" if pooled_norm or not class_token else "cls"
  elif pool_name in ("token", "avg"):
    pool = "cls" if pool_name == "token" else "gap"
  else:
    raise CheckpointError(f"{where}: global_pool {pool_name!r} is not supported (only 'token' "
                          "and 'avg')")
  if pool == "cls" and not class_token:
    raise CheckpointError(f"{where}: global_pool 'token' but the file has no 'cls_token'")
  image_size = image_size or grid * patch
  config = dict(name="vit", image_size=image_size, patch_size=patch, hidden_size=hidden,
                num_layers=depth, num_heads=heads, intermediate_size=inter, pool=pool,
                class_token=class_token, pooled_norm=pooled_norm, layer_norm_eps=1e-6,
                qkv_bias=qkv_bias, dropout_rate=0.0, attention_dropout_rate=0.0,
                dtype="float32")
  t = _Tree()
  _vit_common(t, hidden=hidden, patch=patch, channels=channels, grid=grid,
              image_size=image_size, cls_row=cls_row, class_token=class_token,
              names={"patch": "patch_embed.proj", "pos": "pos_embed", "cls": "cls_token"},
              pos_shape=pos_shape)
  for i in range(depth):
    hf, ours = f"blocks.{i}", f"params/backbone/layer_{i}"
    t.norm(f"{hf}.norm1", f"{ours}/attention_norm", hidden)
    for j, part in enumerate(("query", "key", "value")):
      rows = (j * hidden, (j + 1) * hidden)
      t.add(f"{hf}.attn.qkv.weight", f"{ours}/attention/{part}/kernel", (3 * hidden, hidden),
            _LINEAR, rows)
      if qkv_bias:
        t.add(f"{hf}.attn.qkv.bias", f"{ours}/attention/{part}/bias", (3 * hidden,), None, rows)
    t.linear(f"{hf}.attn.proj", f"{ours}/attention/out", hidden, hidden)
    t.norm(f"{hf}.norm2", f"{ours}/output_norm", hidden)
    t.linear(f"{hf}.mlp.fc1", f"{ours}/mlp/intermediate", inter, hidden)
    t.linear(f"{hf}.mlp.fc2", f"{ours}/mlp/output", hidden, inter)
  t.norm("fc_norm" if pooled_norm else "norm", "params/backbone/final_norm", hidden)
  heads_loaded = ()
  if "head.weight" in names:
    t.linear("head", f"params/heads/{HEAD}/logits", _shape(tensors, "head.weight")[0], hidden)
    heads_loaded = (HEAD,)
  return Plan("vit", ml_collections.ConfigDict(config), t.leaves, t.expect, heads=heads_loaded)


def _hf_vit_plan(tensors, hf: dict, where: str, image_size: int | None) -> Plan:
  for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "image_size", "patch_size"):
    if hf.get(key) is None:
      raise CheckpointError(f"{where}: config.json has no {key!r}")
  if hf.get("hidden_act", "gelu") != "gelu":
    raise CheckpointError(f"{where}: config.json hidden_act {hf['hidden_act']!r} is not "
                          "supported (only 'gelu')")
  hidden, depth = hf["hidden_size"], hf["num_hidden_layers"]
  inter, patch = hf["intermediate_size"], hf["patch_size"]
  grid = hf["image_size"] // patch
  channels = hf.get("num_channels", 3)
  qkv_bias = bool(hf.get("qkv_bias", True))
  image_size = image_size or grid * patch
  config = dict(name="vit", image_size=image_size, patch_size=patch, hidden_size=hidden,
                num_layers=depth, num_heads=hf["num_attention_heads"], intermediate_size=inter,
                pool="cls", class_token=True, pooled_norm=False,
                layer_norm_eps=float(hf.get("layer_norm_eps", 1e-12)), qkv_bias=qkv_bias,
                dropout_rate=0.0, attention_dropout_rate=0.0, dtype="float32")
  t = _Tree()
  _vit_common(t, hidden=hidden, patch=patch, channels=channels, grid=grid,
              image_size=image_size, cls_row=True, class_token=True,
              names={"patch": "embeddings.patch_embeddings.projection",
                     "pos": "embeddings.position_embeddings", "cls": "embeddings.cls_token"},
              pos_shape=(1, grid * grid + 1, hidden))
  for i in range(depth):
    hf_l, ours = f"encoder.layer.{i}", f"params/backbone/layer_{i}"
    t.norm(f"{hf_l}.layernorm_before", f"{ours}/attention_norm", hidden)
    for part in ("query", "key", "value"):
      t.linear(f"{hf_l}.attention.attention.{part}", f"{ours}/attention/{part}", hidden, hidden,
               qkv_bias)
    t.linear(f"{hf_l}.attention.output.dense", f"{ours}/attention/out", hidden, hidden)
    t.norm(f"{hf_l}.layernorm_after", f"{ours}/output_norm", hidden)
    t.linear(f"{hf_l}.intermediate.dense", f"{ours}/mlp/intermediate", inter, hidden)
    t.linear(f"{hf_l}.output.dense", f"{ours}/mlp/output", hidden, inter)
  t.norm("layernorm", "params/backbone/final_norm", hidden)
  heads = ()
  if "classifier.weight" in tensors.names:
    t.linear("classifier", f"params/heads/{HEAD}/logits", _shape(tensors, "classifier.weight")[0],
             hidden)
    heads = (HEAD,)
  return Plan("hf_vit", ml_collections.ConfigDict(config), t.leaves, t.expect,
              skip=lambda n: n.startswith("pooler."), heads=heads)


# --- reading ---------------------------------------------------------------------------------


def _check(tensors, name: str, want: tuple[int, ...], layout: str) -> None:
  got = tensors.shape(name)
  if got != tuple(want):
    raise CheckpointError(f"{tensors.file_of(name)}: tensor {tensors.names[name]!r} has shape "
                          f"{got}, expected {tuple(want)} for the {layout} layout the other "
                          "tensors describe")
  tensors.check(name, got)  # dtype


def _file_index(spec: Spec, index) -> tuple[slice, ...]:
  """Our leaf's index -> the file tensor's index (inverse permutation, row offset)."""
  index = tuple(index) + (slice(None),) * (len(spec.ours) - len(tuple(index)))
  file_index = [slice(None)] * len(spec.shape)
  for i, axis in enumerate(spec.perm or range(len(spec.shape))):
    file_index[axis] = index[i]
  if spec.rows is not None:
    start, stop, _ = file_index[0].indices(spec.rows[1] - spec.rows[0])
    file_index[0] = slice(spec.rows[0] + start, spec.rows[0] + stop)
  return tuple(file_index)


def _reader(tensors, spec: Spec):
  def read(index):
    part = tensors.read(spec.name, _file_index(spec, index), transpose=False)
    return np.ascontiguousarray(np.transpose(part, spec.perm)) if spec.perm else part
  return read


def _model_path(path: tuple[str, ...]) -> str:
  """`backbone/stem_bn/mean`: the Model path placement rules read (collection dropped)."""
  return "/".join(path[1:])


def _gather(tensors, plan: Plan, placement: Placement | None) -> dict:
  variables: dict = {"params": {"backbone": {}, "heads": {}}, "batch_stats": {}}
  for leaf in plan.leaves:
    if isinstance(leaf, Spec):
      read = _reader(tensors, leaf)
      if placement is None:
        value = read(tuple(slice(None) for _ in leaf.ours))
      else:
        value = jax.make_array_from_callback(
            leaf.ours, placement(_model_path(leaf.path), leaf.ours), read)
    else:
      host = leaf.fn({n: tensors.get(n, plan.expect[n]) for n in leaf.names})
      if tuple(host.shape) != leaf.shape:
        raise CheckpointError(f"{tensors.path}: {'/'.join(leaf.path)} computed as {host.shape}, "
                              f"expected {leaf.shape}")
      value = host if placement is None else jax.make_array_from_callback(
          leaf.shape, placement(_model_path(leaf.path), leaf.shape), lambda i, h=host: h[i])
    safetensors_io.set_path(variables, leaf.path, value)
  return variables


@dataclasses.dataclass
class Loaded:
  """A vision checkpoint read: `load_vision`'s two values plus where they came from."""

  layout: str
  library: str  # "torchvision" | "timm" | "transformers"
  model_config: ml_collections.ConfigDict
  variables: dict
  heads: tuple[str, ...]
  preprocessing: dict


def read_vision(path: str | os.PathLike, arch: str | None = None, *,
                placement: Placement | None = None, **overrides) -> Loaded:
  """`load_vision` with what it found: layout, library, heads and preprocessing (`Loaded`)."""
  path = os.fspath(path)
  wanted = _arch_layout(arch)
  overrides = dict(overrides)
  image_size = overrides.pop("image_size", None)
  with _weights_dir(path) as (model_dir, side_dir):
    side = _side_json(side_dir, CONFIG_FILE)
    with safetensors_io.Tensors(model_dir, _normalize) as tensors:
      where = tensors.path if os.path.isdir(path) else os.fspath(path)
      found = detect_layout(tensors.names, side)
      if found is None:
        raise CheckpointError(
            f"{where}: not a recognized image model (no 'conv1.weight' + 'layer1.*' (ResNet), "
            "'patch_embed.proj.weight' (timm ViT) or 'embeddings.patch_embeddings.*' (HF ViT))")
      if wanted is not None and wanted != found:
        raise CheckpointError(f"{where}: --arch {arch} ({wanted}) but the tensor names are a "
                              f"{found} layout")
      if image_size is not None and found == "resnet":
        raise ConfigError("image_size: only ViTs have a fixed input size (ResNets take any)")
      if found == "resnet":
        plan = _resnet_plan(tensors, arch, where)
      elif found == "vit":
        plan = _vit_plan(tensors, arch, side, where, image_size)
      else:
        if not side:
          raise CheckpointError(f"{os.path.join(side_dir, CONFIG_FILE)}: not found (a Hugging "
                                "Face ViT needs its config.json)")
        plan = _hf_vit_plan(tensors, side, where, image_size)
      present = set(tensors.names)
      unexpected = {n for n in present - set(plan.expect) if not plan.skip(n)}
      if unexpected:
        raise CheckpointError(f"{where}: unexpected tensors for a {plan.layout} model: "
                              f"{safetensors_io.short_list(tensors.names[n] for n in unexpected)}")
      missing = set(plan.expect) - present
      if missing:
        raise CheckpointError(f"{where}: missing tensors for a {plan.layout} model: "
                              f"{safetensors_io.short_list(missing)}")
      for name, shape in plan.expect.items():
        _check(tensors, name, shape, plan.layout)
      model_config = plan.model_config
      model_config.update(overrides)
      _validate(model_config, where)
      variables = _gather(tensors, plan, placement)
  if model_config.get("scan_layers", False):
    from ptft_jax.models import layout as layout_lib

    variables["params"]["backbone"] = layout_lib.loop_to_scan(variables["params"]["backbone"])
  library = ("transformers" if plan.layout == "hf_vit" else
             "timm" if side and ("pretrained_cfg" in side or "architecture" in side) or
             plan.layout == "vit" else "torchvision")
  return Loaded(plan.layout, library, model_config, variables, plan.heads,
                _preprocessing(side_dir, side, plan.layout))


def _validate(model_config: ml_collections.ConfigDict, where: str) -> None:
  from ptft_jax.models import build_backbone

  try:
    build_backbone(model_config)
  except ConfigError as e:
    raise ConfigError(f"{where}: {safetensors_io.first_line(e)}") from None


def load_vision(path: str | os.PathLike, arch: str | None = None, *,
                placement: Placement | None = None,
                **overrides) -> tuple[ml_collections.ConfigDict, dict]:
  """Reads a torchvision / timm / Hugging Face image model into a model config and variables.

  Args:
    path: a directory with `model.safetensors` (or its index) and optional `config.json`,
      or a `.safetensors` file (see the module docstring).
    arch: None (recognized from the tensor names), a layout ("resnet", "vit", "hf_vit"), a
      ResNet name (`resnet50`: checked against the file) or a timm ViT name
      (`vit_small_patch16_224`: gives the number of heads when config.json does not).
    placement: optional `(param path, our shape) -> Sharding`, called with the Model path
      (`backbone/stage1_block0/conv1/kernel`, `backbone/stem_bn/mean`,
      `heads/classifier/logits/kernel`); each leaf is then a jax.Array read slice by slice.
    **overrides: model config fields to replace, e.g. `image_size=384` (a ViT: position
      embeddings resampled bilinearly to the new grid), `scan_layers=True`,
      `dtype="bfloat16"`, `batch_norm="frozen"`.

  Returns:
    `(model_config, variables)`: model_config is `config.model` of a run (`name="resnet"`
    or `"vit"` + fields); variables is `{"params": {"backbone": ..., "heads": {"classifier":
    {"logits": {"kernel" [features, classes], "bias"}}} or {}}, "batch_stats": {"backbone":
    ...}}` (ResNet BatchNorm running statistics; `{}` for a ViT). Leaves are float32 numpy
    (jax.Arrays with a `placement`).
  """
  loaded = read_vision(path, arch, placement=placement, **overrides)
  return loaded.model_config, loaded.variables


# --- preprocessing ---------------------------------------------------------------------------


def _interpolation(value, where: str) -> str:
  names = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}
  if value not in names:
    raise CheckpointError(f"{where}: interpolation {value!r} is not supported (only "
                          f"{', '.join(INTERPOLATIONS)})")
  return names[value]


def _preprocessing(side_dir: str, side: dict | None, layout: str) -> dict:
  """The preprocessing.json dict for weights whose side files are in `side_dir`."""
  out = dict(IMAGENET)
  where = os.path.join(side_dir, CONFIG_FILE)
  if layout == "hf_vit":
    proc = _side_json(side_dir, HF_PREPROCESSOR_FILE) or {}
    where = os.path.join(side_dir, HF_PREPROCESSOR_FILE)
    size = (side or {}).get("image_size", 224)
    resize = proc.get("size", {"height": size})
    resize = resize.get("shortest_edge", resize.get("height", size)) if isinstance(
        resize, dict) else int(resize)
    crop = proc.get("crop_size") if proc.get("do_center_crop") else None
    crop = crop.get("height", resize) if isinstance(crop, dict) else (crop or resize)
    out.update(mean=list(proc.get("image_mean", [0.5, 0.5, 0.5])),
               std=list(proc.get("image_std", [0.5, 0.5, 0.5])), resize=int(resize),
               crop=int(crop), interpolation=_interpolation(proc.get("resample", 2), where))
    return out
  cfg = (side or {}).get("pretrained_cfg")
  if not isinstance(cfg, dict):
    return out
  crop = int((cfg.get("input_size") or [3, out["crop"]])[-1])
  crop_pct = float(cfg.get("crop_pct") or 0.875)
  out.update(mean=[float(v) for v in cfg.get("mean", out["mean"])],
             std=[float(v) for v in cfg.get("std", out["std"])], crop=crop,
             resize=int(math.floor(crop / crop_pct)),
             interpolation=_interpolation(cfg.get("interpolation", "bicubic"), where))
  return out


def preprocessing(path: str | os.PathLike, arch: str | None = None) -> dict:
  """The preprocessing the weights at `path` expect (preprocessing.json's dict): `{"mean",
  "std", "resize", "crop", "interpolation"}` (see the module docstring). Reads names only."""
  path = os.fspath(path)
  with _weights_dir(path) as (model_dir, side_dir):
    side = _side_json(side_dir, CONFIG_FILE)
    with safetensors_io.Tensors(model_dir, _normalize) as tensors:
      layout = _arch_layout(arch) or detect_layout(tensors.names, side) or "resnet"
  return _preprocessing(side_dir, side, layout)


def library_of(path: str | os.PathLike, arch: str | None = None) -> str:
  """"torchvision" | "timm" | "transformers": which library's files `path` looks like."""
  path = os.fspath(path)
  with _weights_dir(path) as (model_dir, side_dir):
    side = _side_json(side_dir, CONFIG_FILE)
    with safetensors_io.Tensors(model_dir, _normalize) as tensors:
      layout = _arch_layout(arch) or detect_layout(tensors.names, side)
  if layout == "hf_vit":
    return "transformers"
  timm = bool(side) and ("pretrained_cfg" in side or "architecture" in side)
  return "timm" if timm or layout == "vit" else "torchvision"


# --- workdir ---------------------------------------------------------------------------------


def import_vision(src: str | os.PathLike, workdir: str | os.PathLike, arch: str | None = None, *,
                  mesh=None, rules=None, **overrides) -> Loaded:
  """`convert.workdir.import_vision` (documented there): checkpoint (params + batch_stats),
  model_config.json and preprocessing.json in `workdir`; returns the `Loaded` record."""
  from ptft_jax.train import checkpoint, placement
  from ptft_jax.utils import write_json_atomic

  workdir = os.fspath(workdir)
  target = placement.layout(placement.import_mesh() if mesh is None else mesh, rules)
  loaded = read_vision(src, arch, placement=placement.placer(target), **overrides)
  config_dict = loaded.model_config.to_dict()
  stats = loaded.variables["batch_stats"]
  checkpoint.save_pretrained(workdir, dict(loaded.variables["params"]), config=config_dict,
                             model_state={"batch_stats": stats} if stats else None)
  write_json_atomic(os.path.join(workdir, placement.MODEL_CONFIG_FILE), config_dict)
  write_json_atomic(os.path.join(workdir, PREPROCESSING_FILE), loaded.preprocessing)
  return loaded


# --- CLI -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
  """`python -m ptft_jax.convert vision` (parser in convert/__main__.py): imports `args.src`
  into `args.workdir`; prints one line. UserErrors propagate (the CLI prints them as one
  line, exit 2)."""
  overrides = {"image_size": args.image_size} if getattr(args, "image_size", None) else {}
  done = import_vision(args.src, args.workdir, args.arch, **overrides)
  c = done.model_config
  if c.name == "resnet":
    blocks = tuple(c.stage_sizes) or "standard"
    shape = f"ResNet depth {c.depth}, width {c.width}, blocks {blocks}"
  else:
    shape = (f"ViT {c.num_layers} layers, hidden {c.hidden_size}, {c.num_heads} heads, "
             f"patch {c.patch_size}, image {c.image_size}, pool {c.pool}")
  heads = f" + heads {list(done.heads)}" if done.heads else ""
  p = done.preprocessing
  print(f"converted {args.src} ({done.library} {shape}){heads} -> {args.workdir} "
        f"(preprocessing: resize {p['resize']}, crop {p['crop']}, {p['interpolation']})")
