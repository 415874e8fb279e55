"""Glue between the config's fine-tuning options and the train loop.

`FineTuning.from_config(config, mesh)` reads what the loop needs from
`config.lora`, `config.optim.accumulation_steps`, `config.optim.ema_decay` and
`config.train.compute_dtype`, and gives the loop small pure helpers:

  step_kwargs()         extra arguments of steps.make_train_step / make_eval_step
  add_adapters(params)  LoRA adapters beside the base params (when config.lora.rank > 0)
  eval_state(state)     the state evaluation runs on (EMA params when EMA is on)
  export(state)         {"params", "model_state"} for others to read: EMA + LoRA merged
"""

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from ptft_jax.errors import ConfigError
from ptft_jax.models import layout as model_layout
from ptft_jax.optim import lora, precision
from ptft_jax.optim import optimizer as optim
from ptft_jax.parallel import sharding
from ptft_jax.train import checkpoint
from ptft_jax.utils import is_dir, write_json_atomic

MERGED_DIR = "merged"
PARAMS_FILE = "param_groups.json"


@dataclasses.dataclass(frozen=True)
class FineTuning:
  lora: dict | None  # {"rank", "alpha", "targets"}
  compute_dtype: Any
  accumulation_steps: int
  ema: bool

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, mesh: Mesh) -> "FineTuning":
    k = int(config.optim.get("accumulation_steps", 1))
    batch = int(config.data.batch_size)
    if k < 1 or batch % k:
      raise ConfigError(
          f"config.optim.accumulation_steps={k} must be >= 1 and divide "
          f"config.data.batch_size={batch}")
    if k > 1:
      sharding.check_batch_size(
          batch // k, mesh, "config.data.batch_size / config.optim.accumulation_steps")
    return cls(lora=lora.settings(config), compute_dtype=precision.compute_dtype(config),
               accumulation_steps=k, ema=float(config.optim.get("ema_decay", 0.0)) > 0)

  @property
  def param_fn(self) -> Callable | None:
    if not self.lora:
      return None
    return functools.partial(lora.merge_lora, alpha=self.lora["alpha"])

  def step_kwargs(self, *, train: bool = True) -> dict:
    kw = {"compute_dtype": self.compute_dtype, "param_fn": self.param_fn}
    if train:
      kw["accumulation_steps"] = self.accumulation_steps
    return kw

  def add_adapters(self, params: dict, rng: jax.Array) -> dict:
    if not self.lora:
      return params
    return lora.add_adapters(params, rng, rank=self.lora["rank"], targets=self.lora["targets"])

  def eval_state(self, state: dict) -> dict:
    if not self.ema:
      return state
    return {**state, "params": optim.ema_params(state["params"], state["opt_state"])}

  def export(self, state: dict) -> dict:
    params = self.eval_state(state)["params"]
    if self.lora:
      params = jax.jit(self.param_fn)(params)
    return {"params": params, "model_state": state["model_state"]}

  def write_merged_checkpoint(self, state: dict, workdir: str):
    """Writes `<workdir>/merged`: the LoRA-merged params, params-only (once per run)."""
    if not self.lora:
      return None
    out = os.path.join(workdir, MERGED_DIR)
    if is_dir(checkpoint.checkpoint_dir(out)):
      return None
    exported = self.export(state)
    return checkpoint.save_pretrained(
        out, exported["params"], model_state=exported["model_state"],
        step=int(jax.device_get(state["step"])), config={"lora_merged": self.lora})


def load_pretrained(workdir: str, *, sharding=None, like: dict | None = None) -> tuple[dict, int]:
  """{"params", "model_state"} of a pretraining run and its step; a LoRA run's adapters merged.

  `sharding` as in `checkpoint.load_params` (e.g. the run's Layout: each leaf read sharded).
  `like`: the params of the model they will go into; transformer layer stacks are then
  converted to its layout (scanned `layers` <-> looped `layer_{i}`, `models.layout`).
  """
  pretrained, step = checkpoint.load_params(workdir, sharding=sharding)
  params = lora.merge_loaded(pretrained["params"], workdir)
  if like is not None:
    params = model_layout.match_layout(params, like)
  return {**pretrained, "params": params}, step


def write_param_groups_json(workdir: str, groups: Sequence[optim.Group], params: dict,
                            fine_tuning: FineTuning) -> str:
  """One line with the trainable parameter count; writes `<workdir>/param_groups.json`."""
  counts = optim.param_counts(groups)
  adapters = sum(x.size for x in jax.tree_util.tree_leaves(params.get(lora.LORA, {})))
  if jax.process_index() == 0:
    record = {**counts, "groups": [
        {"name": g.name, "regex": g.regex, "leaves": len(g.leaves) + len(g.rows),
         "params": g.num_params,
         "lr": g.lr, "schedule": g.schedule, "weight_decay": g.weight_decay,
         "frozen": g.frozen, "unfreeze_at": g.unfreeze_at,
         # stacked leaves (scanned layers) only some of whose rows are in this group
         **({"rows": {p: list(ks) for p, ks in g.rows}} if g.rows else {})} for g in groups]}
    if fine_tuning.lora:
      record["lora"] = fine_tuning.lora
    write_json_atomic(os.path.join(workdir, PARAMS_FILE), record)
  share = counts["trainable"] / max(counts["total"], 1)
  line = f"trainable parameters: {counts['trainable']:,} of {counts['total']:,} ({share:.2%})"
  if fine_tuning.lora:
    line += f", LoRA adapters {adapters:,} (rank {fine_tuning.lora['rank']})"
  return line
