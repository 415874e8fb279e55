"""Model FLOPs per train step: closed forms for transformers, a jaxpr count for anything else.

Conventions (the usual "model FLOPs", as in the PaLM / Chinchilla accounting):

* Only matrix products count (dense layers, attention scores and values,
  output projections, convolutions); one multiply-add is 2 FLOPs. Embedding
  lookups, norms, softmax, activations, dropout and the optimizer update are
  left out, so `flops / step_s` is comparable with a matmul peak.
* A training step costs 3x its forward matmuls (forward, gradient with respect
  to the activations, gradient with respect to the weights): 6 FLOPs per
  weight per token.
* A frozen backbone costs only its forward pass (XLA drops the backward pass
  of parameters whose updates are zeroed), so a head-only classification step
  is forward(all) + the classifier's weight gradient (2 * H * C * B).

Transformer training step, L layers, hidden H, feed-forward F, vocab V,
batch B, sequence S (T = B * S tokens), P predicted (masked) positions per row:

  layers     6 * L * (4 * H^2 + 2 * H * F) * T        q, k, v, out + the two MLP matrices
  attention  12 * L * B * S^2 * H                     q k^T and probs v, full S x S
                                                      (a causal mask does not skip work)
  MLM head   6 * (H^2 + H * V) * B * P                transform dense + tied output,
                                                      at the masked positions only
  LM head    6 * H * V * T                            tied output at every position
  classifier 6 * (H^2 + H * C) * B                    tanh pooler + dense, on [CLS]

`matmul_flops(fn, *args)` counts the same quantity for any function by walking
its jaxpr (dot_general and conv_general_dilated, scans multiplied by their
length); the ResNet and LSTM workloads use 3 * that of their forward pass.
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
from jax.extend import core as jex_core


@dataclasses.dataclass(frozen=True)
class TransformerShape:
  """A transformer train step's shape (defaults: MiniLM-L6, batch 32 x 128, 20 predictions)."""

  num_layers: int = 6
  hidden_size: int = 384
  num_heads: int = 12
  intermediate_size: int = 1536
  vocab_size: int = 30522
  batch_size: int = 32
  seq_len: int = 128
  predictions: int = 20

  @property
  def tokens(self) -> int:
    return self.batch_size * self.seq_len


def layer_matmul_params(shape: TransformerShape) -> int:
  """Weights inside matrix products of one transformer layer: 4 H^2 + 2 H F."""
  h, f = shape.hidden_size, shape.intermediate_size
  return 4 * h * h + 2 * h * f


def backbone_forward_flops(shape: TransformerShape) -> int:
  """Forward matmul FLOPs of the layers and attention over B x S tokens."""
  s = shape
  layers = 2 * s.num_layers * layer_matmul_params(s) * s.tokens
  attention = 4 * s.num_layers * s.batch_size * s.seq_len ** 2 * s.hidden_size
  return layers + attention


def head_forward_flops(shape: TransformerShape, head: str, num_classes: int = 2) -> int:
  """Forward matmul FLOPs of a head: "mlm", "lm" or "classifier"."""
  h, v = shape.hidden_size, shape.vocab_size
  if head == "mlm":
    return 2 * (h * h + h * v) * shape.batch_size * shape.predictions
  if head == "lm":
    return 2 * h * v * shape.tokens
  if head == "classifier":
    return 2 * (h * h + h * num_classes) * shape.batch_size
  raise ValueError(f"unknown head {head!r}; expected mlm, lm or classifier")


def transformer_train_flops(
    shape: TransformerShape, head: str, *, frozen_backbone: bool = False, num_classes: int = 2,
) -> int:
  """Model FLOPs of one train step (see the module docstring)."""
  backbone = backbone_forward_flops(shape)
  top = head_forward_flops(shape, head, num_classes)
  if frozen_backbone:
    if head != "classifier":
      raise ValueError("frozen_backbone is defined for the classifier head only")
    # The tanh pooler is backbone (frozen): only the classifier's weight gradient.
    return backbone + top + 2 * shape.hidden_size * num_classes * shape.batch_size
  return 3 * (backbone + top)


def _sub_jaxprs(eqn) -> list[Any]:
  """Jaxprs nested in an equation's params (pjit, scan, cond branches, remat, custom_vjp)."""
  out = []
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jex_core.ClosedJaxpr):
        v = v.jaxpr
      if isinstance(v, jex_core.Jaxpr):
        out.append(v)
  return out


def _jaxpr_matmul_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    prim = eqn.primitive.name
    if prim == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      out = eqn.outvars[0].aval.shape
      total += 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
    elif prim == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out = eqn.outvars[0].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, spatial...)
      window = math.prod(rhs[d] for d in spec[2:])
      total += 2 * math.prod(out) * window * rhs[spec[1]]
    nested = [_jaxpr_matmul_flops(sub) for sub in _sub_jaxprs(eqn)]
    if prim == "cond":  # one branch runs: count the most expensive
      total += max(nested, default=0)
    else:  # a scan runs its body `length` times; a while loop's trip count is unknown: once
      total += eqn.params.get("length", 1) * sum(nested) if prim == "scan" else sum(nested)
  return total


def matmul_flops(fn: Callable, *args, **kwargs) -> int:
  """FLOPs of the matrix products `fn(*args, **kwargs)` asks for (traced, nothing runs)."""
  return _jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
