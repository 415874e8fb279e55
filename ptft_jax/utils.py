"""Small helpers used across packages: one helper per small job.

Imports nothing from ptft_jax, so every package may import it.
"""

import json
import os
from typing import Any

import jax


def path_str(path) -> str:
  """'backbone/layer_0/kernel' for a jax key path (dict keys, attribute names, indices)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def tree_paths(tree) -> Any:
  """A tree of the same structure whose leaves are their own path strings."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def flat_paths(tree) -> dict[str, Any]:
  """{"a/b/0/c": leaf} for every leaf of `tree`, in tree order."""
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten_paths(flat: dict[str, Any]) -> dict:
  """{"a/b/c": v} -> {"a": {"b": {"c": v}}}: the inverse of `flat_paths` for dict trees."""
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` atomically: a crash leaves the old file or the new one, never half."""
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json_atomic(path: str, obj, *, sort_keys: bool = False) -> None:
  """Writes `obj` as indented JSON to `path` atomically (see `write_text_atomic`)."""
  write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=sort_keys))
