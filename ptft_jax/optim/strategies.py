"""Fine-tuning strategies: named presets that expand into parameter groups.

`config.optim.strategy.name` picks one; `expand(params, optim_config)` returns
`config.optim.groups` (first, so explicit groups always win) followed by the
preset's groups. Presets only generate groups; `optim.py` does the rest.

  ""                no preset: only config.optim.groups
  full              every parameter trains (no groups)
  linear_probe      backbone frozen; only the heads train
  freeze_layers     embeddings + the first `freeze_layers` layers frozen
  layer_decay       lr * layer_decay ** depth (heads depth 0, embeddings deepest)
  gradual_unfreeze  heads first; one more layer (from the top) every `unfreeze_every` steps
  discriminative    backbone at lr * backbone_lr_mult, heads at lr
  lora              backbone frozen; LoRA adapters (config.lora) and heads train

Depth comes from the parameter path. The "unit" of a leaf is the first path
component under `backbone/` (also under `lora/backbone/`, so adapters follow
their layer). Units whose name holds "embed" or starts with "stem" are the
input side (deepest). Units with indices (`layer_3`, `conv_0`, `dense_1`,
`block_2`, `stage2_block1`, `layer_0_forward`) are ordered input to output by
family (conv < stage < block < layer < dense, then other families by name) and
then by their indices; units sharing family and indices (`layer_0_forward`,
`layer_0_backward`) share a depth. Everything else in the backbone (pooler,
final_norm) sits at the top with the heads. With L indexed depths, the unit at
input-order position p has depth L - p, the input side L + 1, heads 0.
`unit_depths(params)` shows the result for a model.

A scanned transformer stack (`config.model.scan_layers=True`) keeps every layer
in `layers/...` leaves with a leading [num_layers] axis; units and groups see
row k of such a leaf under its looped name `layer_{k}/...`
(`models.layout.row_names`), so every preset gives a scanned model the groups
it gives the looped one, and optimizer.py trains the rows of one stacked leaf
in their different groups (per-row state, lr, freezing and unfreeze step).
"""

import re
from collections.abc import Sequence
from typing import Any

import ml_collections

from ptft_jax.errors import ConfigError
from ptft_jax.models import layout

STRATEGIES = ("", "full", "linear_probe", "freeze_layers", "layer_decay", "gradual_unfreeze",
              "discriminative", "lora")
_FAMILY_ORDER = ("conv", "stage", "block", "layer", "dense")
_PREFIX = re.compile(r"^(?:lora/)?backbone/([^/]+)/")


def _names(params) -> list[str]:
  """Every leaf's path, a stacked leaf's rows by their looped names (`layer_{k}/...`)."""
  return [n for names in layout.looped_names(params).values() for n in names]


def _unit(path: str) -> str | None:
  m = _PREFIX.match(path)
  return m.group(1) if m else None


def _is_input_side(unit: str) -> bool:
  return "embed" in unit or unit.startswith("stem")


def _order_key(unit: str) -> tuple | None:
  """(family rank, family, indices) for an indexed unit, else None."""
  m = re.match(r"([a-zA-Z]+)_?\d", unit)
  if not m:
    return None
  family = m.group(1)
  rank = _FAMILY_ORDER.index(family) if family in _FAMILY_ORDER else len(_FAMILY_ORDER)
  return (rank, family, tuple(int(i) for i in re.findall(r"\d+", unit)))


def unit_depths(params) -> dict[str, int]:
  """{backbone unit: depth from the top}; heads (not listed) have depth 0."""
  units = sorted({u for u in map(_unit, _names(params)) if u})
  keys = sorted({k for u in units if not _is_input_side(u) and (k := _order_key(u))})
  depth = {k: len(keys) - i for i, k in enumerate(keys)}
  out = {}
  for u in units:
    if _is_input_side(u):
      out[u] = len(keys) + 1
    else:
      key = _order_key(u)
      out[u] = depth[key] if key else 0
  return out


def _units_regex(units: Sequence[str]) -> str:
  names = [re.escape(u) for u in sorted(units)]
  alternatives = names[0] if len(names) == 1 else f"(?:{'|'.join(names)})"
  return rf"(?:lora/)?backbone/{alternatives}/.*"


def _depth_groups(params, settings_for_depth) -> list[tuple[str, dict]]:
  """One group per backbone depth >= 1 (deepest last), settings from `settings_for_depth(d)`."""
  by_depth: dict[int, list[str]] = {}
  for unit, d in unit_depths(params).items():
    by_depth.setdefault(d, []).append(unit)
  groups = []
  for d in sorted(by_depth):
    if d == 0:
      continue
    groups.append((_units_regex(by_depth[d]), {"name": f"depth_{d}", **settings_for_depth(d)}))
  return groups


def _require_backbone(params, name: str):
  if not any(_unit(p) for p in _names(params)):
    raise ConfigError(f"config.optim.strategy.name={name!r}: the model has no backbone/ params")


def preset_groups(params, strategy: ml_collections.ConfigDict) -> list[tuple[str, dict]]:
  """The groups of `strategy` (a config.optim.strategy) for `params`."""
  name = strategy.get("name", "")
  if name not in STRATEGIES:
    raise ConfigError(
        f"config.optim.strategy.name: unknown strategy {name!r}; choose one of "
        f"{[s for s in STRATEGIES if s]}")
  if name in ("", "full"):
    return []
  _require_backbone(params, name)
  if name in ("linear_probe", "lora"):
    return [(r"backbone/.*", {"name": "backbone", "frozen": True})]
  if name == "discriminative":
    mult = float(strategy.get("backbone_lr_mult", 0.1))
    return [(r"(?:lora/)?backbone/.*", {"name": "backbone", "lr_mult": mult})]
  if name == "layer_decay":
    decay = float(strategy.get("layer_decay", 0.75))
    if not 0.0 < decay <= 1.0:
      raise ConfigError(f"config.optim.strategy.layer_decay={decay}: use a value in (0, 1]")
    return _depth_groups(params, lambda d: {"lr_mult": decay ** d})
  if name == "gradual_unfreeze":
    every = int(strategy.get("unfreeze_every", 100))
    if every <= 0:
      raise ConfigError(f"config.optim.strategy.unfreeze_every={every}: use a positive step count")
    return _depth_groups(params, lambda d: {"unfreeze_at": d * every})
  # freeze_layers
  k = int(strategy.get("freeze_layers", 0))
  depths = unit_depths(params)
  num_layers = max([d for u, d in depths.items() if not _is_input_side(u)] or [0])
  if not 1 <= k <= num_layers:
    raise ConfigError(
        f"config.optim.strategy.freeze_layers={k}: the backbone has {num_layers} layers "
        f"(depths: {depths}); use 1..{num_layers}")
  frozen = [u for u, d in depths.items() if d > num_layers - k]
  return [(_units_regex(frozen), {"name": f"first_{k}", "frozen": True})]


def expand(params, optim_config: ml_collections.ConfigDict) -> list[tuple[str, Any]]:
  """`config.optim.groups` followed by the strategy's groups that still match something.

  A preset group whose leaves all went to explicit groups is dropped (an
  explicit group that matches nothing is still an error, in optim.py).
  """
  groups = [tuple(g) if isinstance(g, list) else g for g in optim_config.get("groups", ())]
  strategy = optim_config.get("strategy", None)
  if not strategy:
    return groups
  preset = preset_groups(params, strategy)
  # (name, path) of every row: an explicit group takes a row by either (optimizer.py).
  rows = [(n, p) for p, names in layout.looped_names(params).items() for n in names]
  taken = lambda n, p: any(
      isinstance(g, tuple) and len(g) == 2 and isinstance(g[0], str)
      and (_fullmatch(g[0], n) or _fullmatch(g[0], p)) for g in groups)
  free = [n for n, p in rows if not taken(n, p)]
  return groups + [(r, s) for r, s in preset if any(re.fullmatch(r, p) for p in free)]


def _fullmatch(regex: str, path: str) -> bool:
  try:
    return re.fullmatch(regex, path) is not None
  except re.error:
    return False  # optim.py reports the bad regex with its index
