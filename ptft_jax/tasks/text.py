"""Text tasks: masked LM (+ next-sentence prediction), causal LM, SFT, classification, regression.

Registered in `tasks.BUILDERS` as "masked_lm", "causal_lm", "sft",
"text_classification" and "text_regression". They need text data
(`config.data.kind="text"`): the builders read vocabulary ids, the format and the
classes from its `TextInfo`.

Causal LM and SFT share one next-token loss: the task's `inputs` adds
`lm_targets` (each position's next token), so the LM head scores them chunk by
chunk (`config.task.loss_chunk` positions at a time, never `[batch, seq, vocab]`
logits); the loss is the NLL summed over the target tokens of the whole batch
divided by their count, which it reports as `loss_count` so that gradient
accumulation keeps that normalization exact across microbatches.

Masking happens on the device in `MaskedLM.inputs`, from the step's rng (part
of the train state), so a resumed run masks exactly as the original would have.
Eval passes mask with a fixed key, so eval metrics are comparable across steps.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ptft_jax.data.text import TextInfo
from ptft_jax.errors import ConfigError
from ptft_jax.models.heads import (
  LM_TARGETS,
  CausalLMHead,
  MaskedLMHead,
  NextSentenceHead,
  SequenceClassificationHead,
)
from ptft_jax.tasks import losses, metrics
from ptft_jax.tasks.image import Classification

Batch = dict[str, jax.Array]


def mask_tokens(
    rng: jax.Array, input_ids: jax.Array, candidates: jax.Array, *, mask_rate: float,
    max_predictions: int, mask_id: int, random_from: int, vocab_size: int,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """BERT masking: picks tokens to predict and corrupts them 80/10/10.

  Each row predicts round(mask_rate * candidates) tokens (at least 1, at most
  `max_predictions` and the number of candidates), chosen uniformly among its
  candidates. A chosen token becomes [MASK] with probability 0.8, a random id in
  [random_from, vocab_size) with 0.1, and stays itself with 0.1.

  Args:
    rng: PRNG key.
    input_ids: int [batch, seq].
    candidates: bool [batch, seq]; tokens that may be chosen (real, not special).
    mask_rate: fraction of candidates to predict (BERT: 0.15).
    max_predictions: prediction slots per row (BERT: max_predictions_per_seq).
    mask_id: the [MASK] id.
    random_from: smallest id a random replacement may take (after special tokens).
    vocab_size: replacements are below this.

  Returns:
    (corrupted ids [batch, seq], positions [batch, p], original ids at those
    positions [batch, p], weights [batch, p] bool: slot holds a prediction),
    p = min(max_predictions, seq). Unused slots point at position 0 with id 0.
  """
  b, seq = input_ids.shape
  p = min(max_predictions, seq)
  k_pick, k_action, k_random = jax.random.split(rng, 3)
  n_candidates = jnp.sum(candidates, axis=-1)
  n_predict = jnp.clip(jnp.round(n_candidates * mask_rate), 1, p)
  n_predict = jnp.minimum(n_predict, n_candidates)
  scores = jnp.where(candidates, jax.random.uniform(k_pick, (b, seq)), -1.0)
  _, positions = jax.lax.top_k(scores, p)  # candidates first, in random order
  weights = jnp.arange(p)[None, :] < n_predict[:, None]
  rows = jnp.arange(b)[:, None]
  chosen = jnp.zeros((b, seq), bool).at[rows, positions].set(weights)
  action = jax.random.uniform(k_action, (b, seq))
  random_ids = jax.random.randint(k_random, (b, seq), random_from, vocab_size, input_ids.dtype)
  corrupted = jnp.where(chosen & (action < 0.8), jnp.asarray(mask_id, input_ids.dtype),
                        jnp.where(chosen & (action < 0.9), random_ids, input_ids))
  labels = jnp.where(weights, jnp.take_along_axis(input_ids, positions, axis=1), 0)
  return corrupted, jnp.where(weights, positions, 0), labels, weights


def _check_vocab(outputs: dict, vocab_size: int, exact: bool = True):
  """Trace-time check that the model's embedding table fits the tokenizer.

  `exact=False` (Hugging Face tokenizers): the table may be larger than the tokenizer.
  """
  table = outputs["features"].get("word_embeddings")
  if table is None:
    return
  if exact and table.shape[0] != vocab_size:
    raise ConfigError(
        f"config.model.vocab_size={table.shape[0]} but the tokenizer has {vocab_size} tokens "
        "(config.data.tokenizer); make them equal")
  if table.shape[0] < vocab_size:
    raise ConfigError(
        f"config.model.vocab_size={table.shape[0]} is smaller than the tokenizer's "
        f"{vocab_size} tokens (config.data.tokenizer); the model cannot embed every id")


def _token_terms(logits, targets, weights):
  """Per-token NLL and correctness, both zeroed where `weights` is 0: float32 [...]."""
  weights = weights.astype(jnp.float32)
  nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
  return nll * weights, correct * weights, weights


def _token_summary(values: dict[str, np.ndarray], prefix: str) -> dict[str, float]:
  count = max(float(np.sum(values[f"{prefix}_count"])), 1.0)
  loss = float(np.sum(values[f"{prefix}_nll"])) / count
  return {f"{prefix}_loss": loss, f"{prefix}_accuracy": float(np.sum(values[f"{prefix}_correct"]))
          / count, f"{prefix}_perplexity": float(np.exp(loss))}


@dataclasses.dataclass(frozen=True)
class MaskedLM:
  """Pretraining: predict masked tokens (heads "mlm"), plus next-sentence labels ("nsp").

  Loss: mean NLL over the predicted tokens (+ mean NSP cross-entropy). Metrics:
  mlm_accuracy, mlm_perplexity (exp of the mean masked-token NLL), nsp_accuracy.
  """

  vocab_size: int
  mask_id: int
  special_ids: tuple[int, ...]
  nsp: bool = False
  mask_rate: float = 0.15
  max_predictions: int = 20
  head_name: str = "mlm"
  kind: str = "masked_lm"
  uses_labels: bool = False

  def inputs(self, batch: Batch, rng: jax.Array, train: bool) -> Batch:
    del train  # eval masks too, with the eval step's fixed key
    ids = batch["input_ids"]
    candidates = (batch["attention_mask"] > 0) & ~jnp.isin(ids, jnp.asarray(self.special_ids))
    corrupted, positions, labels, weights = mask_tokens(
        rng, ids, candidates, mask_rate=self.mask_rate, max_predictions=self.max_predictions,
        mask_id=self.mask_id, random_from=max(self.special_ids) + 1, vocab_size=self.vocab_size)
    return {**batch, "input_ids": corrupted, "masked_positions": positions,
            "masked_ids": labels, "masked_weights": weights}

  def _terms(self, outputs, inputs, batch) -> dict[str, jax.Array]:
    _check_vocab(outputs, self.vocab_size)
    nll, correct, count = _token_terms(
        outputs["mlm"], inputs["masked_ids"], inputs["masked_weights"])
    terms = {"mlm_nll": nll.sum(-1), "mlm_correct": correct.sum(-1), "mlm_count": count.sum(-1)}
    if self.nsp:
      logits, label = outputs["nsp"], batch["next_sentence_label"]
      terms["nsp_loss"] = losses.softmax_cross_entropy(logits, label)
      terms["nsp_correct"] = (jnp.argmax(logits, -1) == label).astype(jnp.float32)
    return terms

  def loss(self, outputs, inputs, batch):
    t = self._terms(outputs, inputs, batch)
    mlm = jnp.sum(t["mlm_nll"]) / jnp.maximum(jnp.sum(t["mlm_count"]), 1.0)
    out = {"mlm_loss": mlm, "mlm_perplexity": jnp.exp(mlm),
           "mlm_accuracy": jnp.sum(t["mlm_correct"]) / jnp.maximum(jnp.sum(t["mlm_count"]), 1.0)}
    loss = mlm
    if self.nsp:
      out["nsp_loss"], out["nsp_accuracy"] = jnp.mean(t["nsp_loss"]), jnp.mean(t["nsp_correct"])
      loss = loss + out["nsp_loss"]
    return loss, out

  def eval_outputs(self, outputs, inputs, batch):
    return self._terms(outputs, inputs, batch)

  def summarize(self, values: dict[str, np.ndarray], info: Any) -> dict:
    out = _token_summary(values, "mlm")
    out["loss"] = out["mlm_loss"]
    if self.nsp:
      out["nsp_loss"] = float(np.mean(values["nsp_loss"]))
      out["nsp_accuracy"] = float(np.mean(values["nsp_correct"]))
      out["loss"] += out["nsp_loss"]
    return out


def next_token_scores(outputs: dict, batch: Batch) -> tuple[jax.Array, jax.Array]:
  """(NLL, correct) of token t+1 at each position t: float32 [batch, seq - 1].

  From the LM head's target scores (`{"nll", "correct"}`, when the inputs held
  `lm_targets`) or, for a head that returned logits `[batch, seq, vocab]`, from those.
  """
  out = outputs["lm"]
  if isinstance(out, dict):
    return out["nll"][:, :-1], out["correct"][:, :-1]
  logits, targets = out[:, :-1].astype(jnp.float32), batch["input_ids"][:, 1:]
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return nll, (jnp.argmax(logits, -1) == targets).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class CausalLM:
  """Pretraining: next-token prediction (head "lm") on packed rows.

  Token t predicts token t+1 only inside one segment: never across the
  documents of a packed row, never into or from padding (segment 0; without
  `segment_ids`, `attention_mask` plays their part). Loss: the NLL summed over
  those targets in the whole batch / their count (`loss_count`). Metrics:
  perplexity and next-token accuracy over those tokens.
  """

  vocab_size: int
  exact_vocab: bool = True  # False: the model's table may exceed the tokenizer (HF models)
  head_name: str = "lm"
  kind: str = "causal_lm"
  uses_labels: bool = False

  def inputs(self, batch: Batch, rng: jax.Array, train: bool) -> Batch:
    """Adds `lm_targets` [batch, seq]: the next token (0 at the last position)."""
    ids = batch["input_ids"]
    return {**batch, LM_TARGETS: jnp.concatenate([ids[:, 1:], jnp.zeros_like(ids[:, :1])], 1)}

  @staticmethod
  def target_weights(batch: Batch) -> jax.Array:
    """bool [batch, seq - 1]: whether token t+1 is a loss target for position t."""
    seg = batch.get("segment_ids", batch["attention_mask"])
    return (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)

  def _terms(self, outputs, batch) -> dict[str, jax.Array]:
    _check_vocab(outputs, self.vocab_size, self.exact_vocab)
    nll, correct = next_token_scores(outputs, batch)
    weights = self.target_weights(batch).astype(jnp.float32)
    return {"lm_nll": (nll * weights).sum(-1), "lm_correct": (correct * weights).sum(-1),
            "lm_count": weights.sum(-1)}

  def loss(self, outputs, inputs, batch):
    t = self._terms(outputs, batch)
    count = jnp.sum(t["lm_count"])
    loss = jnp.sum(t["lm_nll"]) / jnp.maximum(count, 1.0)
    accuracy = jnp.sum(t["lm_correct"]) / jnp.maximum(count, 1.0)
    return loss, {"perplexity": jnp.exp(loss), "accuracy": accuracy, losses.LOSS_COUNT: count}

  def eval_outputs(self, outputs, inputs, batch):
    return self._terms(outputs, batch)

  def summarize(self, values: dict[str, np.ndarray], info: Any) -> dict:
    s = _token_summary(values, "lm")
    return {"loss": s["lm_loss"], "perplexity": s["lm_perplexity"],
            "accuracy": s["lm_accuracy"], "tokens": int(np.sum(values["lm_count"]))}


@dataclasses.dataclass(frozen=True)
class SFT(CausalLM):
  """Instruction tuning: the causal-LM loss on the response tokens only (`format="sft"` rows).

  Token t+1 is a target iff it is in position t's example and `loss_mask` marks it
  (response / assistant tokens and the eos or end-of-turn token; never the prompt,
  never padding). Normalized by the count of those tokens over the whole batch and
  across accumulation microbatches. Metrics as CausalLM: loss, perplexity and
  next-token accuracy over response tokens; `tokens` counts them.
  """

  kind: str = "sft"

  @staticmethod
  def target_weights(batch: Batch) -> jax.Array:
    """bool [batch, seq - 1]: token t+1 is a response token of position t's example."""
    return CausalLM.target_weights(batch) & (batch["loss_mask"][:, 1:] > 0)


@dataclasses.dataclass(frozen=True)
class TextClassification(Classification):
  """Fine-tuning: `tasks.Classification` on text; adds `f1` (of class 1) for binary tasks."""

  vocab_size: int = 0
  kind: str = "text_classification"

  def loss(self, outputs, inputs, batch):
    _check_vocab(outputs, self.vocab_size)
    return super().loss(outputs, inputs, batch)

  def summarize(self, values: dict[str, np.ndarray], info: Any) -> dict:
    out = super().summarize(values, info)
    if self.num_classes == 2:  # GLUE's F1 (MRPC, QQP): of the positive class
      out["f1"] = list(out["per_class"].values())[1]["f1"]
    return out


@dataclasses.dataclass(frozen=True)
class TextRegression:
  """Fine-tuning: a float target per example (GLUE STS-B); MSE loss, Pearson / Spearman."""

  vocab_size: int
  head_name: str = "regressor"
  kind: str = "text_regression"
  uses_labels: bool = True

  def inputs(self, batch: Batch, rng: jax.Array, train: bool) -> Batch:
    return batch

  def loss(self, outputs, inputs, batch):
    _check_vocab(outputs, self.vocab_size)
    mse = jnp.mean(losses.mean_squared_error(outputs[self.head_name], batch["label"][:, None]))
    return mse, {"mse": mse}

  def eval_outputs(self, outputs, inputs, batch):
    prediction = outputs[self.head_name][:, 0]
    return {"loss": (prediction - batch["label"]) ** 2, "prediction": prediction,
            "label": batch["label"]}

  def summarize(self, values: dict[str, np.ndarray], info: Any) -> dict:
    return {"loss": float(np.mean(values["loss"])),
            **metrics.regression_metrics(values["label"], values["prediction"])}


def _text_info(info: Any, task: str, formats: tuple[str, ...], label_type: str = "") -> TextInfo:
  if not isinstance(info, TextInfo):
    raise ConfigError(f"config.task.name={task!r} needs text data: set config.data.kind='text'")
  if info.format not in formats:
    raise ConfigError(f"config.task.name={task!r} needs config.data.format in {formats}, "
                      f"not {info.format!r}")
  if label_type and info.label_type != label_type:
    raise ConfigError(f"config.task.name={task!r} needs {label_type} labels but dataset "
                      f"{info.name!r} has {info.label_type} labels; set config.data.label_type")
  return info


def _masked_lm(tc, info):
  info = _text_info(info, "masked_lm", ("sentence_pairs", "packed"))
  v = info.vocab
  task = MaskedLM(vocab_size=v.size, mask_id=v.mask_id, special_ids=v.special_ids,
                  nsp=info.nsp, mask_rate=tc.get("mask_rate", 0.15),
                  max_predictions=tc.get("max_predictions_per_seq", 20))
  heads = {"mlm": MaskedLMHead(layer_norm_eps=tc.get("layer_norm_eps", 1e-12))}
  if info.nsp:
    heads["nsp"] = NextSentenceHead()
  return task, heads


def _lm_head(tc) -> CausalLMHead:
  return CausalLMHead(tied=tc.get("tied", True), chunk=int(tc.get("loss_chunk", 256)))


def _causal_lm(tc, info):
  info = _text_info(info, "causal_lm", ("packed",))
  vocab = info.vocab
  return CausalLM(vocab_size=vocab.size, exact_vocab=vocab.exact), _lm_head(tc)


def _sft(tc, info):
  info = _text_info(info, "sft", ("sft",))
  vocab = info.vocab
  return SFT(vocab_size=vocab.size, exact_vocab=vocab.exact), _lm_head(tc)


def _sequence_head(tc, num_classes: int) -> SequenceClassificationHead:
  return SequenceClassificationHead(num_classes=num_classes, pooling=tc.get("pooling", "cls"),
                                    dropout_rate=tc.get("head_dropout_rate", 0.1))


def _text_classification(tc, info):
  info = _text_info(info, "text_classification", ("labeled",), "class")
  task = TextClassification(num_classes=info.num_classes, vocab_size=info.vocab.size,
                            label_smoothing=tc.get("label_smoothing", 0.0))
  return task, _sequence_head(tc, info.num_classes)


def _text_regression(tc, info):
  info = _text_info(info, "text_regression", ("labeled",), "float")
  return TextRegression(vocab_size=info.vocab.size), _sequence_head(tc, 1)


BUILDERS = {
    "masked_lm": _masked_lm,
    "causal_lm": _causal_lm,
    "sft": _sft,
    "text_classification": _text_classification,
    "text_regression": _text_regression,
}

# name -> the `config.task` keys its builder reads (see image.READS).
READS = {
    "masked_lm": ("mask_rate", "max_predictions_per_seq", "layer_norm_eps"),
    "causal_lm": ("tied", "loss_chunk"),
    "sft": ("tied", "loss_chunk"),
    "text_classification": ("label_smoothing", "pooling", "head_dropout_rate"),
    "text_regression": ("pooling", "head_dropout_rate"),
}
