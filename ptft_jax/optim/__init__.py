"""How parameters move: parameter groups, fine-tuning presets, LoRA, precision.

  optimizer.py   parameter groups (regex -> frozen / lr / decay / schedule / unfreeze_at),
                 schedules, clipping, EMA: the optax transformation
  strategies.py  named presets (linear_probe, freeze_layers, layer_decay, gradual_unfreeze,
                 discriminative, lora) that expand into parameter groups
  lora.py        LoRA adapters as a parameter-tree transform, merged for export
  precision.py   compute dtype (bfloat16) and casting

Presets are expanded here, in the caller: `make_optimizer` and `assign_groups`
below expand `config.optim.strategy` with strategies.expand and hand plain
groups to optimizer.py, which knows nothing of presets. May import:
ptft_jax.errors, ptft_jax.utils, ptft_jax.models (precision: the backbone's dtype field).
"""

import ml_collections
import optax

from ptft_jax.optim import lora, optimizer, precision, strategies
from ptft_jax.optim.optimizer import (
  Group,
  ema_params,
  group_table,
  make_schedule,
  param_counts,
  trainable_mask,
)


def assign_groups(params, optim_config: ml_collections.ConfigDict):
  """(label tree, groups): `config.optim.groups`, then the preset's groups (see optimizer.py)."""
  return optimizer.assign_groups(params, optim_config, strategies.expand(params, optim_config))


def make_optimizer(params, optim_config: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, list[Group]]:
  """The optax transformation for `params` from `config.optim` (groups and preset); (tx, groups)."""
  return optimizer.make_optimizer(params, optim_config, total_steps,
                                  strategies.expand(params, optim_config))


__all__ = ["Group", "assign_groups", "ema_params", "group_table", "lora", "make_optimizer",
           "make_schedule", "optimizer", "param_counts", "precision", "strategies",
           "trainable_mask"]
