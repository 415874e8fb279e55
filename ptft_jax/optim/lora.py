"""LoRA adapters as a parameter-tree transformation (no module surgery).

For every kernel whose path fullmatches `config.lora.targets` (Dense kernels
[in, out], attention projections, and conv kernels [kh, kw, in, out] flattened
to [kh * kw * in, out]) the params get two extra leaves beside the base tree:

  lora/<kernel path>/a   [prod(kernel.shape[:-1]), rank]   N(0, 1 / fan_in)
  lora/<kernel path>/b   [rank, kernel.shape[-1]]          zeros

and the model always runs on `merge_lora(params, alpha)`, whose kernels are
`W + (alpha / rank) * (a @ b).reshape(W.shape)` and which has no `lora` subtree.

A stacked kernel of a scanned transformer stack (`layers/...` [num_layers, in, out])
gets one adapter per layer, stacked like it:

  lora/<kernel path>/a   [num_layers, in, rank]   layer k's a, as looped `layer_{k}` gets
  lora/<kernel path>/b   [num_layers, rank, out]

`targets` is matched against each layer's looped name (`.../layer_{k}/...`, see
`models.layout.row_names`) or the stacked path, and the same seed draws the
same `a` for layer k in either layout, so `models.layout` converts adapters
like any other params and scanned LoRA trains as looped LoRA does. Adapters
written before this (`a` [num_layers * in, rank] with one `b` shared by the
layers) still merge.
The train step applies the merge inside the differentiated loss, so gradients
reach `a` and `b`; with `b = 0` step 0 is exactly the base model. This works for
every model family because it never touches a module. The `lora` strategy
freezes `backbone/.*` (no optimizer state for the base) and trains adapters
and heads.

Export: everything a run writes for others to read (`<workdir>/merged/`, the
best checkpoint) holds merged, plain params; the run's own checkpoints keep
the adapters so it resumes exactly.
"""

import os
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ptft_jax.errors import CheckpointError, ConfigError
from ptft_jax.models import layout
from ptft_jax.utils import flat_paths, read_json, tree_paths

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

  Raises ConfigError when `rank` < 1, `targets` matches no kernel of 2+ dims (per
  layer), or only some layers of a stacked kernel.
  """
  if rank < 1:
    raise ConfigError(f"config.lora.rank={rank}: use a rank >= 1 (0 turns LoRA off)")
  looped = layout.looped_names(params)
  chosen = []  # (path, kernel, looped names of its rows or None)
  for path, x in flat_paths(params).items():
    names = looped[path]
    stacked = names != (path,)
    if path.startswith(f"{LORA}/") or jnp.ndim(x) < 2 + stacked:
      continue
    hits = [bool(re.fullmatch(targets, n)) for n in names]
    if re.fullmatch(targets, path) or all(hits):
      chosen.append((path, x, names if stacked else None))
    elif any(hits):
      raise ConfigError(
          f"config.lora.targets={targets!r} matches some layers of the stacked kernel {path} "
          f"[num_layers, ...] but not others; target all of its layers or none, or set "
          "config.model.scan_layers=False")
  if not chosen:
    kernels = [p for p in looped if p.endswith("/kernel")][:3]
    raise ConfigError(
        f"config.lora.targets={targets!r} matches no kernel with 2+ dims "
        f"(kernels look like {kernels})")
  # Layer k's `a` is drawn from the index its looped kernel has in tree order, so a scanned
  # stack gets the adapters the looped one would.
  looped_order = sorted((n for p, _, names in chosen for n in (names or (p,))),
                        key=lambda n: n.split("/"))
  index = {n: i for i, n in enumerate(looped_order)}

  def draw(name: str, kernel_shape, dtype):
    fan_in = 1
    for d in kernel_shape[:-1]:
      fan_in *= int(d)
    a = jax.random.normal(jax.random.fold_in(rng, index[name]), (fan_in, rank), jnp.float32)
    return (a / jnp.sqrt(fan_in)).astype(dtype)

  adapters: dict = {}
  for path, kernel, names in chosen:
    if names is None:
      a = draw(path, kernel.shape, kernel.dtype)
      b = jnp.zeros((rank, kernel.shape[-1]), kernel.dtype)
    else:
      a = jnp.stack([draw(n, kernel.shape[1:], kernel.dtype) for n in names])
      b = jnp.zeros((len(names), rank, kernel.shape[-1]), kernel.dtype)
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
    # [in, rank] @ [rank, out], or per layer [L, in, rank] @ [L, rank, out] for a stacked kernel
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
    alpha = float(read_json(path)["lora"]["alpha"])
  except (OSError, KeyError, TypeError, ValueError):
    raise CheckpointError(
        f"{workdir} holds LoRA adapters but {path} gives no lora.alpha to merge them; "
        f"load {os.path.join(workdir, 'merged')} instead") from None
  return merge_lora(params, alpha)
