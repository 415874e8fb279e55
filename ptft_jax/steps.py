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

from ptft_jax.models.resnet import freeze_norms


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
) -> Callable[[dict, dict], tuple[dict, dict]]:
  """Builds `train_step(state, batch) -> (state, metrics)`; jit it (donate the state).

  Args:
    model: a `Model` (backbone + heads).
    task: provides `inputs(batch, rng, train)` and `loss(outputs, inputs, batch)`.
    tx: the optax transformation (param groups already inside).
    heads: heads to run (default: all of the model's heads, which the task chose).
    trainable: optional bool tree over params; the reported gradient norm
      covers only these leaves, so frozen leaves' gradients stay dead code.
      BatchNorms whose params are all frozen use their running averages and
      keep their statistics (backbones with `batch_norm="auto"`, see resnet.py).
    nan_policy: metrics["finite"] says whether the loss and gradient norm are
      finite (the host reads it only at log steps and saves). "skip" also keeps
      params, optimizer and model state unchanged on a non-finite step (a select
      inside the step, no host sync); "stop" (default) leaves the host to stop.
  """
  heads = tuple(heads) if heads else None
  if nan_policy not in ("stop", "skip"):
    raise ValueError(f"nan_policy must be 'stop' or 'skip', got {nan_policy!r}")

  def train_step(state, batch):
    rng, step_rng = jax.random.split(state["rng"])
    inputs_rng, dropout_rng = jax.random.split(step_rng)
    model_state = state["model_state"]
    step_model = freeze_norms(model, trainable, model_state)  # trace time, no cost per step

    def loss_fn(params):
      inputs = task.inputs(batch, inputs_rng, True)
      variables = {"params": params, **model_state}
      mutable = list(model_state) or False
      out = step_model.apply(variables, inputs, train=True, heads=heads,
                             rngs={"dropout": dropout_rng}, mutable=mutable)
      outputs, new_model_state = out if mutable else (out, model_state)
      loss, metrics = task.loss(outputs, inputs, batch)
      return loss, (metrics, new_model_state)

    (loss, (metrics, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
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


def make_eval_step(model: nn.Module, task: Any, *, heads: Sequence[str] | None = None):
  """Builds `eval_step(params, model_state, batch) -> per-example outputs` (see tasks.py)."""
  heads = tuple(heads) if heads else None

  def eval_step(params, model_state, batch):
    inputs = task.inputs(batch, jax.random.PRNGKey(0), False)
    outputs = model.apply({"params": params, **model_state}, inputs, train=False, heads=heads)
    out = task.eval_outputs(outputs, inputs, batch)
    out["valid"] = batch.get("valid", jnp.ones(batch[next(iter(batch))].shape[:1], bool))
    return out

  return eval_step
