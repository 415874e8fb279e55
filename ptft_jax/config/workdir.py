"""The workdir's saved config: `<workdir>/config.json` written, compared on resume, moved aside.

A workdir is a local path or a gs:// URL (the file helpers of ptft_jax.utils).
"""

import os
import time
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from ptft_jax.config.defaults import base_config
from ptft_jax.config.keys import suggest_key  # noqa: F401 -- kept importable from here
from ptft_jax.errors import ConfigError
from ptft_jax.utils import (
  is_remote,
  make_dirs,
  move_path,
  path_exists,
  read_json,
  write_json_atomic,
)

CONFIG_FILE = "config.json"


def to_dict(config: Any) -> Any:
  """A plain JSON-able structure (dicts, lists, scalars) from a ConfigDict."""
  if isinstance(config, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
    return {k: to_dict(v) for k, v in config.items()}
  if isinstance(config, dict):
    return {k: to_dict(v) for k, v in config.items()}
  if isinstance(config, (list, tuple)):
    return [to_dict(v) for v in config]
  return config


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
    return out
  return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def workdir_config_changes(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """What differs between `config` and the run in `workdir` ("key: old -> new" each).

  Empty when the workdir holds no run: no `config.json`, or no complete checkpoint
  (a run that failed before its first save left nothing to protect). Keys in
  `config.resumable_keys` may change.
  """
  from ptft_jax.train import checkpoint  # late: keeps this module light

  path = os.path.join(workdir, CONFIG_FILE)
  if not path_exists(path) or not checkpoint.complete_steps(workdir):
    return []
  new = to_dict(config)
  try:
    old = read_json(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path}: unreadable ({e}); it records the run in that workdir: "
                      "restore it, or use a new --workdir") from None
  allowed = set(new.get("resumable_keys", ())) | {"resumable_keys"}
  # A key added to base_config() after the run was written, and still at its default,
  # changes nothing that run did: runs written by older versions still resume.
  defaults = to_dict(base_config())
  return [c for c in _diff(old, new) if c.split(":")[0] not in allowed
          and not (c.split(": ", 1)[1].startswith("'<missing>' -> ")
                   and _at(new, c.split(":")[0]) == _at(defaults, c.split(":")[0]))]


def _at(tree, dotted: str):
  """The value at "a.b.c" in nested dicts (a stage's keys under "stages.<name>." too)."""
  keys = dotted.split(".")
  if keys[0] == "stages" and len(keys) > 2:
    keys = keys[2:]
  for key in keys:
    tree = tree.get(key, "<missing>") if isinstance(tree, dict) else "<missing>"
  return tree


def move_workdir_aside(workdir: str) -> str:
  """Renames `workdir` to `<workdir>.old-<timestamp>` (never deletes); returns the new path.

  A gs:// workdir is copied object by object and then deleted (`move_path`).
  """
  stamp = time.strftime("%Y%m%d-%H%M%S")
  base = workdir.rstrip("/" if is_remote(workdir) else os.sep)
  target = f"{base}.old-{stamp}"
  n = 1
  while path_exists(target):
    n += 1
    target = f"{base}.old-{stamp}-{n}"
  if jax.process_index() == 0:
    move_path(workdir, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("ptft_jax.move_aside")
  return target


def write_or_check_workdir_config(config: ml_collections.ConfigDict, workdir: str, *,
                                  overwrite: bool = False) -> str | None:
  """Writes `<workdir>/config.json`, or checks it equals the run already there.

  Resuming needs the same config; a different one would silently mix two
  experiments in one workdir, so it is an error (keys that may change on resume,
  like `train.steps`, are listed in `config.resumable_keys`) -- unless
  `overwrite`, which moves the old run aside (see `move_workdir_aside`) and returns where.
  """
  moved = None
  changes = workdir_config_changes(config, workdir)
  if changes and not overwrite:
    raise ConfigError(
        f"workdir {workdir} holds a run with a different config ({'; '.join(changes[:5])}); "
        "use a new --workdir, or pass --overwrite to move the old run aside")
  if changes:
    moved = move_workdir_aside(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() == 0:
    make_dirs(workdir)
    write_json_atomic(path, to_dict(config), sort_keys=True)
  return moved
