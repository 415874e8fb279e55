"""The train loop: one loop for pretraining and fine-tuning. Read it top to bottom.

`train_and_evaluate(config, workdir)` runs one stage; `run(config, workdir)`
runs a config's stages in order (or the config itself when it has none).

Reliability (README, "Reliability"): a SIGTERM makes the loop save the current
step and raise `preemption.Preempted` (the CLI exits 0); a NaN / Inf loss follows
`config.train.nan_policy` and nothing non-finite is ever saved; result JSONs are
replaced atomically, so a failing run leaves what an earlier one wrote.
"""

import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ptft_jax import (
  checkpoint,
  data,
  early_stopping,
  finetune,
  inference,
  lora,
  memory,
  optim,
  precision,
  preemption,
  sharding,
  steps,
  tasks,
  writers,
)
from ptft_jax.config_utils import check_workdir_config, move_aside, to_dict, workdir_config_changes
from ptft_jax.errors import CheckpointError, ConfigError, NonFiniteError
from ptft_jax.models import build_model

log = logging.getLogger("ptft_jax")


def _say(msg: str):
  if jax.process_index() == 0:
    print(msg, flush=True)


def evaluate(eval_step, state, task, bundle, split, mesh, should_stop=None) -> dict | None:
  """One full pass over `split`; returns the task's metrics (see `Task.summarize`).

  Returns None if `should_stop()` turns true between batches (preemption).
  """
  gathered: dict[str, list[np.ndarray]] = {}
  for batch in bundle.eval_batches(split):
    if should_stop is not None and should_stop():
      return None
    out = eval_step(state["params"], state["model_state"], sharding.host_to_global(batch, mesh))
    if jax.process_count() > 1:
      out = multihost_utils.process_allgather(out, tiled=True)
    for k, v in out.items():
      gathered.setdefault(k, []).append(np.asarray(v))
  flat = {k: np.concatenate(v) for k, v in gathered.items()}
  valid = flat.pop("valid").astype(bool)
  return task.summarize({k: v[valid] for k, v in flat.items()}, bundle.info)


def _scalars(result: dict) -> dict:
  return {k: v for k, v in result.items() if isinstance(v, float)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> dict:
  """Trains one stage in `workdir` (resuming if it holds checkpoints); returns final metrics.

  A workdir holding a run with another config is refused, or with `overwrite`
  moved aside to `<workdir>.old-<timestamp>`. A preemption request (SIGTERM under
  the CLI or inside `preemption.watch()`; JAX's sync point with several processes)
  saves the current step and raises `preemption.Preempted`.
  """
  workdir = os.path.abspath(workdir)
  _check_not_in_pretrained(config, workdir)
  nan_policy = config.train.get("nan_policy", "stop")
  if nan_policy not in ("stop", "skip"):
    raise ConfigError(f"config.train.nan_policy={nan_policy!r}: choose 'stop' or 'skip'")
  moved = check_workdir_config(config, workdir, overwrite=overwrite)
  if moved:
    _say(f"--overwrite: moved the earlier run in {workdir} to {moved}")
  mesh = sharding.make_mesh(config.get("mesh"))
  sharding.check_batch_size(config.data.batch_size, mesh)
  sharding.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")

  # --- data --------------------------------------------------------------------------
  bundle = data.make_data(config.data, seed=config.seed)
  inference.write_labels(workdir, config, bundle.info)  # outputs speak in class names

  # --- model, task, optimizer ------------------------------------------------------------
  task, heads = tasks.build_task(config, bundle.info)
  model = build_model(precision.model_config(config), heads)  # compute dtype, if the model has one
  total_steps = int(config.train.steps)
  example = _model_batch(task, data.example_batch(bundle))
  example = jax.tree_util.tree_map(lambda x: x[:2], example)  # shapes only
  example = jax.jit(task.inputs, static_argnums=2)(  # e.g. adds masked positions
      example, jax.random.PRNGKey(0), False)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  replicated = sharding.replicated(mesh)
  layout = sharding.Layout.from_config(config, mesh)  # params sharded by logical-axis rules
  params, model_state = layout.init(lambda r: steps.init_variables(model, example, r), init_rng)
  ft = finetune.FineTuning.from_config(config, mesh)  # LoRA, accumulation, precision, EMA
  params = ft.add_adapters(params, jax.random.fold_in(init_rng, 1))
  tx, groups = optim.make_optimizer(params, config.optim, total_steps)
  trainable = optim.trainable_mask(optim.assign_groups(params, config.optim)[0], groups)
  _say(f"parameter groups:\n{optim.group_table(groups)}")
  _say(finetune.param_report(groups, params, workdir, ft))

  # --- init: resume | transfer | fresh ------------------------------------------------------
  removed = checkpoint.remove_incomplete(workdir)  # a save or cleanup that a kill cut short
  if removed:
    _say(f"removed incomplete checkpoint(s) {', '.join(removed)} in "
         f"{checkpoint.checkpoint_dir(workdir)}")
  manager = checkpoint.make_manager(workdir, max_to_keep=config.train.get("keep", 3))
  if config.init.pretrained_workdir and manager.latest_step() is None:
    pretrained, src_step = checkpoint.load_params(config.init.pretrained_workdir)
    pretrained["params"] = lora.merge_loaded(pretrained["params"], config.init.pretrained_workdir)
    loaded, report = checkpoint.transfer(
        {"params": params, "model_state": model_state}, pretrained,
        load=tuple(config.init.load), skip=tuple(config.init.skip))
    params, model_state = loaded["params"], loaded["model_state"]
    _say(f"transfer from {config.init.pretrained_workdir} (step {src_step}):\n"
         + checkpoint.format_report(report))
    if jax.process_index() == 0:
      writers.write_json(os.path.join(workdir, "transfer_report.json"), report)
  opt_state = layout.init(tx.init, params)  # sharded like the params it mirrors
  state = layout.put(
      {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
       "opt_state": opt_state, "rng": state_rng})
  _say(memory.report(state, layout, trainable, config=config, example=example))
  if manager.latest_step() is not None:
    state = checkpoint.restore(manager, state, data_iterator=bundle.train_iterator)
    _say(f"resumed from {checkpoint.checkpoint_dir(workdir)} at step {int(state['step'])}")

  # --- compiled steps --------------------------------------------------------------------
  train_step = jax.jit(
      steps.make_train_step(model, task, tx, trainable=trainable, nan_policy=nan_policy,
                            **ft.step_kwargs()),
      donate_argnums=(0,), out_shardings=(layout.state_shardings(state), None))
  eval_step = jax.jit(steps.make_eval_step(model, task, **ft.step_kwargs(train=False)))
  writer = writers.MetricWriter(workdir, tensorboard=config.train.get("tensorboard", True))
  meta = {"model": config.model.name, "task": config.task.name, "dataset": config.data.dataset}

  # --- loop -----------------------------------------------------------------------------
  start = int(state["step"])
  keeper = early_stopping.keeper(config, workdir, start)  # None unless early_stopping.metric
  progress = writers.Progress(total_steps, start)
  tc = config.train
  guard = _NonFiniteGuard(nan_policy, tc.get("max_consecutive_skips", 10), manager)
  save = lambda state: _save(manager, state, guard, bundle.train_iterator, meta)
  for step in range(start + 1, total_steps + 1):
    if keeper and keeper.stopped:  # a resumed run that had stopped early
      break
    if preemption.should_stop(step - 1):  # SIGTERM arrived: save this step, exit 0
      _save_and_stop(manager, state, save)
    batch = _model_batch(task, next(bundle.train_iterator))
    state, step_metrics = train_step(state, sharding.host_to_global(batch, mesh))
    guard.add(step, step_metrics)  # keeps the on-device finite flag; no sync here
    if step == start + 1:
      jax.block_until_ready(step_metrics)
      progress.tick(step)
    if step % tc.log_every == 0 or step == total_steps:
      skipped = guard.check()
      scalars = writer.write(step, {**step_metrics, **(
          {"skipped_steps": skipped} if nan_policy == "skip" else {})})
      _say(f"{progress.line(step)}  " + "  ".join(
          f"{k}={v:.4g}" for k, v in scalars.items()))
    if tc.eval_every and (step % tc.eval_every == 0 or step == total_steps):
      t0 = time.perf_counter()
      # Runs to the end even when preempted: its result is part of the run's history
      # (metrics, early stopping); the check at the next step then saves and exits.
      result = evaluate(eval_step, ft.eval_state(state), task, bundle, "validation", mesh)
      writer.write(step, _scalars(result), split="validation")
      progress.pause(time.perf_counter() - t0)
      if keeper and keeper.observe(step, result, functools.partial(ft.export, state)):
        _say(f"early stopping at step {step}: no {keeper.rule.metric} improvement in "
             f"{keeper.rule.patience} evaluations (best {keeper.rule.best:.4g} at step "
             f"{keeper.rule.best_step})")
        save(state)
        break
    if step % tc.checkpoint_every == 0 or step == total_steps:
      t0 = time.perf_counter()
      save(state)
      progress.pause(time.perf_counter() - t0)
  checkpoint.wait(manager)  # a failed background commit surfaces here, not as "saved"

  # --- final evaluation --------------------------------------------------------------------
  final, final_state = {}, ft.eval_state(state)
  best = keeper.best_state(replicated) if early_stopping.restore_best(config) else None
  if best is not None:  # the best validation checkpoint, not the last step
    final_state = {**best[0], "step": best[1]}
    _say(f"final evaluation on the best checkpoint (step {best[1]})")
  for split in config.get("eval_splits", ("validation", "test")):
    final[split] = evaluate(eval_step, final_state, task, bundle, split, mesh,
                            should_stop=preemption.requested)
    if final[split] is None:  # training is saved; a restart runs only this evaluation
      _save_and_stop(manager, state, save)
    writer.write(total_steps, _scalars(final[split]), split=f"final_{split}")
    if jax.process_index() == 0:
      writers.write_json(os.path.join(workdir, f"eval_{split}.json"),
                         {"step": int(final_state["step"]), **final[split]})
    _say(f"{split}: " + "  ".join(f"{k}={v:.4f}" for k, v in _scalars(final[split]).items()))
  ft.save_merged(state, workdir)  # LoRA runs: <workdir>/merged, adapters folded in
  if keeper:
    keeper.close()
  writer.close()
  manager.close()
  return final


def _model_batch(task, batch: dict) -> dict:
  """Pretraining tasks never see labels; the model never sees the padding mask."""
  drop = {"valid"} if task.uses_labels else {"valid", "label"}
  return {k: v for k, v in batch.items() if k not in drop}


def _check_not_in_pretrained(config: ml_collections.ConfigDict, workdir: str):
  """Fine-tuning only reads the pretrained run; writing into it could destroy it."""
  pretrained = config.init.pretrained_workdir
  if not pretrained:
    return
  pretrained, workdir = os.path.realpath(pretrained), os.path.realpath(workdir)
  if workdir == pretrained or workdir.startswith(pretrained + os.sep):
    raise ConfigError(
        f"--workdir {workdir} is config.init.pretrained_workdir or inside it; a fine-tuning run "
        "must write to its own workdir (the pretrained run is only read)")


class _NonFiniteGuard:
  """The host side of config.train.nan_policy.

  The step computes `finite` (loss and gradient norm) on device; the flags are
  read only at log steps and before saves, so no step waits for the host. "stop"
  raises at the first non-finite step; "skip" (the step already kept the old
  state) raises after more than `max_skips` non-finite steps in a row.
  """

  def __init__(self, policy: str, max_skips: int, manager):
    self.policy, self.max_skips, self.manager = policy, int(max_skips), manager
    self.pending: list[tuple[int, jax.Array, jax.Array]] = []  # (step, finite, loss)
    self.streak = 0  # non-finite steps in a row so far

  def add(self, step: int, metrics: dict):
    self.pending.append((step, metrics.pop("finite"), metrics["loss"]))

  def check(self) -> int:
    """Raises NonFiniteError per the policy; returns the steps skipped since the last check."""
    flags = jax.device_get([finite for _, finite, _ in self.pending])
    skipped, error = 0, None
    for (step, _, loss), finite in zip(self.pending, flags, strict=True):
      if finite:
        self.streak = 0
      elif self.policy == "stop":
        error = (f"non-finite loss or gradient at step {step} (loss {float(loss)}); it was "
                 "not saved; lower config.optim.lr, set config.optim.grad_clip_norm, or set "
                 "config.train.nan_policy='skip'")
        break
      else:
        self.streak, skipped = self.streak + 1, skipped + 1
        if self.streak > self.max_skips:
          error = (f"{self.streak} non-finite steps in a row (the last at step {step}) exceed "
                   f"config.train.max_consecutive_skips={self.max_skips}; lower "
                   "config.optim.lr or set config.optim.grad_clip_norm")
          break
    self.pending.clear()
    if error:
      try:  # let the saves already started (all finite) complete first
        checkpoint.wait(self.manager)
      except CheckpointError:
        pass
      raise NonFiniteError(error)
    return skipped


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _save(manager, state: dict, guard: _NonFiniteGuard, data_iterator, meta: dict):
  """Starts an async save of `state`, after checking that nothing in it is NaN / Inf."""
  guard.check()
  if not bool(_all_finite({"params": state["params"], "model_state": state["model_state"]})):
    raise NonFiniteError(f"parameters are non-finite at step {int(state['step'])}; not saved; "
                         "lower config.optim.lr or set config.optim.grad_clip_norm")
  checkpoint.save(manager, state, data_iterator=data_iterator, meta=meta)


def _save_and_stop(manager, state: dict, save):
  """Preemption: saves the current step (unless already saved), waits, raises Preempted."""
  step = int(state["step"])
  if step not in manager.all_steps():
    save(state)
  checkpoint.wait(manager)
  preemption.clear()  # served
  raise preemption.Preempted(step, str(manager.directory))


def run(config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False) -> dict:
  """Runs `config` in `workdir`: every stage of `config.stages` in order, or the config itself.

  Stages run in `config.stage_order` (ConfigDict sorts its keys). A stage's
  `init.pretrained_workdir` of the form "@name" points at the
  workdir of the earlier stage `name`. A stage `{"import_hf_bert": DIR}` trains
  nothing: it converts the HF BERT in DIR into its workdir (once). With stages, writes
  `<workdir>/summary.json` with each classification stage's test accuracy and
  macro-F1, and `<workdir>/validation_curves.png`. Every stage's config is checked
  against the run already in `workdir` before any trains; with `overwrite` a
  different run is moved aside as a whole (`<workdir>.old-<timestamp>`).
  """
  if "stages" not in config:
    return train_and_evaluate(config, workdir, overwrite=overwrite)
  order = list(config.get("stage_order", ())) or list(config.stages)
  stages = {name: _stage_config(config, name, workdir) for name in order}
  changes = [f"stage {name}: {c}" for name, stage in stages.items() if "import_hf_bert" not in stage
             for c in workdir_config_changes(stage, os.path.join(workdir, name))]
  if changes and not overwrite:
    raise ConfigError(
        f"workdir {workdir} holds a run with a different config ({'; '.join(changes[:5])}); "
        "use a new --workdir, or pass --overwrite to move the old run aside")
  if changes:
    _say(f"--overwrite: moved the earlier run in {workdir} to {move_aside(workdir)}")
  os.makedirs(workdir, exist_ok=True)
  results = {}
  for name, stage in stages.items():
    if "import_hf_bert" in stage:
      _import_stage(stage.import_hf_bert, os.path.join(workdir, name))
      continue
    _say(f"=== stage {name} ===")
    results[name] = train_and_evaluate(stage, os.path.join(workdir, name))
  summary = {
      name: {"test_accuracy": r["test"]["accuracy"], "test_macro_f1": r["test"]["macro_f1"]}
      for name, r in results.items() if "test" in r and "accuracy" in r["test"]
  }
  if jax.process_index() == 0:
    writers.write_json(os.path.join(workdir, "summary.json"), summary)
    _say(format_summary(summary))
    plot_validation_curves(workdir, list(summary), os.path.join(workdir, "validation_curves.png"))
    if config.get("report") == "trainable_params":  # configs/strategies.py
      from ptft_jax import compare  # late: `python -m ptft_jax.compare` imports train

      _say(compare.write_report(workdir, list(summary)))
  return {"stages": results, "summary": summary}


def _stage_config(config: ml_collections.ConfigDict, name: str,
                  workdir: str) -> ml_collections.ConfigDict:
  """Stage `name` as a config of its own, with "@stage" references made paths."""
  if name not in config.stages:
    raise ConfigError(f"config.stage_order: no stage named {name!r} in config.stages")
  stage = ml_collections.ConfigDict(to_dict(config.stages[name]))
  if "import_hf_bert" in stage:
    return stage
  ref = stage.init.pretrained_workdir
  if ref.startswith("@"):  # "@name", or "@name/best" for that stage's best checkpoint
    if ref[1:].split("/")[0] not in config.stages:
      raise ConfigError(
          f"config.stages.{name}.init.pretrained_workdir: no stage named {ref[1:]!r}")
    stage.init.pretrained_workdir = os.path.join(workdir, ref[1:])
  return stage


def _import_stage(src: str, stage_dir: str):
  """Converts HF BERT weights into `stage_dir`, unless an earlier run already did."""
  from ptft_jax.convert import workdir as convert_workdir

  if os.path.isfile(os.path.join(stage_dir, "model_config.json")):
    _say(f"imported weights already in {stage_dir}")
    return
  config, heads = convert_workdir.import_hf_bert(src, stage_dir)
  _say(f"imported {src} ({config.num_layers} layers, hidden {config.hidden_size}, "
       f"heads {heads or '-'}) -> {stage_dir}")


def format_summary(summary: dict) -> str:
  lines = [f"{'stage':<12} {'test accuracy':>14} {'test macro-F1':>14}"]
  for name, r in summary.items():
    lines.append(f"{name:<12} {r['test_accuracy']:>14.4f} {r['test_macro_f1']:>14.4f}")
  return "\n".join(lines)


def read_metrics(workdir: str, split: str = "validation") -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [r for r in map(json.loads, f) if r.get("split") == split]


def plot_validation_curves(workdir: str, stages: list[str], out_path: str, key="accuracy"):
  """Validation `key` against step for each stage, one line each, to a PNG."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4))
  for name in stages:
    records = [r for r in read_metrics(os.path.join(workdir, name)) if key in r]
    ax.plot([r["step"] for r in records], [r[key] for r in records], marker="o", label=name)
  ax.set_xlabel("step")
  ax.set_ylabel(f"validation {key}")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
