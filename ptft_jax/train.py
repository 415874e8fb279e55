"""The train loop: one loop for pretraining and fine-tuning. Read it top to bottom.

`train_and_evaluate(config, workdir)` runs one stage; `run(config, workdir)`
runs a config's stages in order (or the config itself when it has none).
"""

import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ptft_jax import checkpoint, data, inference, optim, sharding, steps, tasks, writers
from ptft_jax.config_utils import check_workdir_config, to_dict
from ptft_jax.errors import ConfigError
from ptft_jax.models import build_model

log = logging.getLogger("ptft_jax")


def _say(msg: str):
  if jax.process_index() == 0:
    print(msg, flush=True)


def evaluate(eval_step, state, task, bundle, split, mesh) -> dict:
  """One full pass over `split`; returns the task's metrics (see `Task.summarize`)."""
  gathered: dict[str, list[np.ndarray]] = {}
  for batch in bundle.eval_batches(split):
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains one stage in `workdir` (resuming if it holds checkpoints); returns final metrics."""
  workdir = os.path.abspath(workdir)
  check_workdir_config(config, workdir)
  mesh = sharding.make_mesh(config.get("mesh"))
  per_process_batch = sharding.check_batch_size(config.data.batch_size, mesh)
  sharding.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")
  del per_process_batch

  # --- data --------------------------------------------------------------------------
  bundle = data.make_data(config.data, seed=config.seed)
  inference.write_labels(workdir, config, bundle.info)  # outputs speak in class names

  # --- model, task, optimizer ------------------------------------------------------------
  task, heads = tasks.build_task(config, bundle.info)
  model = build_model(config.model, heads)
  total_steps = int(config.train.steps)
  example = _model_batch(task, data.example_batch(bundle))
  example = jax.tree_util.tree_map(lambda x: x[:2], example)  # shapes only
  example = jax.jit(task.inputs, static_argnums=2)(  # e.g. adds masked positions
      example, jax.random.PRNGKey(0), False)
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  replicated = sharding.replicated(mesh)
  params, model_state = jax.jit(
      lambda r: steps.init_variables(model, example, r), out_shardings=replicated)(init_rng)
  tx, groups = optim.make_optimizer(params, config.optim, total_steps)
  frozen = {g.name for g in groups if g.frozen}
  labels, _ = optim.assign_groups(params, config.optim)
  trainable = jax.tree_util.tree_map(lambda lab: lab not in frozen, labels)
  _say(f"parameter groups:\n{optim.group_table(groups)}")

  # --- init: resume | transfer | fresh ------------------------------------------------------
  manager = checkpoint.make_manager(workdir, max_to_keep=config.train.get("keep", 3))
  if config.init.pretrained_workdir and manager.latest_step() is None:
    pretrained, src_step = checkpoint.load_params(config.init.pretrained_workdir)
    loaded, report = checkpoint.transfer(
        {"params": params, "model_state": model_state}, pretrained,
        load=tuple(config.init.load), skip=tuple(config.init.skip))
    params, model_state = loaded["params"], loaded["model_state"]
    _say(f"transfer from {config.init.pretrained_workdir} (step {src_step}):\n"
         + checkpoint.format_report(report))
    with open(os.path.join(workdir, "transfer_report.json"), "w") as f:
      json.dump(report, f, indent=1)
  opt_state = jax.jit(tx.init, out_shardings=replicated)(params)
  state = jax.device_put(
      {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
       "opt_state": opt_state, "rng": state_rng}, replicated)
  if manager.latest_step() is not None:
    state = checkpoint.restore(manager, state, data_iterator=bundle.train_iterator)
    _say(f"resumed from {checkpoint.checkpoint_dir(workdir)} at step {int(state['step'])}")

  # --- compiled steps --------------------------------------------------------------------
  train_step = jax.jit(steps.make_train_step(model, task, tx, trainable=trainable),
                       donate_argnums=(0,))
  eval_step = jax.jit(steps.make_eval_step(model, task))
  writer = writers.MetricWriter(workdir, tensorboard=config.train.get("tensorboard", True))
  meta = {"model": config.model.name, "task": config.task.name, "dataset": config.data.dataset}

  # --- loop -----------------------------------------------------------------------------
  start = int(state["step"])
  progress = writers.Progress(total_steps, start)
  tc = config.train
  for step in range(start + 1, total_steps + 1):
    batch = _model_batch(task, next(bundle.train_iterator))
    state, step_metrics = train_step(state, sharding.host_to_global(batch, mesh))
    if step == start + 1:
      jax.block_until_ready(step_metrics)
      progress.tick(step)
    if step % tc.log_every == 0 or step == total_steps:
      scalars = writer.write(step, step_metrics)
      _check_finite(scalars, step)
      _say(f"{progress.line(step)}  " + "  ".join(
          f"{k}={v:.4g}" for k, v in scalars.items()))
    if tc.eval_every and (step % tc.eval_every == 0 or step == total_steps):
      t0 = time.perf_counter()
      result = evaluate(eval_step, state, task, bundle, "validation", mesh)
      writer.write(step, _scalars(result), split="validation")
      progress.pause(time.perf_counter() - t0)
    if step % tc.checkpoint_every == 0 or step == total_steps:
      t0 = time.perf_counter()
      checkpoint.save(manager, state, data_iterator=bundle.train_iterator, meta=meta)
      progress.pause(time.perf_counter() - t0)
  manager.wait_until_finished()

  # --- final evaluation --------------------------------------------------------------------
  final = {}
  for split in config.get("eval_splits", ("validation", "test")):
    final[split] = evaluate(eval_step, state, task, bundle, split, mesh)
    writer.write(total_steps, _scalars(final[split]), split=f"final_{split}")
    if jax.process_index() == 0:
      with open(os.path.join(workdir, f"eval_{split}.json"), "w") as f:
        json.dump({"step": int(state["step"]), **final[split]}, f, indent=1)
    _say(f"{split}: " + "  ".join(f"{k}={v:.4f}" for k, v in _scalars(final[split]).items()))
  writer.close()
  manager.close()
  return final


def _model_batch(task, batch: dict) -> dict:
  """Pretraining tasks never see labels; the model never sees the padding mask."""
  drop = {"valid"} if task.uses_labels else {"valid", "label"}
  return {k: v for k, v in batch.items() if k not in drop}


def _check_finite(scalars: dict, step: int):
  loss = scalars.get("loss")
  if loss is not None and not np.isfinite(loss):
    raise FloatingPointError(
        f"loss is {loss} at step {step}; lower config.optim.lr or set config.optim.grad_clip_norm")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs `config` in `workdir`: every stage of `config.stages` in order, or the config itself.

  Stages run in `config.stage_order` (ConfigDict sorts its keys). A stage's
  `init.pretrained_workdir` of the form "@name" points at the
  workdir of the earlier stage `name`. A stage `{"import_hf_bert": DIR}` trains
  nothing: it converts the HF BERT in DIR into its workdir (once). With stages, writes
  `<workdir>/summary.json` with each classification stage's test accuracy and
  macro-F1, and `<workdir>/validation_curves.png`.
  """
  if "stages" not in config:
    return train_and_evaluate(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  results = {}
  order = list(config.get("stage_order", ())) or list(config.stages)
  for name in order:
    if name not in config.stages:
      raise ConfigError(f"config.stage_order: no stage named {name!r} in config.stages")
    stage = config.stages[name]
    stage = ml_collections.ConfigDict(to_dict(stage))
    if "import_hf_bert" in stage:
      _import_stage(stage.import_hf_bert, os.path.join(workdir, name))
      continue
    ref = stage.init.pretrained_workdir
    if ref.startswith("@"):
      if ref[1:] not in config.stages:
        raise ConfigError(
            f"config.stages.{name}.init.pretrained_workdir: no stage named {ref[1:]!r}")
      stage.init.pretrained_workdir = os.path.join(workdir, ref[1:])
    _say(f"=== stage {name} ===")
    results[name] = train_and_evaluate(stage, os.path.join(workdir, name))
  summary = {
      name: {"test_accuracy": r["test"]["accuracy"], "test_macro_f1": r["test"]["macro_f1"]}
      for name, r in results.items() if "test" in r and "accuracy" in r["test"]
  }
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=1)
    _say(format_summary(summary))
    plot_validation_curves(workdir, list(summary), os.path.join(workdir, "validation_curves.png"))
  return {"stages": results, "summary": summary}


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
