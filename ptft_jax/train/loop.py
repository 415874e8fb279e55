"""The train loop: one function trains one stage, pretraining and fine-tuning alike.

Read `train_and_evaluate` top to bottom: data -> model, task and optimizer ->
initial state (resume | transfer | fresh) -> compiled steps -> the loop ->
final evaluation. Stages of a config are run by stages.py; reports by reports.py.

Reliability (docs/reliability.md): a SIGTERM makes the loop save the current
step and raise `preemption.Preempted` (the CLI exits 0); a NaN / Inf follows
`config.train.nan_policy` and nothing non-finite is ever saved; result JSONs are
replaced atomically, so a failing run leaves what an earlier one wrote.
"""

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ptft_jax import data, optim, tasks
from ptft_jax.config.workdir import write_or_check_workdir_config
from ptft_jax.data.labels_json import write_labels_json
from ptft_jax.errors import CheckpointError, ConfigError, NonFiniteError
from ptft_jax.models import build_model
from ptft_jax.parallel import memory, sharding
from ptft_jax.train import checkpoint, early_stopping, finetune, preemption, steps, writers
from ptft_jax.train.nonfinite import NonFiniteGuard, all_finite
from ptft_jax.utils import absolute_path, is_remote, real_path, write_json_atomic


def say(msg: str):
  """Prints `msg` once (process 0) and flushes: the run's console lines."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       overwrite: bool = False) -> dict:
  """Trains one stage in `workdir` (resuming if it holds checkpoints); returns final metrics.

  Returns {split: metrics} for `config.eval_splits` (default validation, test).
  A workdir holding a run with another config is refused, or with `overwrite`
  moved aside to `<workdir>.old-<timestamp>`. A preemption request (SIGTERM under
  the CLI or inside `preemption.watch()`) saves the current step and raises
  `preemption.Preempted`; a non-finite loss raises NonFiniteError after the saves
  already started have finished.
  """
  workdir = absolute_path(workdir)  # a gs:// URL stays one
  _check_not_in_pretrained(config, workdir)
  nan_policy = config.train.get("nan_policy", "stop")
  if nan_policy not in ("stop", "skip"):
    raise ConfigError(f"config.train.nan_policy={nan_policy!r}: choose 'stop' or 'skip'")
  moved = write_or_check_workdir_config(config, workdir, overwrite=overwrite)
  if moved:
    say(f"--overwrite: moved the earlier run in {workdir} to {moved}")
  mesh = sharding.make_mesh(config.get("mesh"))
  sharding.check_batch_size(config.data.batch_size, mesh)
  sharding.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")

  # --- data --------------------------------------------------------------------------------
  # Image runs: the mean/std (and an image folder's resize/crop) the pretrained weights
  # expect (config.data.preprocessing over <init>/preprocessing.json), recorded in the workdir.
  bundle = data.make_data(config.data, seed=config.seed,
                          preprocessing=data.resolve_preprocessing(config, workdir))
  write_labels_json(workdir, config, bundle.info)  # predictions speak in class names

  # --- model, task, optimizer ---------------------------------------------------------------
  task, heads = tasks.build_task(config, bundle.info)
  model = build_model(optim.precision.model_config(config), heads)  # the compute dtype
  total_steps = int(config.train.steps)
  example = _example_inputs(task, bundle)
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  layout = sharding.Layout.from_config(config, mesh)  # params sharded by logical-axis rules
  params, model_state = layout.init(lambda r: steps.init_variables(model, example, r), init_rng)
  ft = finetune.FineTuning.from_config(config, mesh)  # LoRA, accumulation, precision, EMA
  params = ft.add_adapters(params, jax.random.fold_in(init_rng, 1))
  tx, groups = optim.make_optimizer(params, config.optim, total_steps)  # groups + preset
  trainable = optim.trainable_mask(params, groups)
  say(f"parameter groups:\n{optim.group_table(groups)}")
  say(finetune.write_param_groups_json(workdir, groups, params, ft))

  # --- initial state: resume | transfer | fresh ------------------------------------------------
  removed = checkpoint.remove_incomplete(workdir)  # a save or cleanup that a kill cut short
  if removed:
    say(f"removed incomplete checkpoint(s) {', '.join(removed)} in "
        f"{checkpoint.checkpoint_dir(workdir)}")
  manager = checkpoint.make_manager(workdir, max_to_keep=config.train.get("keep", 3))
  if config.init.pretrained_workdir and manager.latest_step() is None:
    params, model_state = _transfer(config, workdir, params, model_state, layout)
  opt_state = layout.init(tx.init, params)  # sharded like the params it mirrors
  state = layout.put(
      {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
       "opt_state": opt_state, "rng": state_rng})
  say(memory.report(state, layout, trainable, config=config, example=example))
  memory.check_fits(state, layout, trainable, config=config, example=example)  # pre-compile
  if manager.latest_step() is not None:
    state = checkpoint.restore(manager, state, data_iterator=bundle.train_iterator)
    say(f"resumed from {checkpoint.checkpoint_dir(workdir)} at step {int(state['step'])}")

  # --- compiled steps ------------------------------------------------------------------------
  # Traced with the mesh in context: the model keeps its activations split over the batch.
  train_step = jax.jit(sharding.traced_in(mesh, steps.make_train_step(
      model, task, tx, trainable=trainable, nan_policy=nan_policy, **ft.step_kwargs())),
      donate_argnums=(0,), out_shardings=(layout.state_shardings(state), None))
  eval_step = jax.jit(sharding.traced_in(
      mesh, steps.make_eval_step(model, task, **ft.step_kwargs(train=False))))
  run_evaluation = functools.partial(evaluate, eval_step, task=task, bundle=bundle, mesh=mesh)
  writer = writers.MetricWriter(workdir, tensorboard=config.train.get("tensorboard", True),
                                start_step=int(state["step"]))  # drops rows it will log again
  guard = NonFiniteGuard(nan_policy, config.train.get("max_consecutive_skips", 10))
  saver = _Saver(manager, guard, bundle.train_iterator,
                 meta={"model": config.model.name, "task": config.task.name,
                       "dataset": config.data.dataset})

  # --- the loop ------------------------------------------------------------------------------
  tc = config.train
  start = int(state["step"])
  keeper = early_stopping.keeper(config, workdir, start)  # None unless early_stopping.metric
  progress = writers.Progress(total_steps, start)
  stop_error = None  # set when a non-finite value stops the run
  for step in range(start + 1, total_steps + 1):
    if keeper and keeper.stopped:  # a resumed run that had stopped early
      break
    if preemption.should_stop(step - 1):  # SIGTERM arrived: save this step, exit 0
      writer.flush()  # the rows up to the saved step (a gs:// metrics.jsonl uploads when due)
      saver.save_and_raise_preempted(state)
    batch = tasks.model_batch(task, next(bundle.train_iterator))
    state, step_metrics = train_step(state, sharding.host_to_global(batch, mesh))
    guard.add(step, step_metrics["finite"], step_metrics["loss"])  # no host sync here
    if step == start + 1:
      jax.block_until_ready(step_metrics)
      progress.tick(step)
    last = step == total_steps
    if step % tc.log_every == 0 or last:
      verdict = guard.verdict()
      if verdict.error:
        stop_error = verdict.error
        break
      logged = {k: v for k, v in step_metrics.items() if k != "finite"}
      if nan_policy == "skip":
        logged["skipped_steps"] = verdict.skipped
      scalars = writer.write(step, logged)
      say(f"{progress.line(step)}  " + "  ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
    if tc.eval_every and (step % tc.eval_every == 0 or last):
      t0 = time.perf_counter()
      # Runs to the end even when preempted: its result is part of the run's history
      # (metrics, early stopping); the check at the next step then saves and exits.
      result = run_evaluation(ft.eval_state(state), "validation")
      writer.write(step, _scalars(result), split="validation")
      progress.pause(time.perf_counter() - t0)
      if keeper:
        keeper.record_and_save_best(step, result, functools.partial(ft.export, state))
        if keeper.stopped:
          say(f"early stopping at step {step}: no {keeper.rule.metric} improvement in "
              f"{keeper.rule.patience} evaluations (best {keeper.rule.best:.4g} at step "
              f"{keeper.rule.best_step})")
          writer.flush()
          stop_error = saver.save(state)
          break
    if step % tc.checkpoint_every == 0 or last:
      t0 = time.perf_counter()
      writer.flush()
      stop_error = saver.save(state)
      if stop_error:
        break
      progress.pause(time.perf_counter() - t0)
  if stop_error:
    saver.finish_started_saves()
    writer.flush()  # the rows logged so far, as a local file has them (gs:// uploads when due)
    raise NonFiniteError(stop_error)
  checkpoint.wait(manager)  # a failed background commit surfaces here, not as "saved"

  # --- final evaluation ----------------------------------------------------------------------
  final, final_state = {}, ft.eval_state(state)
  # Read straight into the training shardings: no device ever holds the whole model.
  best = keeper.best_state(layout) if (
      keeper and early_stopping.restore_best(config)) else None
  if best is not None:  # the best validation checkpoint, not the last step
    final_state = {**best[0], "step": best[1]}
    say(f"final evaluation on the best checkpoint (step {best[1]})")
  for split in config.get("eval_splits", ("validation", "test")):
    final[split] = run_evaluation(final_state, split, should_stop=preemption.requested)
    if final[split] is None:  # training is saved; a restart runs only this evaluation
      writer.flush()
      saver.save_and_raise_preempted(state)
    writer.write(total_steps, _scalars(final[split]), split=f"final_{split}")
    if jax.process_index() == 0:
      write_json_atomic(os.path.join(workdir, f"eval_{split}.json"),
                        {"step": int(final_state["step"]), **final[split]})
    say(f"{split}: " + "  ".join(f"{k}={v:.4f}" for k, v in _scalars(final[split]).items()))
  ft.write_merged_checkpoint(state, workdir)  # LoRA runs: <workdir>/merged, adapters folded in
  if keeper:
    keeper.close()
  writer.close()
  manager.close()
  return final


def evaluate(eval_step, state: dict, split: str, *, task, bundle, mesh,
             should_stop=None) -> dict | None:
  """One full pass over `split`; returns the task's metrics (see the task's `summarize`).

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


def _example_inputs(task, bundle) -> dict:
  """Two rows of model inputs (after the task's own input step, e.g. masking): shapes only."""
  example = tasks.model_batch(task, data.example_batch(bundle))
  example = jax.tree_util.tree_map(lambda x: x[:2], example)
  return jax.jit(task.inputs, static_argnums=2)(example, jax.random.PRNGKey(0), False)


def _transfer(config: ml_collections.ConfigDict, workdir: str, params, model_state,
              layout: sharding.Layout):
  """Params and model state with the pretrained run's leaves loaded per `config.init`.

  The source is read straight into `layout`'s shardings (each device reads its slice).
  Writes `<workdir>/transfer_report.json` (loaded / initialized / ignored paths).
  """
  source = config.init.pretrained_workdir
  # A copy: the source's paths (heads this run drops) do not belong in this run's summary.
  pretrained, src_step = finetune.load_pretrained(
      source, sharding=dataclasses.replace(layout, replicated_dims={}), like=params)
  loaded, report = checkpoint.transfer(
      {"params": params, "model_state": model_state}, pretrained,
      load=tuple(config.init.load), skip=tuple(config.init.skip))
  path = os.path.join(workdir, "transfer_report.json")
  say(f"transfer from {source} (step {src_step}; every path in {path}):\n"
      + checkpoint.format_report(report))
  if jax.process_index() == 0:
    write_json_atomic(path, report)
  return loaded["params"], loaded["model_state"]


def _check_not_in_pretrained(config: ml_collections.ConfigDict, workdir: str):
  """Fine-tuning only reads the pretrained run; writing into it could destroy it."""
  pretrained = config.init.pretrained_workdir
  if not pretrained:
    return
  pretrained, workdir = real_path(pretrained), real_path(workdir)
  sep = "/" if is_remote(pretrained) else os.sep
  if workdir == pretrained or workdir.startswith(pretrained + sep):
    raise ConfigError(
        f"--workdir {workdir} is config.init.pretrained_workdir or inside it; a fine-tuning run "
        "must write to its own workdir (the pretrained run is only read)")


class _Saver:
  """Checkpoint saves that never write a non-finite state."""

  def __init__(self, manager, guard: NonFiniteGuard, data_iterator, meta: dict):
    self.manager, self.guard, self.data_iterator, self.meta = manager, guard, data_iterator, meta

  def save(self, state: dict) -> str | None:
    """Starts an async save of `state`; returns why it did not (something non-finite), or None."""
    error = self.guard.verdict().error  # the steps since the last log must be finite too
    if error:
      return error
    if not bool(all_finite({"params": state["params"], "model_state": state["model_state"]})):
      return (f"parameters are non-finite at step {int(state['step'])}; not saved; "
              "lower config.optim.lr or set config.optim.grad_clip_norm")
    checkpoint.save(self.manager, state, data_iterator=self.data_iterator, meta=self.meta)
    return None

  def finish_started_saves(self):
    """Lets the saves already started (all finite) complete before the run stops."""
    try:
      checkpoint.wait(self.manager)
    except CheckpointError:
      pass

  def save_and_raise_preempted(self, state: dict):
    """Preemption: saves the current step (unless saved), waits, raises Preempted (exit 0)."""
    step = int(state["step"])
    if step not in self.manager.all_steps():
      error = self.save(state)
      if error:
        self.finish_started_saves()
        raise NonFiniteError(error)
    checkpoint.wait(self.manager)
    preemption.clear()  # served
    raise preemption.Preempted(step, str(self.manager.directory))
