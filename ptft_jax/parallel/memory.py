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

A scanned stack (`model.scan_layers`, one `nn.scan` = one XLA while loop) differs in
two ways, both read off the compiled fsdp=8 train steps of configs/bert.py:tiny and
gpt.py:tiny (docs/scaling.md): with remat "none" every residual of one layer's
linearization is a stacked [num_layers, ...] output of the forward loop, which XLA
cannot fuse away as it does in the unrolled program: 12 hidden-sized tensors per layer
where the count above has 8, so `+ 4d*s*b*h` per layer (the intermediate-sized ones are the
same 2, the MLP's pre-activation and its GELU, since the GELU carries its own VJP; remat
"full" and "dots_saveable" keep what the policy says); and the fsdp-split weights are
all-gathered inside the loop body, one layer at a time, so the gathered copies of a stacked
leaf are one row of it, not all.

`estimate(...)` is the whole step, per device, checked against XLA's own
buffer assignment (`compiled.memory_analysis()`: arguments + outputs - aliased
+ temporaries; tests/e2e/test_memory_analysis.py, within 20% for BERT and GPT
at fsdp 1 and 8): the state (params, optimizer state, model state), the
gradients, the optimizer's update (one more params-sized tree, live while
optax computes it), the activations above, and the language-model logits,
`tokens x vocab x 4` bytes twice (of the float32 logits, their softmax and their
gradient XLA keeps two live at once; the MLM head computes them only at the masked
positions).
`check_fits(...)` raises a ConfigError before compiling when that total
exceeds the device's memory, naming fsdp / remat settings that would fit.
"""

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, AxisType

from ptft_jax.errors import ConfigError
from ptft_jax.parallel.sharding import MESH_AXES, Layout, batch_divisor, param_path

REMAT_POLICIES = ("none", "full", "dots_saveable")
LOGITS_COPIES = 2  # of the float32 logits, their softmax and their gradient, XLA keeps two live
GIB = 1024 ** 3


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
                                 remat: str = "none", scanned: bool = False) -> int:
  """Activations kept for the backward pass of `layers` transformer layers (bytes, per device).

  `batch` is the per-device (micro)batch; `scanned`: the layers are one nn.scan. See the
  module docstring for the formula.
  """
  s, b, h, i, a, d, t = seq_len, batch, hidden, intermediate, heads, dtype_bytes, tensor
  m = 1 if dropout else 0
  scores = a * s * s * b
  none = s * b * h * (4 * d + 2 * m) + (s * b * (4 * d * h + 2 * d * i) + scores * (
      d + m + d * m)) / t
  if remat == "none":
    # A scan's residuals are materialized per layer (module docstring): 4 more [s, b, h]
    # tensors than the unrolled layer's count.
    scan_residuals = 4 * d * s * b * h if scanned else 0
    per_layer, extra = none + scan_residuals, 0
  elif remat == "dots_saveable":
    per_layer, extra = 2 * d * s * b * h + d * (s * b * (4 * h + i) + scores) / t, 0
  elif remat == "full":
    per_layer, extra = d * s * b * h, none
  else:
    raise ValueError(f"remat {remat!r} is not one of {REMAT_POLICIES}")
  return int(layers * per_layer + extra)


def _stacked(path: str) -> bool:
  """A leaf of a scanned layer stack: `.../layers/...` with a leading [num_layers] axis."""
  return "layers" in path.split("/")[:-1]


def gathered_bytes(params, shardings) -> int:
  """Bytes of the all-gathered copies of fsdp / tensor-split params live during a step.

  Whole minus own shard for each leaf, except a scanned stack's leaves (`.../layers/...`),
  which a scan's loop body gathers one layer (row) at a time.
  """
  total = 0
  for (key_path, x), s in zip(jax.tree_util.tree_leaves_with_path(params),
                              jax.tree_util.tree_leaves(shardings), strict=True):
    shape = np.shape(x)
    whole = int(np.prod(shape))
    missing = (whole - int(np.prod(s.shard_shape(shape)))) * np.dtype(x.dtype).itemsize
    path = param_path(key_path)
    total += missing // shape[0] if _stacked(path) and len(shape) > 1 else missing
  return total


def _fmt(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024
  return f"{n:.1f} TiB"


def _transformer_shape(config, layout: Layout, example: Mapping[str, Any]) -> dict | None:
  """Per-device batch, sequence length and sizes of a bert / gpt run, or None for others."""
  mc = config.model
  if mc.get("name") not in ("bert", "gpt") or "input_ids" not in example:
    return None
  accumulation = int(config.optim.get("accumulation_steps", 1))
  batch = max(int(config.data.batch_size) // batch_divisor(layout.mesh) // accumulation, 1)
  hidden = int(mc.get("hidden_size", 768))
  seq_len = int(np.shape(example["input_ids"])[1])
  task = config.get("task") or {}
  # Logits over the vocabulary: the masked positions for BERT; for a causal LM / SFT every
  # token, or one chunk of `loss_chunk` positions at a time (the chunked cross-entropy).
  chunk = int(task.get("loss_chunk", 0) or 0)
  lm_positions = min(seq_len, chunk) if chunk > 0 else seq_len
  positions = {"causal_lm": lm_positions, "sft": lm_positions,
               "masked_lm": int(task.get("max_predictions_per_seq", 0))}
  intermediate = int(mc.get("intermediate_size", 4 * hidden))
  if mc.get("gated_mlp", False):
    # SwiGLU / GeGLU keep two [tokens, intermediate] matmul outputs and two products where
    # a plain MLP keeps one output and its activation: the intermediate terms double.
    intermediate *= 2
  return dict(
      batch=batch, seq_len=seq_len, hidden=hidden, intermediate=intermediate,
      heads=int(mc.get("num_heads", 12)), layers=int(mc.get("num_layers", 12)),
      bf16=config.train.get("compute_dtype", "float32") == "bfloat16" or mc.get(
          "dtype", "float32") in ("bfloat16", "float16"),
      dropout=float(mc.get("dropout_rate", 0.1)) > 0 or float(
          mc.get("attention_dropout_rate", 0.1)) > 0,
      tensor=layout.mesh.shape["tensor"], remat=mc.get("remat", "none"),
      scanned=bool(mc.get("scan_layers", False)),
      logit_tokens=batch * positions.get(task.get("name", ""), 0),
      vocab=int(mc.get("vocab_size", 0)))


def _activation_terms(shape: dict | None, remat: str | None = None) -> dict[str, int]:
  """{'activations': bytes, 'logits': bytes} per device for a transformer shape (else {})."""
  if shape is None:
    return {}
  act = transformer_activation_bytes(
      batch=shape["batch"], seq_len=shape["seq_len"], hidden=shape["hidden"],
      intermediate=shape["intermediate"], heads=shape["heads"], layers=shape["layers"],
      dtype_bytes=2 if shape["bf16"] else 4, dropout=shape["dropout"], tensor=shape["tensor"],
      remat=remat or shape["remat"], scanned=shape["scanned"])
  return {"activations": act,
          "logits": LOGITS_COPIES * 4 * shape["logit_tokens"] * shape["vocab"] // shape["tensor"]}


def estimate(state: Mapping[str, Any], layout: Layout, trainable=None, *, config=None,
             example: Mapping[str, Any] | None = None, remat: str | None = None) -> dict[str, int]:
  """Per-device bytes of one train step, by part; 'total' is their sum.

  Args:
    state: the train-state dict (live arrays or ShapeDtypeStructs).
    layout: the run's Layout; its mesh may be a `jax.sharding.AbstractMesh`.
    trainable: bool tree over params (frozen leaves have no gradients); None = all.
    config: the run config (transformers: activations and logits; optional).
    example: an example model batch; `input_ids` [batch, seq_len] gives the sequence length.
    remat: overrides `config.model.remat` (to ask what another policy would cost).

  Returns:
    {"params", "optimizer state", "model state", "gradients", "optimizer update",
    "gathered weights", ["activations", "logits",] "total"}: bytes on each device.
  """
  params, opt_state = state["params"], state["opt_state"]
  shardings = layout.state_shardings(state)
  param_shardings = jax.tree_util.tree_leaves(shardings["params"])
  keep = (jax.tree_util.tree_leaves(trainable) if trainable is not None
          else [True] * len(param_shardings))
  grads = [x for x, t in zip(jax.tree_util.tree_leaves(params), keep, strict=True) if t]
  grad_shardings = [s for s, t in zip(param_shardings, keep, strict=True) if t]
  grad_bytes = per_device_bytes(grads, grad_shardings)
  parts = {
      "params": per_device_bytes(params, shardings["params"]),
      "optimizer state": per_device_bytes(opt_state, shardings["opt_state"]),
      "model state": per_device_bytes(state.get("model_state", {}),
                                      shardings.get("model_state", {})),
      "gradients": grad_bytes,
      "optimizer update": grad_bytes,  # optax's updates tree, before apply_updates
      # Sharded (fsdp / tensor) weights are all-gathered for the forward and backward
      # passes; XLA keeps the gathered copies live between them, so count them whole
      # (a scanned stack: one layer's, gathered inside the loop).
      "gathered weights": gathered_bytes(params, shardings["params"]),
  }
  if config is not None:
    parts.update(_activation_terms(_transformer_shape(config, layout, example or {}), remat))
  parts["total"] = sum(parts.values())
  return parts


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
  parts = estimate(state, layout, trainable, config=config, example=example)
  dev = {k: parts[k] for k in ("params", "optimizer state", "gradients", "model state")}
  mesh = dict(layout.mesh.shape)
  lines = [
      f"parameters: {tree_size(params):,} ({_fmt(tree_bytes(params))}); optimizer state "
      f"{_fmt(tree_bytes(opt_state))}; mesh {mesh}",
      "per device: " + " + ".join(f"{k} {_fmt(v)}" for k, v in dev.items() if v)
      + f" = {_fmt(sum(dev.values()))}",
  ]
  shape = _transformer_shape(config, layout, example or {}) if config is not None else None
  if shape is not None:
    lines[-1] += (
        f" + optimizer update {_fmt(parts['optimizer update'])}"
        + (f" + gathered weights {_fmt(parts['gathered weights'])}"
           if parts["gathered weights"] else "")
        + " + activations "
        f"~{_fmt(parts['activations'])} + logits ~{_fmt(parts['logits'])} = "
        f"~{_fmt(parts['total'])} per step (batch {shape['batch']}/device, "
        f"remat={shape['remat']})")
  summary = layout.summary()
  if summary:
    lines.append(summary)
  return "\n".join(lines)


def device_limit_bytes(config) -> int | None:
  """`config.train.device_memory_gib` in bytes; 0 = the backend's `bytes_limit`, or None."""
  gib = float(config.train.get("device_memory_gib", 0) or 0)
  if gib < 0:
    raise ConfigError(f"config.train.device_memory_gib={gib}: give the GiB of one device, or 0 "
                      "(ask the backend)")
  if gib:
    return int(gib * GIB)
  # This process's first device: another process's devices report nothing here.
  stats = jax.local_devices()[0].memory_stats() or {}  # None on CPU: nothing to check against
  return int(stats["bytes_limit"]) if stats.get("bytes_limit") else None


def _with_mesh(layout: Layout, sizes: tuple[int, int, int]) -> Layout:
  """`layout`'s rules on an abstract mesh of (data, fsdp, tensor) `sizes` (no devices needed)."""
  mesh = AbstractMesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Layout(mesh, layout.rules, layout.table)


def fitting_settings(state: Mapping[str, Any], layout: Layout, trainable=None, *, config,
                     example: Mapping[str, Any] | None, limit: int) -> list[tuple[int, str, int]]:
  """[(fsdp, remat, total bytes)] that fit in `limit`: per remat policy the smallest fsdp.

  Tries fsdp = 1, 2, 4, ... up to the device count (with the same tensor size;
  data takes the rest) and, for transformers, every remat policy, with `estimate`.
  """
  devices, tensor = layout.mesh.size, layout.mesh.shape["tensor"]
  transformer = _transformer_shape(config, layout, example or {}) is not None
  remats = REMAT_POLICIES if transformer else (None,)
  found = []
  for remat in remats:
    fsdp = 1
    while fsdp * tensor <= devices:
      if devices % (fsdp * tensor) == 0:
        candidate = _with_mesh(layout, (devices // (fsdp * tensor), fsdp, tensor))
        total = estimate(state, candidate, trainable, config=config, example=example,
                         remat=remat)["total"]
        if total <= limit:
          found.append((fsdp, remat, total))
          break
      fsdp *= 2
  return found


def check_fits(state: Mapping[str, Any], layout: Layout, trainable=None, *, config,
               example: Mapping[str, Any] | None = None) -> int | None:
  """Raises ConfigError when `estimate`'s total exceeds a device's memory; returns the total.

  The limit is `config.train.device_memory_gib` (0: the backend's `bytes_limit`;
  None there, as on CPU: no check). The error names the estimate, the limit and
  the fsdp / remat settings that would fit (`fitting_settings`).
  """
  limit = device_limit_bytes(config)
  if limit is None:
    return None
  parts = estimate(state, layout, trainable, config=config, example=example)
  if parts["total"] <= limit:
    return parts["total"]
  source = (f"config.train.device_memory_gib={config.train.device_memory_gib:g}"
            if config.train.get("device_memory_gib") else "the backend's bytes_limit")
  remat = config.model.get("remat") if "activations" in parts else None
  now = f"fsdp={layout.mesh.shape['fsdp']}" + (f", remat={remat}" if remat else "")
  biggest = sorted(((v, k) for k, v in parts.items() if k != "total"), reverse=True)[:3]
  fits = fitting_settings(state, layout, trainable, config=config, example=example, limit=limit)
  if fits:
    options = " or ".join(
        f"--config.mesh.fsdp={f} --config.mesh.data=-1"
        + (f" --config.model.remat={r}" if r else "") + f" (~{_fmt(t)})" for f, r, t in fits)
    advice = f"it would fit with {options}"
  else:
    advice = (f"no fsdp up to {layout.mesh.size} devices" + (" or remat" if remat else "")
              + " fits: lower config.data.batch_size, raise config.optim.accumulation_steps or "
              "set config.train.compute_dtype=bfloat16")
  raise ConfigError(
      f"the train step needs ~{_fmt(parts['total'])} per device with {now} ("
      + ", ".join(f"{k} {_fmt(v)}" for v, k in biggest) + f") but a device has {_fmt(limit)} "
      f"({source}); {advice}")
