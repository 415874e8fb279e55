"""Orbax checkpoints: save / resume the train state, and transfer parameters between runs.

A checkpoint step directory holds separate items so that each reader takes only
what it needs:
  params  {"params", "model_state"}   what transfer and prediction load
  train   {"step", "opt_state", "rng"}  what only an exact resume needs
  data    the Grain iterator state      (the next batch after resume is the same)
  meta    JSON: step, model name, task  (human-readable)

Saves are asynchronous and committed atomically by Orbax (a step directory is
only listed once complete). Restores always take explicit target shardings, so
a checkpoint saved on one topology restores on another.
"""

import os
import re
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from ptft_jax.errors import CheckpointError
from ptft_jax.optim import tree_paths

CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def _handlers() -> dict[str, Any]:
  return {
      "params": ocp.StandardCheckpointHandler(),
      "train": ocp.StandardCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler(),
      "data": grain.checkpoint.CheckpointHandler(),
  }


def make_manager(workdir: str, *, max_to_keep: int = 3, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax CheckpointManager over `<workdir>/checkpoints` keeping the latest `max_to_keep`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options, item_handlers=_handlers())


def save(manager: ocp.CheckpointManager, state: dict, *, data_iterator=None,
         meta: dict | None = None, force: bool = False) -> bool:
  """Starts an async save of `state` (a train-state dict) at `state["step"]`."""
  step = int(jax.device_get(state["step"]))
  items = {
      "params": ocp.args.StandardSave(
          {"params": state["params"], "model_state": state["model_state"]}),
      "train": ocp.args.StandardSave(
          {"step": state["step"], "opt_state": state["opt_state"], "rng": state["rng"]}),
      "meta": ocp.args.JsonSave({"step": step, **(meta or {})}),
  }
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def abstract(tree) -> Any:
  """ShapeDtypeStructs with shardings: the restore target for a live tree."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore(manager: ocp.CheckpointManager, state: dict, *, step: int | None = None,
            data_iterator=None) -> dict:
  """Restores the full train state (and the data iterator in place) into `state`'s shardings."""
  step = manager.latest_step() if step is None else step
  items = {
      "params": ocp.args.StandardRestore(abstract(
          {"params": state["params"], "model_state": state["model_state"]})),
      "train": ocp.args.StandardRestore(abstract(
          {"step": state["step"], "opt_state": state["opt_state"], "rng": state["rng"]})),
  }
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**items))
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(
        f"cannot resume from {manager.directory}/{step}: it does not match this model/optimizer "
        f"({str(e).splitlines()[0][:300]}); use a new --workdir") from None
  return {**restored["params"], **restored["train"]}


def load_params(workdir: str, *, step: int | None = None, sharding=None) -> tuple[dict, int]:
  """Reads `{"params", "model_state"}` of a run's latest (or given) step onto `sharding`."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise CheckpointError(
        f"no checkpoints in {workdir!r} (expected {directory}); "
        "check config.init.pretrained_workdir")
  manager = make_manager(workdir, read_only=True)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f"no complete checkpoint under {directory}")
  try:
    metadata = manager.item_metadata(step)["params"]
  except Exception as e:  # noqa: BLE001 -- any failure here means an unreadable checkpoint
    raise CheckpointError(f"cannot read checkpoint {directory}/{step}: {e}") from None
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding), metadata)
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target)))
  manager.close()
  return restored["params"], step


def _flat(tree) -> dict[str, Any]:
  return dict(zip(jax.tree_util.tree_leaves(tree_paths(tree)), jax.tree_util.tree_leaves(tree),
                  strict=True))


def transfer(
    target: dict, source: dict, *, load: Sequence[str] = (r"backbone/.*",),
    skip: Sequence[str] = (r"heads/.*",),
) -> tuple[dict, dict[str, list[str]]]:
  """Copies leaves of `source` into `target` for paths matching `load` and not `skip`.

  Both are `{"params": ..., "model_state": ...}` trees. Returns (new target,
  report) where report lists "loaded", "initialized" (in target, not loaded)
  and "ignored" (in source, not used). Any loaded path whose shape differs is
  collected, and all of them are raised together in one CheckpointError.
  """
  want = lambda p: any(re.fullmatch(r, p) for r in load) and not any(
      re.fullmatch(r, p) for r in skip)
  src = _flat(source)
  loaded, initialized, mismatched = [], [], []
  paths = tree_paths(target)

  def pick(path, leaf):
    # Patterns apply to the path inside its collection ("backbone/...", not
    # "params/backbone/..." or "model_state/batch_stats/backbone/..."), so one
    # pattern covers params and batch stats.
    top, _, inner = path.partition("/")
    if top == "model_state":
      inner = inner.split("/", 1)[-1]
    if want(inner) and path in src:
      value = src[path]
      if tuple(value.shape) != tuple(leaf.shape):
        mismatched.append(f"{path}: checkpoint {tuple(value.shape)} vs model {tuple(leaf.shape)}")
        return leaf
      loaded.append(path)
      return jax.device_put(np.asarray(value, dtype=leaf.dtype), leaf.sharding)
    initialized.append(path)
    return leaf

  new = jax.tree_util.tree_map(pick, paths, target)
  if mismatched:
    raise CheckpointError(
        f"{len(mismatched)} parameter shape mismatch(es) in transfer: " + "; ".join(mismatched))
  ignored = sorted(set(src) - set(loaded))
  return new, {"loaded": sorted(loaded), "initialized": sorted(initialized), "ignored": ignored}


def format_report(report: dict[str, list[str]]) -> str:
  lines = []
  for key in ("loaded", "initialized", "ignored"):
    paths = report[key]
    lines.append(f"  {key} ({len(paths)}): " + (", ".join(paths) if paths else "-"))
  return "\n".join(lines)


def save_pretrained(workdir: str, params: dict, *, config: dict | None = None,
                    model_state: dict | None = None, step: int = 0) -> str:
  """Writes `params` as a params-only checkpoint that fine-tuning can name as its pretrained run.

  Used for imported weights (e.g. Hugging Face BERT). Refuses to write into a
  workdir that already holds checkpoints, so nothing earlier is overwritten.
  """
  manager = make_manager(workdir, max_to_keep=1, async_save=False)
  if manager.latest_step() is not None:
    raise CheckpointError(
        f"{checkpoint_dir(workdir)} already holds checkpoints; choose an empty --workdir")
  items = {
      "params": ocp.args.StandardSave({"params": params, "model_state": model_state or {}}),
      "meta": ocp.args.JsonSave({"step": step, "imported": True, "model_config": config or {}}),
  }
  manager.save(step, args=ocp.args.Composite(**items))
  manager.wait_until_finished()
  manager.close()
  return checkpoint_dir(workdir)
