"""ResNet backbones (He et al. 2015; v1.5: the stride sits on the 3x3 conv) with BatchNorm.

`ResNet(depth=18 | 34 | 50 | 101 | 152)`; `small_input=True` swaps the ImageNet
stem (7x7/2 conv + 3x3/2 max-pool) for one 3x3/1 conv, for 32x32 or 8x8 images.
Features: `{"features": [batch, C]}` after global average pooling, with C =
8 * width (depth 18/34) or 32 * width (depth 50+), i.e. 512 / 2048 at width 64.

Parameter layout (relative to `backbone/`), convolutions without bias:

  stem_conv/kernel, stem_bn/{scale,bias}
  stage{s}_block{b}/conv{i}/kernel, stage{s}_block{b}/bn{i}/{scale,bias}
  stage{s}_block{b}/proj_conv/kernel, .../proj_bn/{scale,bias}   (shape-changing blocks)

Padding (`config.model.padding`): "same" (default) is Flax's SAME, which pads a strided
convolution or pool asymmetrically (more after than before: 2/3 for the 7x7/2 stem, 0/1 for
the 3x3/2 convs and max-pool on even sizes); "symmetric" pads k // 2 on every side (3 for the
stem, 1 for 3x3 convs and the max-pool), as torchvision and timm do, so their ImageNet
weights compute the same function (`ptft_jax.convert.vision` imports them with it).
Unstrided 3x3 and 1x1 convolutions pad the same either way.

BatchNorm uses momentum 0.9 (running = 0.9 running + 0.1 batch: torch's momentum=0.1)
and epsilon 1e-5 (torch's default); torch updates the running variance with the unbiased
batch variance, Flax with the biased one (training only: eval is identical).

Each `*bn*` module keeps `{mean, var}` in the `batch_stats` collection, which the
train state holds in `model_state` and checkpoints save and transfer with the params.

BatchNorm modes (`config.model.batch_norm`):

  "train"   training steps normalize with batch statistics and update the running
            averages; evaluation uses the running averages.
  "frozen"  every BatchNorm always uses its running averages; `batch_stats` never change.
  "auto"    (default) per layer: a BatchNorm whose scale and bias are both frozen by
            `config.optim.groups` behaves as "frozen", any other as "train".
            `steps.make_train_step(..., trainable=...)` resolves this with
            `ResNet.with_frozen_norms` (the names go into `frozen_norms`).
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptft_jax.errors import ConfigError

BATCH_NORM_MODES = ("train", "frozen", "auto")
PADDINGS = ("same", "symmetric")
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# depth -> (block kind, blocks per stage)
STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class _Norm(nn.BatchNorm):
  """BatchNorm that picks batch or running statistics from its mode and its own path.

  Uses the running averages when not training, when `mode` is "frozen", or when
  `mode` is "auto" and its full path (`backbone/stage1_block0/bn1`) is in `frozen`.
  """

  mode: str = "train"
  frozen: Sequence[str] = ()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    running = (not train or self.mode == "frozen"
               or (self.mode == "auto" and "/".join(self.path) in self.frozen))
    return super().__call__(x, use_running_average=running)


def _padding(mode: str, kernel: int):
  """Flax padding of a k x k window: "SAME", or k // 2 on both sides of each spatial axis."""
  return "SAME" if mode == "same" else ((kernel // 2, kernel // 2),) * 2


class _Block(nn.Module):
  """A residual block: basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with 4x expansion)."""

  kind: str
  filters: int
  strides: int
  mode: str
  frozen: Sequence[str]
  dtype: Any
  padding: str = "same"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = lambda f, k, s, name: nn.Conv(
        f, (k, k), (s, s), padding=_padding(self.padding, k), use_bias=False,
        dtype=self.dtype, kernel_init=_CONV_INIT, name=name)
    norm = lambda name, scale_init=nn.initializers.ones: _Norm(
        momentum=0.9, epsilon=1e-5, dtype=self.dtype, scale_init=scale_init,
        mode=self.mode, frozen=self.frozen, name=name)
    if self.kind == "basic":
      specs = [(self.filters, 3, self.strides), (self.filters, 3, 1)]
    else:
      specs = [(self.filters, 1, 1), (self.filters, 3, self.strides), (4 * self.filters, 1, 1)]
    out_filters = specs[-1][0]
    y = x
    for i, (f, k, s) in enumerate(specs, start=1):
      y = conv(f, k, s, f"conv{i}")(y)
      if i < len(specs):
        y = nn.relu(norm(f"bn{i}")(y, train))
      else:  # Zero scale: every block starts as the identity (Goyal et al. 2017).
        y = norm(f"bn{i}", nn.initializers.zeros)(y, train)
    if x.shape[-1] != out_filters or self.strides != 1:
      x = conv(out_filters, 1, self.strides, "proj_conv")(x)
      x = norm("proj_bn")(x, train)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet backbone over `batch["image"]` [batch, h, w, c] -> `{"features": [batch, C]}`.

  Attributes:
    depth: 18, 34 (basic blocks) or 50, 101, 152 (bottleneck blocks).
    width: channels of the first stage (64 in the paper); stages double it.
    stem_width: channels of the stem convolution; 0 (default) = `width`. (timm's plain
      stem always has 64, whatever its stage widths.)
    small_input: 3x3/1 stem without max-pool (CIFAR-size and smaller images).
    stage_sizes: blocks per stage, overriding the depth's (e.g. (1, 1, 1, 1) for
      quick tests); the depth still picks the block kind.
    batch_norm: "train", "frozen" or "auto" (see the module docstring).
    padding: "same" (Flax SAME) or "symmetric" (torchvision / timm; see the module docstring).
    frozen_norms: full paths of the BatchNorm modules that "auto" freezes; set by
      `with_frozen_norms` (through `Model.with_frozen_norms`), not by hand.
    dtype: compute dtype ("float32", "bfloat16"); parameters stay float32.
  """

  depth: int = 50
  width: int = 64
  stem_width: int = 0
  small_input: bool = False
  stage_sizes: Sequence[int] = ()
  batch_norm: str = "auto"
  frozen_norms: Sequence[str] = ()
  dtype: str = "float32"
  padding: str = "same"

  def __post_init__(self):
    if self.depth not in STAGES:
      raise ConfigError(
          f"config.model.depth: ResNet depth {self.depth} is not one of {sorted(STAGES)}")
    if self.batch_norm not in BATCH_NORM_MODES:
      raise ConfigError(
          f"config.model.batch_norm: {self.batch_norm!r} is not one of {BATCH_NORM_MODES}")
    if self.padding not in PADDINGS:
      raise ConfigError(f"config.model.padding: {self.padding!r} is not one of {PADDINGS}")
    super().__post_init__()

  @nn.nowrap
  def with_frozen_norms(self, trainable, model_state: dict) -> "ResNet":
    """This backbone with the "auto" BatchNorms whose params are all frozen in `frozen_norms`."""
    frozen = frozen_norm_paths(trainable, model_state)
    return self.clone(frozen_norms=frozen) if frozen else self

  @nn.compact
  def __call__(self, batch, *, train: bool) -> dict[str, jax.Array]:
    kind, blocks = STAGES[self.depth]
    blocks = tuple(self.stage_sizes) or blocks
    dtype = jnp.dtype(self.dtype)
    frozen = tuple(self.frozen_norms)
    x = jnp.asarray(batch["image"], dtype)
    k, s = (3, 1) if self.small_input else (7, 2)
    x = nn.Conv(self.stem_width or self.width, (k, k), (s, s), padding=_padding(self.padding, k),
                use_bias=False, dtype=dtype, kernel_init=_CONV_INIT, name="stem_conv")(x)
    x = _Norm(momentum=0.9, epsilon=1e-5, dtype=dtype, mode=self.batch_norm, frozen=frozen,
              name="stem_bn")(x, train)
    x = nn.relu(x)
    if not self.small_input:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_padding(self.padding, 3))
    for stage, count in enumerate(blocks, start=1):
      for b in range(count):
        x = _Block(kind, self.width * 2 ** (stage - 1), 2 if stage > 1 and b == 0 else 1,
                   self.batch_norm, frozen, dtype, self.padding,
                   name=f"stage{stage}_block{b}")(x, train)
    return {"features": jnp.mean(x, axis=(1, 2)).astype(jnp.float32)}


def norm_paths(model_state: dict) -> list[str]:
  """Full module paths of every BatchNorm in `model_state["batch_stats"]`, sorted.

  A norm's path is the parent of its `{mean, var}` leaves, e.g. `backbone/stage1_block0/bn1`.
  """
  stats = model_state.get("batch_stats", {})
  paths = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(stats)[0]:
    keys = [str(getattr(k, "key", k)) for k in path]
    if len(keys) >= 2 and keys[-1] in ("mean", "var"):
      paths.add("/".join(keys[:-1]))
  return sorted(paths)


def frozen_norm_paths(trainable: Any, model_state: dict) -> tuple[str, ...]:
  """The BatchNorm paths whose params (scale and bias) are all frozen in `trainable`.

  Args:
    trainable: bool tree over the params (False = frozen), as `optim` builds it.
    model_state: the non-param collections (`batch_stats` names the norms).
  """
  frozen = []
  for path in norm_paths(model_state):
    node = trainable
    for key in path.split("/"):
      node = node.get(key, {}) if hasattr(node, "get") else {}
    leaves = jax.tree_util.tree_leaves(node)
    if leaves and not any(bool(t) for t in leaves):
      frozen.append(path)
  return tuple(frozen)
