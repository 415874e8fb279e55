"""The compiled pieces: state init, train step, eval step. Pure functions over a state dict.

The train state is a plain dict:
  {"step": int32[], "params": ..., "model_state": {collection: ...},
   "opt_state": ..., "rng": uint32[2]}
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ptft_jax.optim.precision import cast_floating
from ptft_jax.train import accumulate


def init_variables(model: nn.Module, batch: dict, rng: jax.Array) -> tuple[dict, dict]:
  """Returns (params, model_state) for `model` on an example `batch`."""
  params_rng, dropout_rng = jax.random.split(rng)
  variables = model.init(
      {"params": params_rng, "dropout": dropout_rng}, batch, train=False)
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def make_train_step(
    model: nn.Module, task: Any, tx: optax.GradientTransformation, *,
    heads: Sequence[str] | None = None, trainable: Any = None, nan_policy: str = "stop",
    accumulation_steps: int = 1, compute_dtype: Any = None, param_fn: Callable | None = None,
) -> Callable[[dict, dict], tuple[dict, dict]]:
  """Builds `train_step(state, batch) -> (state, metrics)`; jit it (donate the state).

  Args:
    model: a `Model` (backbone + heads).
    task: provides `inputs(batch, rng, train)` and `loss(outputs, inputs, batch)`.
    tx: the optax transformation (param groups already inside).
    heads: heads to run (default: all of the model's heads, which the task chose).
    trainable: optional bool tree over params; only these leaves are
      differentiated (frozen ones get zero gradients and no backward pass) and
      the reported gradient norm covers only them.
      BatchNorms whose params are all frozen use their running averages and
      keep their statistics (backbones with `batch_norm="auto"`, see models/resnet.py).
    nan_policy: metrics["finite"] says whether the loss and gradient norm are
      finite (the host reads it only at log steps and saves). "skip" also keeps
      params, optimizer and model state unchanged on a non-finite step (a select
      inside the step, no host sync); "stop" (default) leaves the host to stop.
    accumulation_steps: split the batch into this many microbatches and average
      their gradients inside the step (see accumulate.py).
    compute_dtype: e.g. jnp.bfloat16: params and floating inputs are cast to it
      inside the loss, outputs back to float32 (see optim/precision.py).
    param_fn: params -> the params the model runs on, applied inside the loss
      (e.g. `lora.merge_lora`); gradients flow through it.
  """
  heads = tuple(heads) if heads else None
  if nan_policy not in ("stop", "skip"):
    raise ValueError(f"nan_policy must be 'stop' or 'skip', got {nan_policy!r}")

  def train_step(state, batch):
    rng, step_rng = jax.random.split(state["rng"])
    model_state = state["model_state"]
    # Trace time, no cost per step: e.g. ResNet's "auto" BatchNorms use running averages
    # when their params are frozen (models.base.Model.with_frozen_norms).
    adapt = getattr(model, "with_frozen_norms", None)
    step_model = adapt(trainable, model_state) if adapt else model

    def loss_fn(params, ms, batch, rng):  # one (micro)batch
      inputs_rng, dropout_rng = jax.random.split(rng)
      inputs = task.inputs(batch, inputs_rng, True)
      params = cast_floating(param_fn(params) if param_fn else params, compute_dtype)
      variables = {"params": params, **ms}
      mutable = list(ms) or False
      out = step_model.apply(variables, cast_floating(inputs, compute_dtype), train=True,
                             heads=heads, rngs={"dropout": dropout_rng}, mutable=mutable)
      outputs, new_ms = out if mutable else (out, ms)
      if compute_dtype is not None:
        outputs = cast_floating(outputs, jnp.float32)
      loss, metrics = task.loss(outputs, inputs, batch)
      return loss, (metrics, new_ms)

    (loss, (metrics, new_model_state)), grads = accumulate.value_and_grad(
        loss_fn, state["params"], model_state, batch, step_rng, trainable=trainable,
        steps=accumulation_steps)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if trainable is None:
      grad_leaves = jax.tree_util.tree_leaves(grads)
    else:
      grad_leaves = [g for g, t in zip(jax.tree_util.tree_leaves(grads),
                                       jax.tree_util.tree_leaves(trainable), strict=True) if t]
    grad_norm = optax.tree.norm(grad_leaves)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if nan_policy == "skip":  # a non-finite step changes nothing but the step and the rng
      keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)
      params = keep(params, state["params"])
      opt_state = keep(opt_state, state["opt_state"])
      new_model_state = keep(new_model_state, model_state)
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm, "finite": finite}
    new_state = {"step": state["step"] + 1, "params": params, "model_state": new_model_state,
                 "opt_state": opt_state, "rng": rng}
    return new_state, metrics

  return train_step


def make_eval_step(model: nn.Module, task: Any, *, heads: Sequence[str] | None = None,
                   compute_dtype: Any = None, param_fn: Callable | None = None):
  """Builds `eval_step(params, model_state, batch) -> per-example outputs` (see ptft_jax/tasks).

  `compute_dtype` and `param_fn` as in `make_train_step`.
  """
  heads = tuple(heads) if heads else None

  def eval_step(params, model_state, batch):
    inputs = task.inputs(batch, jax.random.PRNGKey(0), False)
    params = cast_floating(param_fn(params) if param_fn else params, compute_dtype)
    outputs = model.apply({"params": params, **model_state}, cast_floating(inputs, compute_dtype),
                          train=False, heads=heads)
    if compute_dtype is not None:
      outputs = cast_floating(outputs, jnp.float32)
    out = task.eval_outputs(outputs, inputs, batch)
    out["valid"] = batch.get("valid", jnp.ones(batch[next(iter(batch))].shape[:1], bool))
    return out

  return eval_step
