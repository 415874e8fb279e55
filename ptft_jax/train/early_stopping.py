"""Early stopping on a validation metric, and the best checkpoint kept apart from the latest.

`config.train.early_stopping = {metric, mode, patience, min_delta, restore_best}`
with `metric` naming a validation metric (e.g. "accuracy", "loss"); "" is off.

* `EarlyStopping` is the pure rule: a value improves on the best when it is
  larger (mode "max") or smaller ("min") by more than `min_delta`; after
  `patience` evaluations in a row without improvement it says stop
  (patience 0: never stop, only track the best).
* `BestKeeper` runs it inside the loop. On every improvement it saves the
  evaluated params (EMA weights when EMA is on, LoRA merged) as a params-only
  Orbax checkpoint under `<workdir>/best/checkpoints/<step>/` and records it in
  `<workdir>/best.json`; `<workdir>/best` is a workdir that transfer
  (`config.init.pretrained_workdir`) and `checkpoint.load_params` accept. It is
  a second CheckpointManager, so it never deletes one of the latest
  `config.train.keep` checkpoints and they never delete it. Every evaluation
  is appended to `<workdir>/early_stopping.json`; a resumed run replays the
  entries up to its step, so its decisions equal those of an uninterrupted run.
"""

import dataclasses
import math
import os
from collections.abc import Callable

import jax
import ml_collections
import orbax.checkpoint as ocp

from ptft_jax.errors import ConfigError
from ptft_jax.train import checkpoint
from ptft_jax.utils import path_exists, read_json, write_json_atomic

BEST_DIR = checkpoint.BEST_DIR
BEST_FILE = "best.json"
HISTORY_FILE = "early_stopping.json"


@dataclasses.dataclass
class EarlyStopping:
  """Tracks the best value of one metric; `update` returns whether it improved."""

  metric: str
  mode: str = "max"
  patience: int = 0
  min_delta: float = 0.0
  best: float | None = None
  best_step: int | None = None
  bad_evals: int = 0

  def __post_init__(self):
    if self.mode not in ("max", "min"):
      raise ConfigError(
          f"config.train.early_stopping.mode={self.mode!r}: choose 'max' or 'min'")
    if self.patience < 0:
      raise ConfigError(f"config.train.early_stopping.patience={self.patience}: use >= 0")

  def improves(self, value: float) -> bool:
    if not math.isfinite(value):
      return False
    if self.best is None:
      return True
    if self.mode == "max":
      return value > self.best + self.min_delta
    return value < self.best - self.min_delta

  def update(self, step: int, value: float) -> bool:
    """Records the evaluation at `step`; True when `value` is a new best."""
    if self.improves(value):
      self.best, self.best_step, self.bad_evals = float(value), int(step), 0
      return True
    self.bad_evals += 1
    return False

  @property
  def should_stop(self) -> bool:
    return self.patience > 0 and self.bad_evals >= self.patience


def from_config(config: ml_collections.ConfigDict) -> EarlyStopping | None:
  """The rule `config.train.early_stopping` asks for, or None when its metric is ""."""
  es = config.train.get("early_stopping", None)
  if not es or not es.get("metric", ""):
    return None
  if not config.train.get("eval_every", 0):
    raise ConfigError(
        "config.train.early_stopping needs config.train.eval_every > 0 (it acts on evaluations)")
  return EarlyStopping(metric=es.metric, mode=es.get("mode", "max"),
                       patience=int(es.get("patience", 0)),
                       min_delta=float(es.get("min_delta", 0.0)))


def _write_json(path: str, value):
  if jax.process_index() == 0:
    write_json_atomic(path, value)


class BestKeeper:
  """Early stopping + the best checkpoint of one run (see the module docstring)."""

  def __init__(self, rule: EarlyStopping, workdir: str, *, start_step: int, keep_best: bool):
    self.rule = rule
    self.workdir = workdir
    self.keep_best = keep_best
    self.best_dir = os.path.join(workdir, BEST_DIR)
    self.history: list[dict] = []
    path = os.path.join(workdir, HISTORY_FILE)
    if path_exists(path):
      for record in read_json(path):
        if record["step"] <= start_step:
          self.history.append(record)
          rule.update(record["step"], record["value"])
    self._manager = None

  @property
  def stopped(self) -> bool:
    return self.rule.should_stop

  def _best_manager(self) -> ocp.CheckpointManager:
    if self._manager is None:
      self._manager = checkpoint.make_manager(self.best_dir, max_to_keep=None, async_save=False)
    return self._manager

  def record_and_save_best(self, step: int, result: dict, best_state: Callable[[], dict]) -> bool:
    """Records the validation `result` at `step` (writes early_stopping.json, and on a new
    best the best checkpoint and best.json); returns True when the run should stop.

    `best_state()` gives `{"params", "model_state"}` to save if this is a new best.
    """
    if self.rule.metric not in result or not isinstance(result[self.rule.metric], float):
      scalars = sorted(k for k, v in result.items() if isinstance(v, float))
      raise ConfigError(
          f"config.train.early_stopping.metric={self.rule.metric!r} is not a validation "
          f"metric of this task; choose one of {scalars}")
    value = result[self.rule.metric]
    improved = self.rule.update(step, value)
    self.history.append({"step": int(step), "value": value, "improved": improved})
    _write_json(os.path.join(self.workdir, HISTORY_FILE), self.history)
    if improved and self.keep_best:
      self._save(step, best_state())
      _write_json(os.path.join(self.workdir, BEST_FILE), {
          "step": int(step), "metric": self.rule.metric, "mode": self.rule.mode,
          "value": value, "checkpoint": checkpoint.checkpoint_dir(self.best_dir)})
    return self.rule.should_stop

  def _save(self, step: int, best_state: dict):
    manager = self._best_manager()
    if step in manager.all_steps():  # left by an interrupted run that reached this step
      manager.delete(step)
    manager.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(best_state),
        meta=ocp.args.JsonSave({"step": int(step), "best": True,
                                self.rule.metric: self.history[-1]["value"]})))
    manager.wait_until_finished()
    for old in manager.all_steps():  # only now, so a best checkpoint always exists
      if old != step:
        manager.delete(old)

  def best_state(self, sharding) -> tuple[dict, int] | None:
    """(`{"params", "model_state"}` of the best checkpoint, its step), or None."""
    if not self.keep_best or self.rule.best_step is None:
      return None
    return checkpoint.load_params(self.best_dir, step=self.rule.best_step, sharding=sharding)

  def close(self):
    if self._manager is not None:
      self._manager.close()


def keeper(config: ml_collections.ConfigDict, workdir: str, start_step: int) -> BestKeeper | None:
  """The run's BestKeeper when `config.train.early_stopping.metric` is set, else None."""
  rule = from_config(config)
  if rule is None:
    return None
  es = config.train.early_stopping
  return BestKeeper(rule, workdir, start_step=start_step, keep_best=bool(es.get("keep_best", True)))


def restore_best(config: ml_collections.ConfigDict) -> bool:
  """Whether the final evaluation runs on the best checkpoint instead of the last step."""
  es = config.train.get("early_stopping", None)
  return bool(es and es.get("metric", "") and es.get("keep_best", True)
              and es.get("restore_best", True))
