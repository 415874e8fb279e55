"""Gradients for the train step: only of trainable leaves, optionally over microbatches.

`value_and_grad(loss_fn, params, model_state, batch, rng, trainable=..., steps=k)`

* Differentiates only the leaves marked trainable; frozen leaves enter the loss
  as constants, so no backward pass is built for them (a frozen input-side
  prefix costs a forward pass only) and their gradients are zeros.
* With `steps = k > 1` it splits the batch into k microbatches inside the one
  compiled step and runs them with `lax.scan`, threading the model state
  (BatchNorm statistics) from one microbatch to the next and averaging loss,
  metrics and gradients. Microbatch i takes rows i, i + k, i + 2k, ..., so each
  device keeps its own rows (no resharding). Memory is that of one microbatch.

The average is weighted when the loss says how many terms it averages:
`metrics["loss_count"]` (`tasks.losses.LOSS_COUNT`; the causal-LM and SFT tasks
report their target tokens). Microbatch i then counts w_i times: loss and
gradients are sum_i w_i * L_i / sum_i w_i = (sum of all terms) / (count of all
terms), exactly the one-batch value even when microbatches hold different
numbers of target tokens; other metrics are weighted alike and `loss_count` is
summed. Without it every microbatch weighs 1 (the plain mean).

For losses that are means of per-example terms over equal-size microbatches
(classification, regression, autoencoding) or that report `loss_count` (causal
LM, SFT) this equals one step on the whole batch. Losses that couple examples
(contrastive negatives, BatchNorm batch statistics) see microbatches instead.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ptft_jax.tasks.losses import LOSS_COUNT

LossFn = Callable[[Any, dict, dict, jax.Array], tuple[jax.Array, tuple[dict, dict]]]


def _split(params, trainable):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  flags = ([True] * len(leaves) if trainable is None
           else [bool(t) for t in jax.tree_util.tree_leaves(trainable)])
  if len(flags) != len(leaves):
    raise ValueError(f"trainable has {len(flags)} leaves, params {len(leaves)}")
  train = [x for x, t in zip(leaves, flags, strict=True) if t]

  def rebuild(train_leaves):
    it = iter(train_leaves)
    return treedef.unflatten([next(it) if t else x for x, t in zip(leaves, flags, strict=True)])

  def full_grads(train_grads):
    it = iter(train_grads)
    return treedef.unflatten(
        [next(it) if t else jnp.zeros_like(x) for x, t in zip(leaves, flags, strict=True)])

  return train, rebuild, full_grads


def microbatches(batch: dict, steps: int) -> dict:
  """[B, ...] -> [steps, B / steps, ...]; microbatch i holds rows i, i + steps, ..."""
  def split(x):
    if x.shape[0] % steps:
      raise ValueError(f"batch of {x.shape[0]} rows does not split into {steps} microbatches")
    return jnp.swapaxes(x.reshape((x.shape[0] // steps, steps) + x.shape[1:]), 0, 1)
  return jax.tree_util.tree_map(split, batch)


def value_and_grad(
    loss_fn: LossFn, params, model_state: dict, batch: dict, rng: jax.Array, *,
    trainable: Any = None, steps: int = 1,
):
  """Returns `((loss, (metrics, new_model_state)), grads)` like `jax.value_and_grad`.

  Args:
    loss_fn: `(params, model_state, batch, rng) -> (loss, (metrics, new_model_state))`.
    params: the full params tree; gradients come back for all of it (zeros where frozen).
    model_state: non-param collections, threaded through the microbatches.
    batch: `[B, ...]` arrays; B must divide by `steps`.
    rng: the step's key; microbatch i uses `fold_in(rng, i)` (the key itself when steps=1).
    trainable: optional bool tree over params; False leaves get no backward pass.
    steps: number of microbatches (gradient accumulation).
  """
  train, rebuild, full_grads = _split(params, trainable)
  grad_fn = jax.value_and_grad(
      lambda t, ms, b, r: loss_fn(rebuild(t), ms, b, r), has_aux=True)
  if steps == 1:
    out, grads = grad_fn(train, model_state, batch, rng)
    return out, full_grads(grads)

  micro = microbatches(batch, steps)
  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  (loss_shape, (metrics_shape, _)), grads_shape = jax.eval_shape(
      grad_fn, train, model_state, first, rng)
  zeros = lambda tree: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), tree)
  add = lambda a, b: jax.tree_util.tree_map(jnp.add, a, b)

  def weighted(metrics):
    """(this microbatch's weight, metrics times it; LOSS_COUNT itself as is)."""
    w = metrics[LOSS_COUNT].astype(jnp.float32) if LOSS_COUNT in metrics else jnp.float32(1)
    scaled = {k: v if k == LOSS_COUNT else v * w.astype(v.dtype) for k, v in metrics.items()}
    return w, scaled

  def body(carry, xs):
    grad_sum, loss_sum, metrics_sum, weight_sum, ms = carry
    i, mb = xs
    (loss, (metrics, ms)), grads = grad_fn(train, ms, mb, jax.random.fold_in(rng, i))
    w, metrics = weighted(metrics)
    grads = jax.tree_util.tree_map(lambda g: g * w.astype(g.dtype), grads)
    return (add(grad_sum, grads), loss_sum + loss * w.astype(loss.dtype),
            add(metrics_sum, metrics), weight_sum + w, ms), None

  init = (zeros(grads_shape), zeros(loss_shape), zeros(metrics_shape), jnp.float32(0),
          model_state)
  (grad_sum, loss_sum, metrics_sum, weight_sum, model_state), _ = jax.lax.scan(
      body, init, (jnp.arange(steps), micro))
  # No terms at all: every sum is 0 (the losses divide by max(count, 1)); keep it 0.
  total = jnp.maximum(weight_sum, jnp.finfo(jnp.float32).tiny)
  mean = lambda x: x / total.astype(x.dtype)
  metrics = {k: v if k == LOSS_COUNT else mean(v) for k, v in metrics_sum.items()}
  return ((mean(loss_sum), (metrics, model_state)),
          full_grads(jax.tree_util.tree_map(mean, grad_sum)))
