"""Scoring a checkpoint without training: `python -m ptft_jax.main --mode=eval`.

  python -m ptft_jax.main --mode=eval --workdir=runs/digits --split=test [--checkpoint=best]

Rebuilds the run from `<workdir>/config.json`, loads the checkpoint, runs the
same evaluation pass as the train loop over `split` and writes the metrics to
`<workdir>/eval_<split>_step<N>.json` (`eval_<split>_best_step<N>.json` for the
best checkpoint), atomically. Nothing else in the workdir is touched.
"""

import os

import jax

from ptft_jax import data
from ptft_jax.inference import predictor as inference
from ptft_jax.optim import precision
from ptft_jax.parallel import sharding
from ptft_jax.train import placement, steps
from ptft_jax.train.loop import evaluate
from ptft_jax.utils import absolute_path, write_json_atomic


def evaluate_checkpoint(workdir: str, split: str = "test",
                        checkpoint: str | int = "latest") -> tuple[dict, str]:
  """Metrics of `checkpoint` of the run in `workdir` on `split`; returns (metrics, JSON path)."""
  workdir = absolute_path(workdir)  # a gs:// run as it is
  config = inference.read_config(workdir)
  mesh = sharding.make_mesh(config.get("mesh"))
  sharding.check_batch_size(config.data.eval_batch_size, mesh, "config.data.eval_batch_size")
  bundle = data.make_data(config.data, seed=config.seed,  # the run's recorded preprocessing
                          preprocessing=data.resolve_preprocessing(config, workdir))
  # Params straight into the run's own shardings (config.mesh, config.sharding), as it trained.
  run = inference.load_run(workdir, checkpoint, sharding_=placement.layout(mesh, config=config),
                           info=bundle.info)
  eval_step = jax.jit(sharding.traced_in(mesh, steps.make_eval_step(
      run.model, run.task, compute_dtype=precision.compute_dtype(config))))
  variables = dict(run.variables)
  state = {"params": variables.pop("params"), "model_state": variables}
  result = evaluate(eval_step, state, split, task=run.task, bundle=bundle, mesh=mesh)
  path = os.path.join(workdir, f"eval_{split}_{run.tag}step{run.step}.json")
  if jax.process_index() == 0:
    write_json_atomic(path, {"step": run.step, "checkpoint": str(checkpoint), "split": split,
                              **result})
  return result, path
