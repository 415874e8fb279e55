"""Heads: what sits on a backbone's features for one task.

Vector features (`features["features"]`, [batch, hidden]): classifier,
projection (contrastive), decoder (autoencoder).

Text features (BertEncoder / GptDecoder: `features["sequence"]` [batch, seq, hidden]).

Parameter layout (relative to `heads/<name>/`), matching HF BERT's `cls.*`:

  MaskedLMHead:  transform/dense/{kernel [hidden, hidden], bias}
                 transform/layer_norm/{scale,bias}
                 bias [vocab]              (output weights tied to word_embeddings)
  NextSentenceHead:  dense/{kernel [hidden, 2], bias [2]}
  CausalLMHead:  nothing when tied; output/kernel [hidden, vocab] when untied.
                 Logits, or chunked scores of batch["lm_targets"] (see the class).
  SequenceClassificationHead:  classifier/{kernel [hidden, num_classes], bias}

All heads return float32 logits (CausalLMHead: or float32 target scores).
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ptft_jax.errors import UserError
from ptft_jax.models import matmul as matmul_lib
from ptft_jax.models.norm import LayerNorm


class ClassifierHead(nn.Module):
  """Optional hidden layers, then logits [batch, num_classes] from `features["features"]`."""

  num_classes: int
  hidden_sizes: Sequence[int] = ()
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, features, batch, *, train: bool) -> jax.Array:
    x = features["features"]
    for i, width in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, name="logits")(x)


class ProjectionHead(nn.Module):
  """SimCLR projection MLP: Dense-ReLU-Dense -> [batch, out_dim] (not normalized)."""

  hidden_size: int = 128
  out_dim: int = 64

  @nn.compact
  def __call__(self, features, batch, *, train: bool) -> jax.Array:
    x = nn.relu(nn.Dense(self.hidden_size, name="hidden")(features["features"]))
    return nn.Dense(self.out_dim, name="out")(x)


class DecoderHead(nn.Module):
  """Reconstructs the input image [batch, *output_shape] from features (MLP decoder)."""

  output_shape: Sequence[int]
  hidden_sizes: Sequence[int] = ()

  @nn.compact
  def __call__(self, features, batch, *, train: bool) -> jax.Array:
    x = features["features"]
    for i, width in enumerate(self.hidden_sizes):
      x = nn.relu(nn.Dense(width, name=f"hidden_{i}")(x))
    size = 1
    for d in self.output_shape:
      size *= d
    x = nn.Dense(size, name="out")(x)
    return jnp.reshape(x, (x.shape[0], *self.output_shape))


_INIT = nn.initializers.normal(stddev=0.02)


def gather_positions(sequence: jax.Array, positions: jax.Array) -> jax.Array:
  """`[batch, seq, hidden]`, `[batch, p]` int -> `[batch, p, hidden]`."""
  positions = jnp.asarray(positions, jnp.int32)
  return jnp.take_along_axis(sequence, positions[:, :, None], axis=1)


def _tied_logits(x: jax.Array, table: jax.Array) -> jax.Array:
  """`[..., hidden]` x `[vocab, hidden]` -> float32 `[..., vocab]`."""
  return matmul_lib.matmul(x, table.astype(x.dtype), transpose_w=True, out_dtype=jnp.float32)


class _MlmTransform(nn.Module):
  """Dense -> GELU (exact) -> LayerNorm, as HF `cls.predictions.transform`."""

  layer_norm_eps: float
  dtype: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = x.shape[-1]
    x = matmul_lib.Dense(hidden, dtype=self.dtype, kernel_init=_INIT, name="dense")(x)
    x = nn.gelu(x, approximate=False)
    return LayerNorm(self.layer_norm_eps, self.dtype, name="layer_norm")(x)


class MaskedLMHead(nn.Module):
  """Masked-LM logits at `batch["masked_positions"]` only.

  Reads `features["sequence"]` [batch, seq, hidden] and
  `features["word_embeddings"]` [vocab, hidden] (tied output weights) and
  `batch["masked_positions"]` [batch, p] int. Returns `[batch, p, vocab]`.
  """

  layer_norm_eps: float = 1e-12
  dtype: str = "float32"

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *,
               train: bool) -> jax.Array:
    del train
    if "masked_positions" not in batch:
      raise UserError(
          f"MaskedLMHead needs batch['masked_positions'] [batch, p]; batch has {sorted(batch)}")
    table = features["word_embeddings"]
    x = gather_positions(features["sequence"], batch["masked_positions"])
    x = _MlmTransform(self.layer_norm_eps, self.dtype, name="transform")(x)
    bias = self.param("bias", nn.initializers.zeros, (table.shape[0],), jnp.float32)
    return _tied_logits(x, table) + bias


class NextSentenceHead(nn.Module):
  """`features["pooled"]` [batch, hidden] -> `[batch, 2]` (0 = is next, as HF)."""

  dtype: str = "float32"

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *,
               train: bool) -> jax.Array:
    del batch, train
    if "pooled" not in features:
      raise UserError("NextSentenceHead needs features['pooled']; enable the backbone pooler")
    logits = nn.Dense(2, dtype=self.dtype, kernel_init=_INIT, name="dense")(features["pooled"])
    return logits.astype(jnp.float32)


LM_TARGETS = "lm_targets"  # batch key: the token each position predicts (CausalLMHead scores it)


class _OutputKernel(nn.Module):
  """The untied output layer's `kernel` [hidden, vocab] (nn.Dense's path, init and dtype)."""

  vocab: int

  @nn.compact
  def __call__(self, hidden: int) -> jax.Array:
    return self.param("kernel", _INIT, (hidden, self.vocab), jnp.float32)


def target_scores(project, x: jax.Array, targets: jax.Array, *,
                  chunk: int) -> dict[str, jax.Array]:
  """Per-position NLL and correctness of `targets` under `project(x)`, `chunk` positions at a time.

  Args:
    project: `[b, c, hidden]` -> float32 logits `[b, c, vocab]`.
    x: `[batch, seq, hidden]`.
    targets: int `[batch, seq]`.
    chunk: positions per chunk; 0 (or >= seq) = all at once.

  Returns `{"nll": [batch, seq], "correct": [batch, seq]}` float32 (correct: the argmax is
  the target). With chunks, `jax.lax.map` runs `jax.checkpoint`ed chunks: the logits of
  one chunk `[batch, chunk, vocab]` exist at a time, forward and backward (recomputed),
  never `[batch, seq, vocab]`.
  """

  def score(xc, tc):
    logits = project(xc)
    label = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - label  # = optax's integer-label cross-entropy
    correct = (jnp.argmax(logits, axis=-1) == tc).astype(jnp.float32)
    return nll, correct

  b, seq, hidden = x.shape
  if chunk <= 0 or chunk >= seq:
    nll, correct = score(x, targets)
  else:
    n = -(-seq // chunk)
    pad = n * chunk - seq
    xs = jnp.pad(x, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk, hidden).swapaxes(0, 1)
    ts = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk).swapaxes(0, 1)
    nll, correct = jax.lax.map(jax.checkpoint(lambda a: score(*a)), (xs, ts))
    unchunk = lambda v: v.swapaxes(0, 1).reshape(b, n * chunk)[:, :seq]
    nll, correct = unchunk(nll), unchunk(correct)
  return {"nll": nll, "correct": correct}


class CausalLMHead(nn.Module):
  """Next-token logits over the whole sequence `[batch, seq, vocab]`, or scores of given targets.

  Tied: `sequence @ word_embeddings.T` (no params). Untied: `output/kernel` [hidden,
  vocab] (no bias), sized from `features["word_embeddings"]`. Logits are float32.

  Without `batch["lm_targets"]` it returns the logits (evaluation of other kinds,
  prediction, generation). With `batch["lm_targets"]` (int [batch, seq]: the token
  each position predicts; the causal-LM tasks add it) it returns their scores
  `{"nll", "correct"}` [batch, seq] computed `chunk` positions at a time
  (`target_scores`): the loss never holds `[batch, seq, vocab]` logits, which for
  a 128k vocabulary would dwarf the model's activations. Same params either way.
  """

  tied: bool = True
  dtype: str = "float32"
  chunk: int = 256  # positions per chunk when scoring lm_targets; 0 = all at once

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *,
               train: bool) -> jax.Array | dict[str, jax.Array]:
    del train
    x, table = features["sequence"], features["word_embeddings"]
    if self.tied:
      w = table.astype(x.dtype)
    else:
      dtype = jnp.dtype(self.dtype)
      w = _OutputKernel(table.shape[0], name="output")(x.shape[-1]).astype(dtype)
      x = x.astype(dtype)
    project = lambda h: matmul_lib.matmul(h, w, transpose_w=self.tied, out_dtype=jnp.float32)
    if LM_TARGETS not in batch:
      return project(x)
    return target_scores(project, x, batch[LM_TARGETS], chunk=self.chunk)


class SequenceClassificationHead(nn.Module):
  """Pooled features -> dropout -> `[batch, num_classes]` (num_classes=1: regression).

  pooling="cls": `features["pooled"]` when the backbone has a pooler (as HF
  BertForSequenceClassification), else the first token's hidden state.
  pooling="mean": mean of `sequence` over real tokens (`batch["attention_mask"]`).
  """

  num_classes: int
  pooling: str = "cls"
  dropout_rate: float = 0.1
  dtype: str = "float32"

  @nn.compact
  def __call__(self, features: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], *,
               train: bool) -> jax.Array:
    sequence = features["sequence"]
    if self.pooling == "cls":
      x = features["pooled"] if "pooled" in features else sequence[:, 0]
    elif self.pooling == "mean":
      mask = batch.get("attention_mask")
      if mask is None:
        mask = jnp.ones(sequence.shape[:2])
      mask = jnp.asarray(mask, jnp.float32)[:, :, None]
      total = jnp.sum(sequence.astype(jnp.float32) * mask, axis=1)
      x = (total / jnp.maximum(jnp.sum(mask, axis=1), 1.0)).astype(sequence.dtype)
    else:
      raise UserError(f"SequenceClassificationHead pooling {self.pooling!r} is not 'cls'|'mean'")
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=_INIT,
                      name="classifier")(x)
    return logits.astype(jnp.float32)
