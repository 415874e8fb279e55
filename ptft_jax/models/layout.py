"""Scanned <-> looped transformer layer params (`TransformerConfig.scan_layers`).

A looped stack keeps layer i under `layer_{i}/...`; a scanned one (nn.scan) keeps
all layers under `layers/...` with a leading `[num_layers]` axis:

  layer_{i}/attention/query/kernel [hidden, hidden]  <->  layers/attention/query/kernel
                                                          [num_layers, hidden, hidden]

The functions work at any depth of a params tree (a backbone tree, a full model
tree `backbone/...`, a LoRA subtree `lora/backbone/...`): every dict holding
`layer_0 .. layer_{n-1}` (looped) or `layers` (scanned) is converted. Stacked or
split leaves stay jax arrays or numpy arrays as they came; others are untouched.

Names by layer: a stacked leaf `.../layers/<rest>` [num_layers, ...] has one row per
layer, and row k is what a looped stack calls `.../layer_{k}/<rest>`; `row_names`
gives those names, so parameter groups, presets and LoRA targets address layer k
by the same name in either layout.
"""

import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ptft_jax.errors import CheckpointError
from ptft_jax.utils import path_str

__all__ = ["is_scanned", "loop_to_scan", "looped_names", "match_layout", "row_names",
           "scan_to_loop"]

SCANNED = "layers"
_LOOPED = re.compile(r"layer_(\d+)")


def _xp(x):
  # jax arrays (possibly sharded, loaded on the devices) stay jax arrays; host arrays stay numpy.
  return jnp if isinstance(x, jax.Array) else np


def _looped_count(tree: Mapping[str, Any]) -> int:
  """n when `tree` holds exactly the looped layers layer_0 .. layer_{n-1} (else 0)."""
  found = sorted(int(m.group(1)) for k in tree if (m := _LOOPED.fullmatch(k)))
  return len(found) if found and found == list(range(len(found))) else 0


def is_scanned(params: Mapping[str, Any]) -> bool:
  """Whether any dict in `params` holds a scanned stack (`layers`)."""
  if not isinstance(params, Mapping):
    return False
  return SCANNED in params or any(is_scanned(v) for v in params.values())


def row_names(path: str, rows: int) -> tuple[str, ...] | None:
  """The looped names `.../layer_{k}/<rest>` (k < rows) of a stacked leaf `.../layers/<rest>`.

  None for a leaf outside a scanned stack (no `layers` component in `path`).
  """
  parts = path.split("/")
  if SCANNED not in parts[:-1]:
    return None
  i = parts.index(SCANNED)
  return tuple("/".join(parts[:i] + [f"layer_{k}"] + parts[i + 1:]) for k in range(rows))


def looped_names(params) -> dict[str, tuple[str, ...]]:
  """{path: names} for every leaf of `params`, in tree order: a leaf's own path, or for a
  stacked leaf `[num_layers, ...]` its rows' looped names (`row_names`)."""
  out = {}
  for key_path, leaf in jax.tree_util.tree_leaves_with_path(params):
    path = path_str(key_path)
    names = row_names(path, int(np.shape(leaf)[0])) if np.ndim(leaf) else None
    out[path] = names if names is not None else (path,)
  return out


def _stack(tree: Mapping[str, Any], n: int) -> dict:
  layers = [tree[f"layer_{i}"] for i in range(n)]
  structures = {jax.tree_util.tree_structure(t) for t in layers}
  if len(structures) > 1:
    raise CheckpointError(f"layer_0 .. layer_{n - 1} do not all hold the same params; "
                          "they cannot be stacked into a scanned `layers`")
  out = {k: v for k, v in tree.items() if not _LOOPED.fullmatch(k)}
  out[SCANNED] = jax.tree_util.tree_map(lambda *xs: _xp(xs[0]).stack(xs), *layers)
  return out


def _unstack(tree: Mapping[str, Any], num_layers: int | None) -> dict:
  leaves = jax.tree_util.tree_leaves(tree[SCANNED])
  rows = {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in leaves}
  n = num_layers if num_layers is not None else next(iter(rows), 0)
  if rows != {n}:
    raise CheckpointError(f"scanned `layers` params have leading axes {sorted(rows)}, "
                          f"expected [{n}] (num_layers)")
  out = {k: v for k, v in tree.items() if k != SCANNED}
  for i in range(n):
    out[f"layer_{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[i], tree[SCANNED])
  return out


def loop_to_scan(params: Mapping[str, Any]) -> dict:
  """`layer_{i}/...` subtrees stacked into `layers/...` ([num_layers] leading axis)."""
  if not isinstance(params, Mapping):
    return params
  n = _looped_count(params)
  tree = _stack(params, n) if n else dict(params)
  return {k: v if k == SCANNED and n else loop_to_scan(v) for k, v in tree.items()}


def scan_to_loop(params: Mapping[str, Any], num_layers: int | None = None) -> dict:
  """`layers/...` split along its leading axis into `layer_{i}/...`, i < num_layers.

  `num_layers` (None: the leading axis) is checked against every stacked leaf.
  """
  if not isinstance(params, Mapping):
    return params
  if SCANNED in params:
    out = _unstack(params, num_layers)
    return {k: v if _LOOPED.fullmatch(k) else scan_to_loop(v, num_layers)
            for k, v in out.items()}
  return {k: scan_to_loop(v, num_layers) for k, v in params.items()}


def match_layout(source: Mapping[str, Any], target: Mapping[str, Any]) -> dict:
  """`source` with each layer stack in the layout of `target`'s stack at the same path.

  For loading a checkpoint into a model of the other layout: a looped source is
  stacked where the target has `layers`, a scanned one split where the target has
  `layer_{i}`. Everything else (and paths absent from `target`) stays as it is.
  """
  if not isinstance(source, Mapping) or not isinstance(target, Mapping):
    return source
  out = dict(source)
  if SCANNED in target and SCANNED not in source and _looped_count(source):
    out = _stack(source, _looped_count(source))
  elif SCANNED in source and SCANNED not in target and _looped_count(target):
    out = _unstack(source, None)  # a depth mismatch is then a shape error in the transfer
  return {k: match_layout(v, target[k]) if k in target and k != SCANNED else v
          for k, v in out.items()}
