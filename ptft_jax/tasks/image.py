"""Tasks: what a stage trains for. A task names its heads, builds its inputs, and scores outputs.

Every task is a frozen dataclass with the same three pure methods, so one
train step serves pretraining and fine-tuning alike:

  inputs(batch, rng, train) -> model inputs (device-side augmentation / corruption)
  loss(outputs, inputs, batch) -> (scalar loss, {metric: scalar})
  eval_outputs(outputs, inputs, batch) -> {name: [batch, ...]} per-example values
  summarize(values, info) -> {metric: value}   host-side, over a whole split's values

and two attributes: `head_name` (the head it trains) and `uses_labels` (False
for pretraining tasks: their batches are stripped of labels before the model
sees them). New tasks add a builder to their module's `BUILDERS` and the `config.task` keys
it reads to `READS` (both collected in tasks/__init__.py).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ptft_jax.errors import ConfigError
from ptft_jax.models import heads as heads_lib
from ptft_jax.tasks import augment, losses, metrics

Batch = dict[str, jax.Array]


def normalize_images(images: jax.Array, normalize: tuple) -> jax.Array:
  """(images - mean) / std per channel: images [..., c] in [0, 1], `normalize` = (mean, std)
  of c floats each (the pretrained weights' preprocessing), or () for no change."""
  if not normalize:
    return images
  mean, std = (jnp.asarray(v, images.dtype) for v in normalize)
  return (images - mean) / std


def _normalization(info: Any) -> tuple:
  """(mean, std) of the dataset info's preprocessing (data/preprocessing.py), or ()."""
  prep = getattr(info, "preprocessing", None)
  if prep is None or not prep.normalizes:
    return ()
  return (tuple(prep.mean), tuple(prep.std))


@dataclasses.dataclass(frozen=True)
class Classification:
  """Fine-tuning: softmax cross-entropy on `batch["label"]` with optional label smoothing.

  `mixup_alpha > 0` (images): each training batch becomes lam * x + (1 - lam) *
  x[perm] with lam ~ Beta(alpha, alpha) and a random permutation, and the
  target the same mix of the two (smoothed) one-hot labels; `inputs` carries
  `mix_lambda` and `mix_index` to the loss. Accuracy is against the unmixed labels.

  `normalize` = (mean, std) (the pretrained weights' preprocessing, from the dataset
  info): images [0, 1] are augmented, then normalized, in training, evaluation and
  prediction alike (`inputs(..., train=False)` is what the model sees at evaluation).
  """

  num_classes: int
  label_smoothing: float = 0.0
  augment: dict = dataclasses.field(default_factory=dict)
  head_name: str = "classifier"
  kind: str = "classification"
  uses_labels: bool = True
  mixup_alpha: float = 0.0
  normalize: tuple = ()

  def inputs(self, batch: Batch, rng: jax.Array, train: bool) -> Batch:
    mix = train and self.mixup_alpha > 0 and "image" in batch
    if mix:
      rng, mix_rng = jax.random.split(rng)
    if train and self.augment:
      batch = {**batch, "image": augment.augment_images(rng, batch["image"], **self.augment)}
    if mix:
      lam_rng, perm_rng = jax.random.split(mix_rng)
      lam = jax.random.beta(lam_rng, self.mixup_alpha, self.mixup_alpha)
      perm = jax.random.permutation(perm_rng, batch["image"].shape[0])
      image = batch["image"]
      mixed = (lam * image + (1.0 - lam) * image[perm]).astype(image.dtype)
      batch = {**batch, "image": mixed, "mix_lambda": lam, "mix_index": perm}
    if self.normalize and "image" in batch:
      batch = {**batch, "image": normalize_images(batch["image"], self.normalize)}
    return batch

  def loss(self, outputs, inputs, batch):
    logits = outputs[self.head_name]
    per_example = losses.softmax_cross_entropy(
        logits, batch["label"], label_smoothing=self.label_smoothing)
    if "mix_lambda" in inputs:  # cross-entropy is linear in the target: mix the two terms
      other = losses.softmax_cross_entropy(
          logits, batch["label"][inputs["mix_index"]], label_smoothing=self.label_smoothing)
      lam = inputs["mix_lambda"]
      per_example = lam * per_example + (1.0 - lam) * other
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return jnp.mean(per_example), {"accuracy": accuracy}

  def eval_outputs(self, outputs, inputs, batch):
    logits = outputs[self.head_name]
    return {
        "loss": losses.softmax_cross_entropy(logits, batch["label"]),
        "prediction": jnp.argmax(logits, -1),
        "label": batch["label"],
    }

  def summarize(self, values: dict[str, np.ndarray], info: Any) -> dict:
    return {"loss": float(np.mean(values["loss"])), **metrics.classification_metrics(
        values["label"], values["prediction"], self.num_classes,
        getattr(info, "label_names", None))}


@dataclasses.dataclass(frozen=True)
class DenoisingAutoencoder:
  """Pretraining: reconstruct the clean image from a corrupted one (per-pixel MSE)."""

  noise: float = 0.2
  dropout: float = 0.3
  head_name: str = "decoder"
  kind: str = "autoencoder"
  uses_labels: bool = False

  def inputs(self, batch: Batch, rng: jax.Array, train: bool) -> Batch:
    if not train:
      return batch
    corrupted = augment.augment_images(
        rng, batch["image"], noise=self.noise, dropout=self.dropout)
    return {**batch, "image": corrupted}

  def loss(self, outputs, inputs, batch):
    mse = jnp.mean(losses.mean_squared_error(outputs[self.head_name], batch["image"]))
    return mse, {"mse": mse}

  def eval_outputs(self, outputs, inputs, batch):
    mse = losses.mean_squared_error(outputs[self.head_name], batch["image"])
    return {"loss": mse}

  def summarize(self, values: dict[str, np.ndarray], info: Any) -> dict:
    mse = float(np.mean(values["loss"]))
    return {"loss": mse, "mse": mse}


@dataclasses.dataclass(frozen=True)
class Contrastive:
  """Pretraining: SimCLR. Two augmented views per image, NT-Xent on the projections.

  Both views go through the model in one call ([2 * batch, ...]) so batch
  statistics (BatchNorm) see the same mixed batch as in SimCLR. `normalize` as in
  `Classification` (after augmentation).
  """

  temperature: float = 0.1
  augment: dict = dataclasses.field(
      default_factory=lambda: {"max_shift": 1, "noise": 0.1, "dropout": 0.2, "jitter": 0.2})
  head_name: str = "projection"
  kind: str = "contrastive"
  uses_labels: bool = False
  normalize: tuple = ()

  def inputs(self, batch: Batch, rng: jax.Array, train: bool) -> Batch:
    k1, k2 = jax.random.split(rng)
    images = batch["image"]
    view1 = augment.augment_images(k1, images, **self.augment)
    view2 = augment.augment_images(k2, images, **self.augment)
    return {"image": normalize_images(jnp.concatenate([view1, view2], axis=0), self.normalize)}

  def _per_example(self, outputs):
    z1, z2 = jnp.split(outputs[self.head_name], 2, axis=0)
    return losses.nt_xent(z1, z2, temperature=self.temperature), z1, z2

  def loss(self, outputs, inputs, batch):
    per_example, z1, z2 = self._per_example(outputs)
    # Top-1 retrieval accuracy of the positive view: a cheap health signal.
    z1 = z1 / jnp.linalg.norm(z1, axis=-1, keepdims=True)
    z2 = z2 / jnp.linalg.norm(z2, axis=-1, keepdims=True)
    retrieval = jnp.mean(jnp.argmax(z1 @ z2.T, -1) == jnp.arange(z1.shape[0]))
    return jnp.mean(per_example), {"view_retrieval": retrieval}

  def eval_outputs(self, outputs, inputs, batch):
    per_example, _, _ = self._per_example(outputs)
    return {"loss": per_example}

  def summarize(self, values: dict[str, np.ndarray], info: Any) -> dict:
    return {"loss": float(np.mean(values["loss"]))}


def _classification(tc, info):
  task = Classification(
      num_classes=info.num_classes, label_smoothing=tc.get("label_smoothing", 0.0),
      augment=dict(tc.get("augment", {})), mixup_alpha=float(tc.get("mixup_alpha", 0.0)),
      normalize=_normalization(info))
  if task.mixup_alpha < 0:
    raise ConfigError(f"config.task.mixup_alpha={task.mixup_alpha}: use 0 (off) or > 0")
  head = heads_lib.ClassifierHead(
      num_classes=info.num_classes, hidden_sizes=tuple(tc.get("head_hidden_sizes", ())),
      dropout_rate=tc.get("head_dropout_rate", 0.0))
  return task, head


def _autoencoder(tc, info):
  task = DenoisingAutoencoder(noise=tc.get("noise", 0.2), dropout=tc.get("dropout", 0.3))
  head = heads_lib.DecoderHead(
      output_shape=tuple(info.image_shape), hidden_sizes=tuple(tc.get("head_hidden_sizes", ())))
  return task, head


def _contrastive(tc, info):
  task = Contrastive(
      temperature=tc.get("temperature", 0.1),
      augment=dict(tc.get("augment", Contrastive().augment)), normalize=_normalization(info))
  head = heads_lib.ProjectionHead(
      hidden_size=tc.get("projection_hidden", 128), out_dim=tc.get("projection_dim", 64))
  return task, head


# name -> builder(config.task, dataset info) -> (task, head module); see tasks/__init__.py.
BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, Any], tuple[Any, nn.Module]]] = {
    "classification": _classification,
    "autoencoder": _autoencoder,
    "contrastive": _contrastive,
}

# name -> the `config.task` keys its builder reads (besides `name`). A key outside this list
# that differs from base_config()'s default is refused (tasks.check_task_keys): a locked
# config must not accept a setting that nothing reads.
READS: dict[str, tuple[str, ...]] = {
    "classification": ("label_smoothing", "augment", "mixup_alpha", "head_hidden_sizes",
                       "head_dropout_rate"),
    "autoencoder": ("noise", "dropout", "head_hidden_sizes"),
    "contrastive": ("temperature", "augment", "projection_hidden", "projection_dim"),
}
