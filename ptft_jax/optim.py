"""Optimizers from config: schedules, parameter groups, weight-decay mask, clipping.

Parameter groups are the one mechanism behind freezing and per-group learning
rates: `config.optim.groups` is an ordered list of `(regex, settings)`; a leaf
takes the settings of the first regex that *fully* matches its path
(`backbone/layer_0/kernel`); unmatched leaves use the defaults. Settings:

  frozen: bool        no update and no optimizer state for these leaves
  lr: float           this group's peak learning rate
  lr_mult: float      multiplier on config.optim.lr (ignored when lr is given)
  weight_decay: float this group's decoupled weight decay

Frozen groups go through `optax.multi_transform` with `optax.set_to_zero()`,
which keeps no moments for them; their gradients are never used, so XLA also
drops their backward pass when the frozen leaves sit at the input side.
"""

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from ptft_jax.errors import ConfigError

GROUP_SETTINGS = ("frozen", "lr", "lr_mult", "weight_decay")
DEFAULT_GROUP = "default"


def path_str(path) -> str:
  """'backbone/layer_0/kernel' for a jax key path."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def tree_paths(tree) -> Any:
  """A tree of the same structure whose leaves are their own path strings."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def make_schedule(
    lr: float, total_steps: int, *, warmup_steps: int = 0, decay: str = "cosine",
    end_lr_factor: float = 0.0,
) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine / linear decay to lr * end_lr_factor, or constant."""
  warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
  decay_steps = max(total_steps - warmup_steps, 1)
  end = lr * end_lr_factor
  if decay == "cosine":
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_factor)
  elif decay == "linear":
    main = optax.linear_schedule(lr, end, decay_steps)
  elif decay == "constant":
    main = optax.constant_schedule(lr)
  else:
    raise ConfigError(
        f"config.optim.decay: unknown schedule {decay!r}; choose cosine, linear or constant")
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


@dataclasses.dataclass(frozen=True)
class Group:
  name: str
  regex: str | None
  frozen: bool
  lr: float
  weight_decay: float
  leaves: tuple[str, ...]
  num_params: int


def _normalize_groups(groups: Sequence) -> list[tuple[str, dict]]:
  out = []
  for i, item in enumerate(groups or ()):
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
      raise ConfigError(
          f"config.optim.groups[{i}]: expected (regex, settings dict), got {item!r}")
    regex, settings = item[0], dict(item[1] or {})
    unknown = sorted(set(settings) - set(GROUP_SETTINGS))
    if unknown:
      raise ConfigError(
          f"config.optim.groups[{i}] ({regex!r}): unknown settings {unknown}; "
          f"allowed: {list(GROUP_SETTINGS)}")
    try:
      re.compile(regex)
    except re.error as e:
      raise ConfigError(f"config.optim.groups[{i}]: bad regex {regex!r}: {e}") from None
    out.append((regex, settings))
  return out


def assign_groups(params, optim_config: ml_collections.ConfigDict) -> tuple[Any, list[Group]]:
  """Labels every leaf with its group name; returns (label tree, groups in order).

  Raises ConfigError when a group's regex matches no parameter (usually a typo),
  naming the regex and a few real paths.
  """
  groups = _normalize_groups(optim_config.get("groups", ()))
  paths = tree_paths(params)
  flat_paths = jax.tree_util.tree_leaves(paths)

  def label(path: str) -> str:
    for i, (regex, _) in enumerate(groups):
      if re.fullmatch(regex, path):
        return f"group_{i}"
    return DEFAULT_GROUP

  labels = jax.tree_util.tree_map(label, paths)
  sizes = dict(zip(flat_paths, (int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(
      params)), strict=True))
  flat_labels = jax.tree_util.tree_leaves(labels)
  base_lr = float(optim_config.lr)
  base_wd = float(optim_config.get("weight_decay", 0.0))
  result = []
  for i, (regex, settings) in enumerate(groups):
    name = f"group_{i}"
    leaves = tuple(p for p, lab in zip(flat_paths, flat_labels, strict=True) if lab == name)
    if not leaves:
      matched_earlier = [p for p in flat_paths if re.fullmatch(regex, p)]
      why = (f"its {len(matched_earlier)} matches are taken by an earlier group"
             if matched_earlier else f"parameter paths look like {flat_paths[:3]}")
      raise ConfigError(
          f"config.optim.groups[{i}]: regex {regex!r} matches no parameter ({why})")
    lr = float(settings["lr"]) if "lr" in settings else base_lr * float(
        settings.get("lr_mult", 1.0))
    result.append(Group(
        name=name, regex=regex, frozen=bool(settings.get("frozen", False)), lr=lr,
        weight_decay=float(settings.get("weight_decay", base_wd)), leaves=leaves,
        num_params=sum(sizes[p] for p in leaves)))
  default_leaves = tuple(
      p for p, lab in zip(flat_paths, flat_labels, strict=True) if lab == DEFAULT_GROUP)
  result.append(Group(
      name=DEFAULT_GROUP, regex=None, frozen=False, lr=base_lr, weight_decay=base_wd,
      leaves=default_leaves, num_params=sum(sizes[p] for p in default_leaves)))
  return labels, result


def _decay_mask_fn(regex: str) -> Callable:
  def mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda p, _: re.fullmatch(regex, path_str(p)) is not None, params)
  return mask


def _base_optimizer(optim_config, schedule, weight_decay, wd_mask) -> optax.GradientTransformation:
  name = optim_config.name
  if name == "adamw":
    return optax.adamw(
        schedule, b1=optim_config.get("b1", 0.9), b2=optim_config.get("b2", 0.999),
        eps=optim_config.get("eps", 1e-8), weight_decay=weight_decay, mask=wd_mask)
  if name == "sgd":
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=wd_mask),
        optax.sgd(schedule, momentum=optim_config.get("momentum", 0.9) or None,
                  nesterov=optim_config.get("nesterov", False)))
  raise ConfigError(f"config.optim.name: unknown optimizer {name!r}; choose adamw or sgd")


def make_optimizer(
    params, optim_config: ml_collections.ConfigDict, total_steps: int,
) -> tuple[optax.GradientTransformation, list[Group]]:
  """Builds the optax transformation for `params`; returns (tx, groups).

  Chain: [clip by global norm over trainable leaves] -> multi_transform over
  groups, each `adamw`/`sgd` with its own schedule and decay mask, or
  `set_to_zero` when frozen.
  """
  labels, groups = assign_groups(params, optim_config)
  wd_mask = _decay_mask_fn(optim_config.get("weight_decay_mask", r".*/kernel"))
  transforms = {}
  for g in groups:
    if g.frozen:
      transforms[g.name] = optax.set_to_zero()
    else:
      schedule = make_schedule(
          g.lr, total_steps, warmup_steps=optim_config.get("warmup_steps", 0),
          decay=optim_config.get("decay", "cosine"),
          end_lr_factor=optim_config.get("end_lr_factor", 0.0))
      transforms[g.name] = _base_optimizer(optim_config, schedule, g.weight_decay, wd_mask)
  tx = optax.multi_transform(transforms, labels)
  clip = optim_config.get("grad_clip_norm", 0.0)
  if clip:
    frozen_names = {g.name for g in groups if g.frozen}
    trainable = jax.tree_util.tree_map(lambda lab: lab not in frozen_names, labels)
    tx = optax.chain(optax.masked(optax.clip_by_global_norm(clip), trainable), tx)
  return tx, groups


def group_table(groups: Sequence[Group]) -> str:
  """A printable table: group, regex, matched leaves, parameters, lr, weight decay, frozen."""
  rows = [("group", "regex", "leaves", "params", "lr", "wd", "frozen")]
  for g in groups:
    rows.append((g.name, g.regex or "(unmatched)", str(len(g.leaves)), f"{g.num_params:,}",
                 f"{g.lr:.3g}", f"{g.weight_decay:.3g}", "yes" if g.frozen else "no"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)
