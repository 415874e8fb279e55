"""LoRA adapters as a parameter-tree transformation (no module surgery).

For every kernel whose path fullmatches `config.lora.targets` (Dense kernels
[in, out], attention projections, and conv kernels [kh, kw, in, out] flattened
to [kh * kw * in, out]) the params get two extra leaves beside the base tree:

  lora/<kernel path>/a   [prod(kernel.shape[:-1]), rank]   N(0, 1 / fan_in)
  lora/<kernel path>/b   [rank, kernel.shape[-1]]          zeros

and the model always runs on `merge_lora(params, alpha)`, whose kernels are
`W + (alpha / rank) * (a @ b).reshape(W.shape)` and which has no `lora` subtree.
The train step applies the merge inside the differentiated loss, so gradients
reach `a` and `b`; with `b = 0` step 0 is exactly the base model. This works for
every model family because it never touches a module. The `lora` strategy
freezes `backbone/.*` (no optimizer state for the base) and trains adapters
and heads.

Export: everything a run writes for others to read (`<workdir>/merged/`, the
best checkpoint) holds merged, plain params; the run's own checkpoints keep
the adapters so it resumes exactly.
"""

import json
import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ptft_jax.errors import CheckpointError, ConfigError
from ptft_jax.utils import tree_paths

LORA = "lora"


def _set(tree: dict, keys: list[str], value) -> None:
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


def _get(tree, keys: list[str]):
  for k in keys:
    tree = tree[k]
  return tree


def add_adapters(params: dict, rng: jax.Array, *, rank: int, targets: str) -> dict:
  """Returns `params` plus a `lora` subtree with (a, b) for each kernel matching `targets`.

  Raises ConfigError when `rank` < 1 or `targets` matches no kernel of 2+ dims.
  """
  if rank < 1:
    raise ConfigError(f"config.lora.rank={rank}: use a rank >= 1 (0 turns LoRA off)")
  flat = jax.tree_util.tree_leaves_with_path(params)
  paths = jax.tree_util.tree_leaves(tree_paths(params))
  chosen = [(p, x) for p, (_, x) in zip(paths, flat, strict=True)
            if re.fullmatch(targets, p) and jnp.ndim(x) >= 2 and not p.startswith(f"{LORA}/")]
  if not chosen:
    kernels = [p for p in paths if p.endswith("/kernel")][:3]
    raise ConfigError(
        f"config.lora.targets={targets!r} matches no kernel with 2+ dims "
        f"(kernels look like {kernels})")
  adapters: dict = {}
  for i, (path, kernel) in enumerate(chosen):
    fan_in = 1
    for d in kernel.shape[:-1]:
      fan_in *= int(d)
    a = jax.random.normal(jax.random.fold_in(rng, i), (fan_in, rank), jnp.float32)
    a = (a / jnp.sqrt(fan_in)).astype(kernel.dtype)
    b = jnp.zeros((rank, kernel.shape[-1]), kernel.dtype)
    _set(adapters, path.split("/"), {"a": a, "b": b})
  return {**params, LORA: adapters}


def adapter_paths(params) -> list[str]:
  """Paths of the base kernels that carry adapters in `params`."""
  if LORA not in params:
    return []
  paths = jax.tree_util.tree_leaves(tree_paths(params[LORA]))
  return sorted({p.rsplit("/", 1)[0] for p in paths})


def merge_lora(params: dict, alpha: float) -> dict:
  """Folds the adapters into their kernels: W + (alpha / rank) * a @ b; drops `lora`.

  Pure and jit-able; a no-op when `params` has no `lora` subtree.
  """
  if LORA not in params:
    return params
  merged = {k: v for k, v in params.items() if k != LORA}
  merged = jax.tree_util.tree_map(lambda x: x, merged)  # fresh dicts we may write into
  for path in adapter_paths(params):
    keys = path.split("/")
    ab = _get(params[LORA], keys)
    kernel = _get(merged, keys)
    rank = ab["a"].shape[-1]
    delta = (ab["a"].astype(jnp.float32) @ ab["b"].astype(jnp.float32)) * (alpha / rank)
    _set(merged, keys, (kernel.astype(jnp.float32) + delta.reshape(kernel.shape)).astype(
        kernel.dtype))
  return merged


def settings(config: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """{"rank", "alpha", "targets"} from `config.lora`, or None when LoRA is off."""
  lc = config.get("lora", None)
  if not lc or int(lc.get("rank", 0)) == 0:
    if config.optim.get("strategy", {}) and config.optim.strategy.get("name") == "lora":
      raise ConfigError("config.optim.strategy.name='lora' needs config.lora.rank >= 1")
    return None
  return {"rank": int(lc.rank), "alpha": float(lc.get("alpha", lc.rank)),
          "targets": lc.get("targets", r"backbone/.*/kernel")}


def merge_loaded(params: dict, workdir: str) -> dict:
  """Merges the adapters of params loaded from `workdir` using that run's config.json alpha.

  For transfer from a LoRA run's own checkpoints (`<run>/merged` and
  `<run>/best` are merged already and pass through unchanged).
  """
  if LORA not in params:
    return params
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      alpha = float(json.load(f)["lora"]["alpha"])
  except (OSError, KeyError, TypeError, ValueError):
    raise CheckpointError(
        f"{workdir} holds LoRA adapters but {path} gives no lora.alpha to merge them; "
        f"load {os.path.join(workdir, 'merged')} instead") from None
  return merge_lora(params, alpha)
