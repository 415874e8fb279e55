"""Memory arithmetic for the start of a run: what the train state costs on each device.

`report(...)` counts the parameters, the optimizer state and, per device under
the layout's shardings, params + optimizer state + gradients (gradients are
as large as the trainable params and sharded like them). For transformer
backbones it adds an activation estimate (`transformer_activation_bytes`).

The estimate follows the per-layer count of Korthikanti et al., "Reducing
Activation Recomputation in Large Transformer Models" (2022), written for any
activation width `d` (bytes) and intermediate size `I`, with s = sequence
length, b = per-device batch, h = hidden, a = heads, t = tensor-parallel size
and m = 1 byte for each dropout mask (0 without dropout):

  remat "none"           s*b*h*(4d + 2m) + [s*b*(4d*h + 2d*I) + a*s*s*b*(d + m + d*m)] / t
  remat "dots_saveable"  2d*s*b*h + d*[s*b*(4h + I) + a*s*s*b] / t   (matmul outputs kept)
  remat "full"           d*s*b*h (each layer's input) + one layer of "none" while it is recomputed

(for d = 2, m = 1, I = 4h, t = 1 the first is the paper's s*b*h*(34 + 5*a*s/h)).
It leaves out the embeddings and the loss layer's logits, and XLA may fuse or
reorder, so read it as the right order of magnitude, not a promise.
"""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from ptft_jax.parallel.sharding import Layout, batch_divisor

REMAT_POLICIES = ("none", "full", "dots_saveable")


def tree_bytes(tree) -> int:
  return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(tree))


def tree_size(tree) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(tree))


def per_device_bytes(tree, shardings) -> int:
  """Bytes each device holds of `tree` (leaves split evenly by their NamedShardings)."""
  total = 0
  for x, s in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(shardings),
                  strict=True):
    total += int(np.prod(s.shard_shape(np.shape(x)))) * np.dtype(x.dtype).itemsize
  return total


def transformer_activation_bytes(*, batch: int, seq_len: int, hidden: int, intermediate: int,
                                 heads: int, layers: int, dtype_bytes: int = 4,
                                 dropout: bool = True, tensor: int = 1,
                                 remat: str = "none") -> int:
  """Activations kept for the backward pass of `layers` transformer layers (bytes, per device).

  `batch` is the per-device (micro)batch; see the module docstring for the formula.
  """
  s, b, h, i, a, d, t = seq_len, batch, hidden, intermediate, heads, dtype_bytes, tensor
  m = 1 if dropout else 0
  scores = a * s * s * b
  none = s * b * h * (4 * d + 2 * m) + (s * b * (4 * d * h + 2 * d * i) + scores * (
      d + m + d * m)) / t
  if remat == "none":
    per_layer, extra = none, 0
  elif remat == "dots_saveable":
    per_layer, extra = 2 * d * s * b * h + d * (s * b * (4 * h + i) + scores) / t, 0
  elif remat == "full":
    per_layer, extra = d * s * b * h, none
  else:
    raise ValueError(f"remat {remat!r} is not one of {REMAT_POLICIES}")
  return int(layers * per_layer + extra)


def _fmt(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return f"{n:.1f} TiB"


def _activations(config, layout: Layout, example: Mapping[str, Any]) -> str:
  """'activations ~X per device (...)' for transformer backbones, else ''."""
  mc = config.model
  if mc.get("name") not in ("bert", "gpt") or "input_ids" not in example:
    return ""
  accumulation = int(config.optim.get("accumulation_steps", 1))
  batch = max(int(config.data.batch_size) // batch_divisor(layout.mesh) // accumulation, 1)
  remat = mc.get("remat", "none")
  bf16 = config.train.get("compute_dtype", "float32") == "bfloat16" or mc.get(
      "dtype", "float32") in ("bfloat16", "float16")
  hidden = int(mc.get("hidden_size", 768))
  dropout = float(mc.get("dropout_rate", 0.1)) > 0 or float(
      mc.get("attention_dropout_rate", 0.1)) > 0
  est = transformer_activation_bytes(
      batch=batch, seq_len=int(np.shape(example["input_ids"])[1]), hidden=hidden,
      intermediate=int(mc.get("intermediate_size", 4 * hidden)),
      heads=int(mc.get("num_heads", 12)), layers=int(mc.get("num_layers", 12)),
      dtype_bytes=2 if bf16 else 4, dropout=dropout, tensor=layout.mesh.shape["tensor"],
      remat=remat)
  return f" + activations ~{_fmt(est)} (batch {batch}/device, remat={remat})"


def report(state: Mapping[str, Any], layout: Layout, trainable=None, *, config=None,
           example: Mapping[str, Any] | None = None) -> str:
  """Parameter count, optimizer-state size and the per-device estimate, as printable lines.

  Args:
    state: the train-state dict (live arrays or ShapeDtypeStructs).
    layout: the run's Layout (its mesh and rules give the shardings).
    trainable: bool tree over params (frozen leaves have no gradients); None = all.
    config: the run config, for the transformer activation estimate (optional).
    example: an example model batch (its `input_ids` give the sequence length).
  """
  params, opt_state = state["params"], state["opt_state"]
  shardings = layout.state_shardings(state)
  grads = params
  if trainable is not None:
    keep = jax.tree_util.tree_leaves(trainable)
    leaves = jax.tree_util.tree_leaves(params)
    grads = [x for x, t in zip(leaves, keep, strict=True) if t]
    grad_shardings = [s for s, t in zip(jax.tree_util.tree_leaves(shardings["params"]), keep,
                                        strict=True) if t]
  else:
    grad_shardings = shardings["params"]
  dev = {
      "params": per_device_bytes(params, shardings["params"]),
      "optimizer state": per_device_bytes(opt_state, shardings["opt_state"]),
      "gradients": per_device_bytes(grads, grad_shardings),
      "model state": per_device_bytes(state.get("model_state", {}),
                                      shardings.get("model_state", {})),
  }
  mesh = dict(layout.mesh.shape)
  lines = [
      f"parameters: {tree_size(params):,} ({_fmt(tree_bytes(params))}); optimizer state "
      f"{_fmt(tree_bytes(opt_state))}; mesh {mesh}",
      "per device: " + " + ".join(f"{k} {_fmt(v)}" for k, v in dev.items() if v)
      + f" = {_fmt(sum(dev.values()))}"
      + (_activations(config, layout, example or {}) if config is not None else ""),
  ]
  summary = layout.summary()
  if summary:
    lines.append(summary)
  return "\n".join(lines)
