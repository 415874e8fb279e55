"""Optimizers from config: schedules, parameter groups, weight-decay mask, clipping.

Parameter groups are the one mechanism behind freezing and per-group learning
rates: `config.optim.groups` is an ordered list of `(regex, settings)`; a leaf
takes the settings of the first regex that *fully* matches its path
(`backbone/layer_0/kernel`; rows of scanned stacks below); unmatched leaves use
the defaults. Settings:

  frozen: bool        no update and no optimizer state for these leaves
  lr: float           this group's peak learning rate
  lr_mult: float      multiplier on config.optim.lr (ignored when lr is given)
  weight_decay: float this group's decoupled weight decay
  schedule: str       this group's decay: cosine | linear | constant (default config.optim.decay)
  unfreeze_at: int    the group trains from this step on (gradual unfreezing; default 0)
  name: str           the group's name in the table (default group_<i>)

Frozen groups go through `optax.multi_transform` with `optax.set_to_zero()`,
which keeps no moments for them; the train step takes no gradient for them
(see train/steps.py), so their backward pass is not computed when they sit at the
input side.

A group with `unfreeze_at = N > 0` is trainable in the optimizer from the start
but gated by the step inside the compiled update: before step N its gradients
are zeroed (before clipping, so they do not count in the clip norm), its
updates are zero and its optimizer state is held bitwise unchanged; from step N
on it trains, and groups already training are never reset. Its schedule
(warmup, then decay) starts at step N and runs over the remaining steps. The
price: such groups hold optimizer state, and take a full backward pass, from
step 0.

Scanned layers (`config.model.scan_layers`): a stacked leaf `.../layers/<rest>`
[num_layers, ...] is matched row by row under its looped names
`.../layer_{k}/<rest>` (`models.layout.row_names`; a regex naming the stacked path
takes every row). When all rows land in one group nothing changes. Otherwise
the leaf's label is its rows' group names joined by "|" and it gets one per-row
optimizer (`_rowwise`): the config's optimizer vmapped over the rows, so each
row keeps its own moments and count and takes its own group's lr schedule,
weight decay and unfreeze step; frozen and not-yet-unfrozen rows have their
gradients zeroed before clipping and their updates zeroed, their state held.
Row k then trains exactly as looped layer k (tests/unit/test_scanned_groups.py).
`Group.rows` lists the (leaf, rows) a group holds of such split leaves. What stays
per array: `weight_decay_mask` must decay all rows of a leaf or none, and a leaf
with some frozen rows keeps optimizer state (zeros) for them and takes a
backward pass through them.

Groups come from `config.optim.groups` first, then from a named preset in
`config.optim.strategy` (see strategies.py), expanded by the caller.

`config.optim.ema_decay > 0` adds an exponential moving average of the
trainable parameters at the end of the chain; it lives in the optimizer state
(so it is checkpointed and resumed with it) and `ema_params` reads it.
"""

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ptft_jax.errors import ConfigError
from ptft_jax.models import layout
from ptft_jax.utils import path_str, tree_paths

GROUP_SETTINGS = ("frozen", "lr", "lr_mult", "weight_decay", "schedule", "unfreeze_at", "name")
SCHEDULES = ("cosine", "linear", "constant")
DEFAULT_GROUP = "default"
ROW_SEP = "|"  # the label of a stacked leaf whose rows are in different groups: "g0|g1|..."


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
        f"config.optim.decay: unknown schedule {decay!r}; choose one of {', '.join(SCHEDULES)}")
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
  schedule: str = "cosine"
  unfreeze_at: int = 0
  # Stacked leaves ([num_layers, ...], a scanned stack) only some of whose rows are in this
  # group: (path, row indices). `leaves` holds whole leaves only.
  rows: tuple[tuple[str, tuple[int, ...]], ...] = ()


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
    if settings.get("schedule", "cosine") not in SCHEDULES:
      raise ConfigError(
          f"config.optim.groups[{i}] ({regex!r}): schedule {settings['schedule']!r} is not one "
          f"of {SCHEDULES}")
    if int(settings.get("unfreeze_at", 0)) < 0:
      raise ConfigError(f"config.optim.groups[{i}] ({regex!r}): unfreeze_at must be >= 0")
    out.append((regex, settings))
  names = [str(s.get("name", f"group_{i}")) for i, (_, s) in enumerate(out)]
  for i, name in enumerate(names):
    if ROW_SEP in name:
      raise ConfigError(f"config.optim.groups[{i}]: group name {name!r} holds {ROW_SEP!r}, "
                        "which labels the rows of stacked leaves; choose another name")
    if name == DEFAULT_GROUP or names.index(name) != i:
      raise ConfigError(
          f"config.optim.groups[{i}]: group name {name!r} is "
          + ("reserved" if name == DEFAULT_GROUP else "used twice"))
  return out


def assign_groups(params, optim_config: ml_collections.ConfigDict,
                  group_specs: Sequence | None = None) -> tuple[Any, list[Group]]:
  """Labels every leaf with its group name; returns (label tree, groups in order).

  `group_specs` is the list of (regex, settings) to use, by default
  `config.optim.groups`; presets (`config.optim.strategy`) are expanded by the
  caller (ptft_jax.optim.assign_groups / make_optimizer). Raises ConfigError when
  a group's regex matches no parameter (usually a typo), naming the regex and a
  few real paths.
  """
  if group_specs is None:
    group_specs = [tuple(g) if isinstance(g, list) else g for g in optim_config.get("groups", ())]
  groups = _normalize_groups(group_specs)
  names = [str(s.get("name", f"group_{i}")) for i, (_, s) in enumerate(groups)]
  paths = tree_paths(params)
  flat_paths = jax.tree_util.tree_leaves(paths)
  # A stacked leaf's rows go by their looped names (`layer_{k}/...`, models.layout); a regex
  # may also name the stacked path itself (`.*/layers/...`), which takes every row.
  looped = layout.looped_names(params)

  def label(name: str, path: str) -> str:
    for group, (regex, _) in zip(names, groups, strict=True):
      if re.fullmatch(regex, name) or (name != path and re.fullmatch(regex, path)):
        return group
    return DEFAULT_GROUP

  row_labels = {p: tuple(label(n, p) for n in looped[p]) for p in flat_paths}
  leaf_label = {p: rows[0] if len(set(rows)) == 1 else ROW_SEP.join(rows)
                for p, rows in row_labels.items()}
  labels = jax.tree_util.tree_map(leaf_label.__getitem__, paths)
  sizes = dict(zip(flat_paths, (int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(
      params)), strict=True))

  def members(name: str) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[int, ...]], ...], int]:
    """(whole leaves, (stacked leaf, rows) of leaves split between groups, parameter count)."""
    whole = tuple(p for p in flat_paths if leaf_label[p] == name)
    rows = tuple((p, ks) for p in flat_paths if leaf_label[p] != row_labels[p][0] and (
        ks := tuple(k for k, lab in enumerate(row_labels[p]) if lab == name)))
    count = sum(sizes[p] for p in whole) + sum(
        sizes[p] // len(row_labels[p]) * len(ks) for p, ks in rows)
    return whole, rows, count

  base_lr = float(optim_config.lr)
  base_wd = float(optim_config.get("weight_decay", 0.0))
  base_schedule = optim_config.get("decay", "cosine")
  result = []
  for i, (name, (regex, settings)) in enumerate(zip(names, groups, strict=True)):
    leaves, rows, count = members(name)
    if not leaves and not rows:
      matched_earlier = [p for p in flat_paths if any(
          re.fullmatch(regex, n) for n in looped[p] + (p,))]
      why = (f"its {len(matched_earlier)} matches are taken by an earlier group"
             if matched_earlier else f"parameter paths look like {flat_paths[:3]}")
      raise ConfigError(
          f"config.optim.groups[{i}]: regex {regex!r} matches no parameter ({why})")
    lr = float(settings["lr"]) if "lr" in settings else base_lr * float(
        settings.get("lr_mult", 1.0))
    result.append(Group(
        name=name, regex=regex, frozen=bool(settings.get("frozen", False)), lr=lr,
        weight_decay=float(settings.get("weight_decay", base_wd)), leaves=leaves,
        num_params=count, schedule=settings.get("schedule", base_schedule),
        unfreeze_at=int(settings.get("unfreeze_at", 0)), rows=rows))
  leaves, rows, count = members(DEFAULT_GROUP)
  result.append(Group(
      name=DEFAULT_GROUP, regex=None, frozen=False, lr=base_lr, weight_decay=base_wd,
      leaves=leaves, num_params=count, schedule=base_schedule, rows=rows))
  return labels, result


def _decay_of(params, regex: str) -> dict[str, bool]:
  """{path: whether `config.optim.weight_decay_mask` decays the leaf}.

  A stacked leaf is matched under its rows' looped names (and its own path), like
  the groups; its rows must agree (weight decay is one setting per array).
  """
  out = {}
  for path, names in layout.looped_names(params).items():
    rows = {bool(re.fullmatch(regex, n) or re.fullmatch(regex, path)) for n in names}
    if len(rows) > 1:
      raise ConfigError(
          f"config.optim.weight_decay_mask={regex!r} decays some layers of the stacked leaf "
          f"{path} [num_layers, ...] but not others; name all of its layers or none, or set "
          "config.model.scan_layers=False")
    out[path] = rows.pop()
  return out


def _decay_mask_fn(decay_of: dict[str, bool]) -> Callable:
  def mask(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: decay_of[path_str(p)], params)
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


class EmaState(NamedTuple):
  """Exponential moving average of the (trainable) parameters after each update."""

  ema: Any


def ema_of_params(decay: float, hold: dict[str, np.ndarray] | None = None
                  ) -> optax.GradientTransformation:
  """Keeps `ema = decay * ema + (1 - decay) * new_params`; passes updates through unchanged.

  Put it last in a chain: it sees the final updates, and `params + updates` is
  what `optax.apply_updates` will produce. The average starts at the initial
  params (no debiasing), so early EMA weights lean on the starting point.
  `hold`: {path: bool [num_layers]} frozen rows of stacked leaves, whose average
  stays their (unchanged) params, as a frozen looped layer has no average at all.
  """
  hold = hold or {}

  def average(path, e, p):
    new = (decay * e + (1.0 - decay) * p).astype(e.dtype)
    rows = hold.get(path_str(path))
    return new if rows is None else jnp.where(_per_row(jnp.asarray(rows), p), p, new)

  def init(params):
    return EmaState(ema=jax.tree_util.tree_map(lambda p: jnp.array(p, copy=True), params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("ema_of_params needs params in update()")
    new = optax.apply_updates(params, updates)
    ema = jax.tree_util.tree_map_with_path(average, state.ema, new)
    return updates, EmaState(ema=ema)

  return optax.GradientTransformation(init, update)


def ema_params(params, opt_state):
  """`params` with every leaf the EMA tracks replaced by its average (params if no EMA)."""
  found = [s for s in jax.tree_util.tree_leaves(
      opt_state, is_leaf=lambda x: isinstance(x, EmaState)) if isinstance(s, EmaState)]
  if not found:
    return params
  masked = lambda x: isinstance(x, optax.MaskedNode)
  return jax.tree_util.tree_map(
      lambda p, e: p if masked(e) else e, params, found[0].ema, is_leaf=masked)


class GateState(NamedTuple):
  count: jax.Array  # int32 step counter of this gate
  inner: Any


def _start_at(inner: optax.GradientTransformation, start: int) -> optax.GradientTransformation:
  """`inner` that does nothing before step `start`: zero updates, state held unchanged."""

  def init(params):
    return GateState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    active = state.count >= start
    new_updates, new_inner = inner.update(updates, state.inner, params)
    inner_state = jax.tree_util.tree_map(
        lambda n, o: jnp.where(active, n, o), new_inner, state.inner)
    new_updates = jax.tree_util.tree_map(
        lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
    return new_updates, GateState(optax.safe_increment(state.count), inner_state)

  return optax.GradientTransformation(init, update)


def _per_row(rows: jax.Array, x) -> jax.Array:
  """A [num_layers] vector shaped [num_layers, 1, ...] to broadcast against x [num_layers, ...]."""
  return rows.reshape(rows.shape + (1,) * (jnp.ndim(x) - 1))


class RowGates(NamedTuple):
  """Which rows of a stacked leaf train when: frozen [num_layers] bool, start [num_layers] int."""

  frozen: np.ndarray
  start: np.ndarray

  def active(self, count: jax.Array) -> jax.Array:
    """[num_layers] bool: the rows that train at step `count`."""
    return jnp.logical_and(~jnp.asarray(self.frozen), count >= jnp.asarray(self.start))


def _zero_inactive(labels, starts: dict[str, int],
                   rows: dict[str, RowGates] | None = None) -> optax.GradientTransformation:
  """Zeroes the gradients of groups whose `unfreeze_at` step has not come yet, and of the
  frozen or not yet unfrozen rows of stacked leaves (`rows`, by label)."""
  rows = rows or {}

  def init(params):
    del params
    return GateState(jnp.zeros([], jnp.int32), optax.EmptyState())

  def gate(count, g, lab):
    if lab in rows:
      return jnp.where(_per_row(rows[lab].active(count), g), g, jnp.zeros_like(g))
    if starts.get(lab, 0) > 0:
      return jnp.where(count >= starts[lab], g, jnp.zeros_like(g))
    return g

  def update(updates, state, params=None):
    del params
    updates = jax.tree_util.tree_map(
        functools.partial(gate, state.count), updates, labels)
    return updates, GateState(optax.safe_increment(state.count), state.inner)

  return optax.GradientTransformation(init, update)


class RowState(NamedTuple):
  """Optimizer state of stacked leaves whose rows are in different groups."""

  count: jax.Array  # int32 steps seen: the clock of the rows' unfreeze steps
  inner: Any  # the optimizer's state per row: every leaf has a leading [num_layers] axis


def _group_schedule(g: Group, optim_config, total_steps: int) -> optax.Schedule:
  """The group's schedule, over the steps after its `unfreeze_at`."""
  return make_schedule(
      g.lr, max(total_steps - g.unfreeze_at, 1),
      warmup_steps=optim_config.get("warmup_steps", 0), decay=g.schedule,
      end_lr_factor=optim_config.get("end_lr_factor", 0.0))


def _rowwise(rows: Sequence[Group], optim_config, total_steps: int,
             wd_mask: Callable) -> optax.GradientTransformation:
  """The optimizer of stacked leaves [num_layers, ...] whose row k is in group `rows[k]`.

  The config's optimizer runs vmapped over the rows, so every row keeps its own
  state (Adam's moments *and* count) and takes its own group's schedule (peak lr,
  decay, start at its `unfreeze_at`) and weight decay: row k moves exactly as a
  looped layer k in that group would. A row is held, as `_start_at` holds a
  group, while it is frozen or before its `unfreeze_at`: zero update, state
  unchanged (its gradients are zeroed before clipping by `_zero_inactive`).
  """
  trained = list(dict.fromkeys(g.name for g in rows if not g.frozen))
  by_name = {g.name: g for g in rows}
  schedules = [_group_schedule(by_name[n], optim_config, total_steps) for n in trained]
  which = jnp.asarray([0 if g.frozen else trained.index(g.name) for g in rows], jnp.int32)
  decay = jnp.asarray([0.0 if g.frozen else g.weight_decay for g in rows], jnp.float32)
  gates = RowGates(np.array([g.frozen for g in rows]),
                   np.array([g.unfreeze_at for g in rows], np.int32))

  def row_tx(k, weight_decay) -> optax.GradientTransformation:
    # Every trained group's lr at this row's own count, then this row's: one traced rule.
    schedule = lambda count: jnp.stack([f(count) for f in schedules])[k]
    return _base_optimizer(optim_config, schedule, weight_decay, wd_mask)

  def init(params):
    return RowState(jnp.zeros([], jnp.int32), jax.vmap(row_tx(0, 0.0).init)(params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("the per-row optimizer needs params in update()")
    new_updates, new_inner = jax.vmap(
        lambda u, st, p, k, wd: row_tx(k, wd).update(u, st, p))(
            updates, state.inner, params, which, decay)
    active = gates.active(state.count)
    keep = lambda n, o: jnp.where(_per_row(active, n), n, o)
    inner = jax.tree_util.tree_map(keep, new_inner, state.inner)
    new_updates = jax.tree_util.tree_map(
        lambda u: jnp.where(_per_row(active, u), u, jnp.zeros_like(u)), new_updates)
    return new_updates, RowState(optax.safe_increment(state.count), inner)

  return optax.GradientTransformation(init, update)


def trainable_mask(tree, groups: Sequence[Group]) -> Any:
  """Bool tree shaped like `tree` (params, or their label tree): False for frozen groups' leaves.

  A stacked leaf split between groups is trainable unless all of its rows are frozen.
  """
  frozen = {path for g in groups if g.frozen for path in g.leaves}
  split, frozen_rows = {}, {}
  for g in groups:
    for path, ks in g.rows:
      split.setdefault(path, set()).update(ks)
      if g.frozen:
        frozen_rows.setdefault(path, set()).update(ks)
  frozen |= {path for path, ks in split.items() if frozen_rows.get(path) == ks}
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p) not in frozen, tree)


def make_optimizer(
    params, optim_config: ml_collections.ConfigDict, total_steps: int,
    group_specs: Sequence | None = None,
) -> tuple[optax.GradientTransformation, list[Group]]:
  """Builds the optax transformation for `params`; returns (tx, groups).

  `group_specs`: see `assign_groups` (ptft_jax.optim.make_optimizer passes the
  config's groups followed by its preset's).

  Chain: [zero gradients of groups not yet unfrozen, and of frozen / not yet
  unfrozen rows of split stacked leaves] -> [clip by global norm over trainable
  leaves] -> multi_transform over groups, each `adamw`/`sgd` with its own
  schedule and decay mask (gated by its `unfreeze_at`), or `set_to_zero` when
  frozen, plus one per-row optimizer per row pattern of split stacked leaves
  -> [EMA of the trainable params; frozen rows' average stays their params].
  """
  labels, groups = assign_groups(params, optim_config, group_specs)
  wd_mask = _decay_mask_fn(_decay_of(params, optim_config.get("weight_decay_mask", r".*/kernel")))
  transforms = {}
  for g in groups:
    if g.frozen:
      transforms[g.name] = optax.set_to_zero()
      continue
    transforms[g.name] = _base_optimizer(
        optim_config, _group_schedule(g, optim_config, total_steps), g.weight_decay, wd_mask)
    if g.unfreeze_at > 0:
      transforms[g.name] = _start_at(transforms[g.name], g.unfreeze_at)
  # Stacked leaves whose rows are in different groups: one per-row optimizer per row pattern.
  by_name = {g.name: g for g in groups}
  row_gates, hold = {}, {}
  for path, label in zip(jax.tree_util.tree_leaves(tree_paths(params)),
                         jax.tree_util.tree_leaves(labels), strict=True):
    if ROW_SEP not in label:
      continue
    rows = [by_name[n] for n in label.split(ROW_SEP)]
    if all(g.frozen for g in rows):
      transforms[label] = optax.set_to_zero()  # trainable_mask: no gradient either
      continue
    if label not in transforms:
      transforms[label] = _rowwise(rows, optim_config, total_steps, wd_mask)
    gates = RowGates(np.array([g.frozen for g in rows]),
                     np.array([g.unfreeze_at for g in rows], np.int32))
    if gates.frozen.any() or gates.start.any():
      row_gates[label] = gates
    if gates.frozen.any():
      hold[path] = gates.frozen
  tx = optax.multi_transform(transforms, labels)
  trainable = trainable_mask(labels, groups)
  clip = optim_config.get("grad_clip_norm", 0.0)
  if clip:
    tx = optax.chain(optax.masked(optax.clip_by_global_norm(clip), trainable), tx)
  starts = {g.name: g.unfreeze_at for g in groups if g.unfreeze_at > 0 and not g.frozen}
  if starts or row_gates:
    tx = optax.chain(_zero_inactive(labels, starts, row_gates), tx)
  ema_decay = float(optim_config.get("ema_decay", 0.0))
  if not 0.0 <= ema_decay < 1.0:
    raise ConfigError(f"config.optim.ema_decay={ema_decay}: use 0 (off) or a value in (0, 1)")
  if ema_decay:
    tx = optax.chain(tx, optax.masked(ema_of_params(ema_decay, hold), trainable))
  return tx, groups


def group_table(groups: Sequence[Group]) -> str:
  """A printable table: group, regex, matched leaves, parameters, lr, schedule, wd, frozen.

  The frozen column reads "until N" for a group that unfreezes at step N. A group
  holding some rows of stacked leaves counts those leaves too and names the rows:
  `16 (rows 0,1)`.
  """
  rows = [("group", "regex", "leaves", "params", "lr", "schedule", "wd", "frozen")]
  for g in groups:
    frozen = "yes" if g.frozen else (f"until {g.unfreeze_at}" if g.unfreeze_at else "no")
    leaves = str(len(g.leaves) + len(g.rows))
    if g.rows:
      ks = sorted({k for _, row in g.rows for k in row})
      leaves += f" (row{'s' if len(ks) > 1 else ''} {','.join(map(str, ks))})"
    rows.append((g.name, g.regex or "(unmatched)", leaves, f"{g.num_params:,}",
                 f"{g.lr:.3g}", g.schedule, f"{g.weight_decay:.3g}", frozen))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join(
      "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def param_counts(groups: Sequence[Group]) -> dict[str, int]:
  """{"total", "trainable", "frozen"} parameter counts (gradually unfrozen groups: trainable)."""
  total = sum(g.num_params for g in groups)
  frozen = sum(g.num_params for g in groups if g.frozen)
  return {"total": total, "trainable": total - frozen, "frozen": frozen}
