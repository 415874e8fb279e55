"""Orbax checkpoints: save / resume the train state, and transfer parameters between runs.

A checkpoint step directory holds separate items so that each reader takes only
what it needs:
  params  {"params", "model_state"}   what transfer and prediction load
  train   {"step", "opt_state", "rng"}  what only an exact resume needs
  data    the Grain iterator state      (the next batch after resume is the same)
  meta    JSON: step, model name, task  (human-readable)

Saves are asynchronous and committed atomically by Orbax: a step is written to
`<step>.orbax-checkpoint-tmp*`, gets `commit_success.txt`, and is renamed to
`<step>` (on gs://, which has no atomic rename, Orbax writes `<step>` directly and
`commit_success.txt` last). Only steps holding `commit_success.txt` count as complete
(`complete_steps`); a writable manager first removes what a kill left behind (a
tmp directory, or a step that an interrupted cleanup half deleted). A failure of
the background commit surfaces as a CheckpointError at the next `save` or `wait`.
Restores always take explicit target shardings, so a checkpoint saved on one
topology restores on another.
"""

import os
import re
from collections.abc import Sequence
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ptft_jax.errors import CheckpointError, ConfigError
from ptft_jax.utils import (
  absolute_path,
  flat_paths,
  is_dir,
  is_file,
  list_dir,
  path_str,
  remove_tree,
  tree_paths,
  unflatten_paths,
)

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"  # <workdir>/best: the best validation checkpoint (early_stopping.py)
COMMIT_FILE = "commit_success.txt"  # Orbax writes it last, before the atomic rename
TMP_MARK = ".orbax-checkpoint-tmp"


def checkpoint_dir(workdir: str) -> str:
  """`<workdir>/checkpoints`, absolute (a gs:// workdir as it is)."""
  return os.path.join(absolute_path(workdir), CHECKPOINT_DIR)


def complete_steps(workdir: str) -> list[int]:
  """Steps of `<workdir>/checkpoints` that Orbax finished committing, ascending."""
  directory = checkpoint_dir(workdir)
  if not is_dir(directory):
    return []
  return sorted(int(n) for n in list_dir(directory)
                if n.isdigit() and is_file(os.path.join(directory, n, COMMIT_FILE)))


def remove_incomplete(workdir: str) -> list[str]:
  """Deletes unfinished saves under `<workdir>/checkpoints`; returns their names.

  These are `*.orbax-checkpoint-tmp*` directories (a save killed before its
  commit) and step directories without `commit_success.txt` (a deletion of an
  old step killed half way). Neither is ever read as a checkpoint.
  """
  directory = checkpoint_dir(workdir)
  if jax.process_index() != 0 or not is_dir(directory):
    return []
  removed = []
  for name in sorted(list_dir(directory)):
    path = os.path.join(directory, name)
    partial = name.isdigit() and not is_file(os.path.join(path, COMMIT_FILE))
    if (TMP_MARK in name or partial) and is_dir(path):
      remove_tree(path)
      removed.append(name)
  return removed


def _one_cpu_process() -> bool:
  return jax.process_count() == 1 and jax.default_backend() == "cpu"


def _array_handler_registry() -> ocp.type_handlers.TypeHandlerRegistry | None:
  """Orbax's standard type handlers, jax.Array without replica-parallel writes; None: default.

  By default Orbax splits each replicated array into one slice per replica so that every
  device copies only its slice to the host (a `jit(slice)` program per slice shape). That
  helps on accelerators and across hosts, but in one process on the CPU backend every
  device's memory is the same host memory: the slices save no copy and only cost compiles
  (on 8 simulated CPU devices ~110 of a run's ~130 compilations, mostly in the tests).
  There one replica writes each shard whole. Only how a save is split changes (the
  chunking of the files follows the shard, not the slice); every reader reads both. The
  registry is ptft_jax's own: Orbax's global one, which user code shares, is not touched.
  Multi-process runs and accelerators keep Orbax's default (None).
  """
  if not _one_cpu_process():
    return None
  from orbax.checkpoint._src.metadata import array_metadata_store  # as Orbax's default

  th = ocp.type_handlers
  standard = [(ty, th.get_type_handler(ty)) for ty in th.supported_types()]
  return th.create_type_handler_registry(*standard, (jax.Array, th.ArrayHandler(
      use_replica_parallel=False, array_metadata_store=array_metadata_store.Store())))


def _standard_handler(registry) -> ocp.StandardCheckpointHandler:
  """A StandardCheckpointHandler over `registry` (None: Orbax's global registry).

  StandardCheckpointHandler takes no registry; its PyTreeCheckpointHandler is replaced by
  one made with the same arguments and `registry`. The handler keeps its class, so the
  checkpoint records the same handler type as before and plain Orbax reads it.
  """
  handler = ocp.StandardCheckpointHandler()
  if registry is not None and isinstance(getattr(handler, "_impl", None),
                                         ocp.PyTreeCheckpointHandler):
    handler._impl = ocp.PyTreeCheckpointHandler(  # StandardCheckpointHandler's defaults
        save_concurrent_gb=96, restore_concurrent_gb=96, use_ocdbt=True,
        type_handler_registry=registry)
  return handler


def _handlers() -> dict[str, Any]:
  registry = _array_handler_registry()
  return {
      "params": _standard_handler(registry),
      "train": _standard_handler(registry),
      "meta": ocp.JsonCheckpointHandler(),
      "data": grain.checkpoint.CheckpointHandler(),
  }


def make_manager(workdir: str, *, max_to_keep: int = 3, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax CheckpointManager over `<workdir>/checkpoints` keeping the latest `max_to_keep`.

  A writable manager starts by removing unfinished saves (`remove_incomplete`).
  """
  if not read_only:
    remove_incomplete(workdir)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("ptft_jax.remove_incomplete")
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, enable_async_checkpointing=async_save, read_only=read_only,
      create=not read_only)
  return ocp.CheckpointManager(
      checkpoint_dir(workdir), options=options, item_handlers=_handlers())


def save(manager: ocp.CheckpointManager, state: dict, *, data_iterator=None,
         meta: dict | None = None, force: bool = False) -> bool:
  """Starts an async save of `state` (a train-state dict) at `state["step"]`."""
  step = int(jax.device_get(state["step"]))
  if _one_cpu_process():
    # Without replica-parallel slices (`_array_handler_registry`) Orbax's host copy of a CPU
    # shard is a view of the device buffer, held until the background write ends, so the
    # next train step could not donate the state. One device copy, made here without
    # compiling anything, is what the slices (or the step's undonated input) would cost.
    state = jax.tree_util.tree_map(
        lambda x: jax.device_put(x, may_alias=False) if isinstance(x, jax.Array) else x, state)
  items = {
      "params": ocp.args.StandardSave(
          {"params": state["params"], "model_state": state["model_state"]}),
      "train": ocp.args.StandardSave(
          {"step": state["step"], "opt_state": state["opt_state"], "rng": state["rng"]}),
      "meta": ocp.args.JsonSave({"step": step, **(meta or {})}),
  }
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
  try:  # also raises what an earlier save's background commit left
    return manager.save(step, args=ocp.args.Composite(**items), force=force)
  except Exception as e:  # noqa: BLE001 -- any failure means the checkpoint is not saved
    raise _save_failed(manager, e) from e


def wait(manager: ocp.CheckpointManager):
  """Waits for the async save in flight; a failed commit raises CheckpointError."""
  try:
    manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001
    raise _save_failed(manager, e) from e


def _save_failed(manager: ocp.CheckpointManager, e: BaseException) -> CheckpointError:
  steps = complete_steps(os.path.dirname(str(manager.directory)))
  latest = f"step {steps[-1]}" if steps else "none"
  return CheckpointError(
      f"saving a checkpoint in {manager.directory} failed ({type(e).__name__}: "
      f"{_first_line(e)}); it is not saved; the latest complete checkpoint: {latest}")


def _first_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return lines[0][:300] if lines else type(e).__name__


def abstract(tree) -> Any:
  """ShapeDtypeStructs with shardings: the restore target for a live tree."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def restore(manager: ocp.CheckpointManager, state: dict, *, step: int | None = None,
            data_iterator=None) -> dict:
  """Restores the full train state (and the data iterator in place) into `state`'s shardings.

  A checkpoint of another model or optimizer raises one CheckpointError that lists
  every differing path with both shapes; unreadable files raise CheckpointError too.
  """
  step = manager.latest_step() if step is None else step
  where = f"{manager.directory}/{step}"
  targets = {
      "params": {"params": state["params"], "model_state": state["model_state"]},
      "train": {"step": state["step"], "opt_state": state["opt_state"], "rng": state["rng"]},
  }
  metadata = _read_metadata(manager, step)
  diffs = []
  for item, target in targets.items():
    if metadata.get(item) is None:
      raise CheckpointError(f"cannot resume from {where}: it has no {item!r} item (a "
                            "params-only checkpoint, e.g. imported weights?); use a new --workdir")
    diffs += _shape_diffs(_shapes(metadata[item]), _shapes(target))
  if diffs:
    raise CheckpointError(
        f"cannot resume from {where}: it holds another model or optimizer ({len(diffs)} "
        f"difference(s): {'; '.join(diffs)}); use a new --workdir")
  items = {k: ocp.args.StandardRestore(abstract(t)) for k, t in targets.items()}
  position = None  # the data position, set by hand: saved by another process count
  if data_iterator is not None:
    position = _other_count_position(manager, step, data_iterator)
    if position is None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  restored = _restore(manager, step, items)
  if position is not None:
    data_iterator.set_state(position)
  return {**restored["params"], **restored["train"]}


def _other_count_position(manager: ocp.CheckpointManager, step: int, data_iterator):
  """The data position of a checkpoint saved by another process count, or None.

  Grain writes one `process_<i>-of-<n>.json` per process. If this run's file is
  there (or none is), None: Orbax restores as usual. Otherwise an in-memory
  iterator (a Grain DatasetIterator whose state is only its global batch position,
  the same on every process) takes that position; a Grain DataLoader's state is
  per process and cannot be re-split, so that raises one CheckpointError.
  """
  from etils import epath

  directory = epath.Path(str(manager.directory)) / str(step) / "data"
  count = jax.process_count()
  try:
    names = [p.name for p in directory.iterdir()] if directory.exists() else []
  except OSError:
    return None  # unreadable: Orbax's restore reports it
  if f"process_{jax.process_index()}-of-{count}.json" in names:
    return None
  counts = sorted({int(m.group(1)) for n in names
                   if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", n))})
  if not counts:
    return None
  where = f"{manager.directory}/{step}"
  saved = counts[0]
  if isinstance(data_iterator, grain.DatasetIterator):
    import json

    states = []
    for i in range(saved):
      try:
        states.append(json.loads((directory / f"process_{i}-of-{saved}.json").read_text()))
      except (OSError, ValueError) as e:
        raise _corrupt(where, e) from None
    if all(s == states[0] for s in states) and set(states[0]) == set(data_iterator.get_state()):
      return states[0]
  raise CheckpointError(
      f"cannot resume from {where}: its data position was saved by {saved} process(es) and "
      f"this run has {count}, and this run's data pipeline (a Grain DataLoader) keeps one "
      f"position per process; resume with {saved} process(es), or use a new --workdir")


def _corrupt(where: str, e: BaseException) -> CheckpointError:
  return CheckpointError(
      f"cannot read checkpoint {where}: {type(e).__name__}: {_first_line(e)[:160]}; its files are "
      "corrupt or incomplete (move that step directory away to use an earlier one)")


def _read_metadata(manager: ocp.CheckpointManager, step: int) -> dict:
  try:
    return dict(manager.item_metadata(step).items())
  except Exception as e:  # noqa: BLE001 -- unreadable metadata is a corrupt checkpoint
    raise _corrupt(f"{manager.directory}/{step}", e) from None


def _restore(manager: ocp.CheckpointManager, step: int, items: dict) -> dict:
  try:
    return manager.restore(step, args=ocp.args.Composite(**items))
  except Exception as e:  # noqa: BLE001 -- shapes were checked: what is left is bad files
    raise _corrupt(f"{manager.directory}/{step}", e) from None


def _shapes(tree) -> dict[str, tuple]:
  """{"a/b/0/c": shape} for a live tree or an Orbax metadata tree (same path names)."""
  tree = getattr(tree, "tree", tree)  # orbax TreeMetadata wraps the tree
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_str(path): tuple(leaf.shape) for path, leaf in leaves}


def _shape_diffs(saved: dict[str, tuple], want: dict[str, tuple]) -> list[str]:
  out = [f"{p}: checkpoint {saved[p]} vs model {want[p]}"
         for p in sorted(set(saved) & set(want)) if saved[p] != want[p]]
  out += [f"{p}: not in checkpoint, model {want[p]}" for p in sorted(set(want) - set(saved))]
  out += [f"{p}: checkpoint {saved[p]}, not in model" for p in sorted(set(saved) - set(want))]
  return out


def load_params(workdir: str, *, step: int | None = None, sharding=None) -> tuple[dict, int]:
  """Reads `{"params", "model_state"}` of the latest complete (or given) step.

  Each leaf is read straight into its target sharding (Orbax reads on every
  device only that device's slice), never whole onto one device first.

  Args:
    workdir: a run (or `<run>/best`, or an imported pretrained workdir).
    step: a complete step; the latest when None.
    sharding: where the leaves go: None (the first local device), one
      `jax.sharding.Sharding` for every leaf, an object with a `shardings(tree)`
      method (a `parallel.sharding.Layout`: by parameter path and the rules), or
      a function `(path "params/backbone/...", jax.ShapeDtypeStruct) -> Sharding`.
  """
  directory = checkpoint_dir(workdir)
  if not is_dir(directory):
    raise CheckpointError(
        f"no checkpoints in {workdir!r} (expected {directory}); "
        "check config.init.pretrained_workdir")
  steps = complete_steps(workdir)
  if step is None and not steps:
    raise CheckpointError(f"no complete checkpoint under {directory}")
  step = steps[-1] if step is None else step
  manager = make_manager(workdir, read_only=True)
  try:
    metadata = _read_metadata(manager, step).get("params")
    if metadata is None:
      raise CheckpointError(f"checkpoint {directory}/{step} has no readable 'params' item "
                            "(corrupt, or not a ptft_jax checkpoint)")
    shapes = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), getattr(metadata, "tree",
                                                                         metadata))
    shardings = target_shardings(shapes, sharding)
    target = jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)
    restored = _restore(manager, step, {"params": ocp.args.StandardRestore(target)})
  finally:
    manager.close()
  return restored["params"], step


def target_shardings(shapes, sharding=None) -> Any:
  """A Sharding per leaf of `shapes` (ShapeDtypeStructs); `sharding` as in `load_params`."""
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  if isinstance(sharding, jax.sharding.Sharding):
    return jax.tree_util.tree_map(lambda _: sharding, shapes)
  if hasattr(sharding, "shardings"):
    return sharding.shardings(shapes)
  return jax.tree_util.tree_map_with_path(lambda p, x: sharding(path_str(p), x), shapes)


def transfer(
    target: dict, source: dict, *, load: Sequence[str] = (r"backbone/.*",),
    skip: Sequence[str] = (r"heads/.*",),
) -> tuple[dict, dict[str, list[str]]]:
  """Copies leaves of `source` into `target` for paths matching `load` and not `skip`.

  Both are `{"params": ..., "model_state": ...}` trees. Returns (new target,
  report) where report lists "loaded", "initialized" (in target, not loaded),
  "ignored" (in source, not used) and "resized" (loaded after
  `ptft_jax.models.resize_for_transfer` adapted their shape: a ViT's position
  embeddings resampled to the model's image size). Any other loaded path whose
  shape differs is collected, and all of them are raised together in one
  CheckpointError.
  """
  from ptft_jax.models import resize_for_transfer  # late: checkpoint loads without flax models

  want = lambda p: any(re.fullmatch(r, p) for r in load) and not any(
      re.fullmatch(r, p) for r in skip)
  src = flat_paths(source)
  loaded, initialized, mismatched, resized = [], [], [], []
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
        adapted = resize_for_transfer(inner, value, tuple(leaf.shape))
        if adapted is None:
          mismatched.append(
              f"{path}: checkpoint {tuple(value.shape)} vs model {tuple(leaf.shape)}")
          return leaf
        value = adapted
        resized.append(f"{path}: {tuple(src[path].shape)} -> {tuple(leaf.shape)}")
      loaded.append(path)
      # A jax.Array source (loaded in its target sharding) moves device to device; only a
      # host (numpy) source is copied from the host.
      if not isinstance(value, jax.Array):
        value = np.asarray(value)
      if value.dtype != leaf.dtype:
        value = value.astype(leaf.dtype)
      return jax.device_put(value, leaf.sharding)
    initialized.append(path)
    return leaf

  new = jax.tree_util.tree_map(pick, paths, target)
  if mismatched:
    raise CheckpointError(
        f"{len(mismatched)} parameter shape mismatch(es) in transfer: " + "; ".join(mismatched))
  ignored = sorted(set(src) - set(loaded))
  return new, {"loaded": sorted(loaded), "initialized": sorted(initialized), "ignored": ignored,
               "resized": sorted(resized)}


def format_report(report: dict[str, list[str]]) -> str:
  """`transfer`'s report in a few lines: each status as the largest subtrees that hold it.

  `prefix/**` stands for every leaf under `prefix` (with its leaf count when the
  line names several groups). A prefix below the collection and module level
  (`params/backbone/layer_3`, not `params/backbone`) whose leaves differ in status
  is unexpected: its leaves are named one by one and a last line names the prefix.
  The full lists stay in `<workdir>/transfer_report.json`.
  """
  loaded = dict.fromkeys(report["loaded"], "loaded")
  # Two trees: the model's leaves are loaded or initialized, the source's loaded or ignored.
  groups, partial = _status_groups(loaded | dict.fromkeys(report["initialized"], "initialized"))
  source_groups, source_partial = _status_groups(loaded | dict.fromkeys(report["ignored"],
                                                                        "ignored"))
  groups["ignored"] = source_groups.get("ignored", [])
  lines = []
  for key in ("loaded", "initialized", "ignored"):
    items = groups.get(key, [])
    labels = [label if n == 1 else f"{label}/**" + (f" ({n})" if len(items) > 1 else "")
              for label, n in items]
    lines.append(f"  {key} {len(report[key])}" + (": " + ", ".join(labels) if labels else ""))
  if report.get("resized"):
    lines.append(f"  resized {len(report['resized'])}: " + ", ".join(report["resized"]))
  partial = sorted(set(partial) | set(source_partial))
  if partial:
    lines.append("  partly loaded (path by path above): " + ", ".join(partial))
  return "\n".join(lines)


def _status_groups(status: dict[str, str]) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
  """({status: [(path or subtree prefix, leaf count)]}, [partly-one-status prefixes])."""
  tree = unflatten_paths(status)
  groups: dict[str, list[tuple[str, int]]] = {}
  partial: list[str] = []

  def leaves(node, parts):
    for key in sorted(node):
      if isinstance(node[key], dict):
        yield from leaves(node[key], parts + [key])
      else:
        yield "/".join(parts + [key]), node[key]

  def walk(node, parts):
    found = list(leaves(node, parts))
    kinds = {kind for _, kind in found}
    if parts and len(kinds) == 1:
      if len(found) == 1:
        groups.setdefault(found[0][1], []).append((found[0][0], 1))
        return
      # Descend through single-child levels so the label names what it holds
      # (params/heads/classifier/classifier/**, not params/heads/**).
      while len(node) == 1 and isinstance(only := next(iter(node.values())), dict):
        parts, node = parts + [next(iter(node))], only
      groups.setdefault(kinds.pop(), []).append(("/".join(parts), len(found)))
      return
    # "params" / "model_state/<collection>" and the module under it (backbone, heads)
    # are where statuses are expected to split; below that a split is worth a look.
    collection = {"params": 1, "model_state": 2}.get(parts[0], 0) if parts else 0
    if len(parts) > collection + 1:
      partial.append("/".join(parts))
      for path, kind in found:
        groups.setdefault(kind, []).append((path, 1))
      return
    for key in sorted(node):
      if isinstance(node[key], dict):
        walk(node[key], parts + [key])
      else:
        groups.setdefault(node[key], []).append(("/".join(parts + [key]), 1))

  walk(tree, [])
  return groups, partial


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


def resolve_checkpoint(workdir: str, which: str | int = "latest") -> tuple[str, int, str]:
  """`latest` | `best` | a step -> (checkpoint workdir, step, file tag: "" or "best_")."""
  which = str(which)
  if which == "best":
    best = os.path.join(workdir, BEST_DIR)
    steps = complete_steps(best)
    if not steps:
      raise CheckpointError(
          f"--checkpoint=best: {workdir} has no best checkpoint ({best} is missing; the run "
          "needs config.train.early_stopping.metric); use --checkpoint=latest or a step")
    return best, steps[-1], "best_"
  steps = complete_steps(workdir)
  if which == "latest":
    if not steps:
      raise CheckpointError(f"--workdir {workdir}: no complete checkpoint in "
                            f"{checkpoint_dir(workdir)}")
    return workdir, steps[-1], ""
  if not which.isdigit():
    raise ConfigError(f"--checkpoint={which!r}: use latest, best or a step number")
  if int(which) not in steps:
    raise CheckpointError(f"--checkpoint={which}: no such complete step in "
                          f"{checkpoint_dir(workdir)}; it has steps {steps}")
  return workdir, int(which), ""
