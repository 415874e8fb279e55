"""Tasks: what a stage trains for -- inputs, loss, per-example eval outputs, summaries.

  image.py    Classification, DenoisingAutoencoder, Contrastive (vision and generic)
  text.py     MaskedLM (+ next-sentence), CausalLM, TextClassification, TextRegression
  losses.py   per-example losses (cross-entropy, MSE, NT-Xent)
  metrics.py  host-side metrics over a whole split (accuracy, per-class P/R/F1, regression)
  augment.py  jittable image augmentations (one program per batch)

`build_task(config, info)` picks a task by `config.task.name` from `BUILDERS`,
which each task module contributes to. May import: ptft_jax.errors, ptft_jax.models
(heads), ptft_jax.data (dataset info types). Never the optimizer or the loop.
"""

import flax.linen as nn
import ml_collections

from ptft_jax.errors import ConfigError
from ptft_jax.tasks import image, text
from ptft_jax.tasks.image import Classification, Contrastive, DenoisingAutoencoder

# name -> builder(config.task, dataset info) -> (task, head module or {name: head})
BUILDERS = {**image.BUILDERS, **text.BUILDERS}


def build_task(config: ml_collections.ConfigDict, info) -> tuple[object, dict[str, nn.Module]]:
  """Returns (task, {head name: head}) for `config.task` and the dataset's `info`."""
  name = config.task.name
  if name not in BUILDERS:
    raise ConfigError(f"config.task.name: unknown task {name!r}; choose one of {sorted(BUILDERS)}")
  task, head = BUILDERS[name](config.task, info)
  # A builder returns one head (stored under task.head_name) or a dict of them
  # (multi-head tasks such as masked LM + next-sentence prediction).
  return task, (dict(head) if isinstance(head, dict) else {task.head_name: head})


def model_batch(task, batch: dict) -> dict:
  """The batch the model sees: pretraining tasks never see labels, no task sees the padding mask."""
  drop = {"valid"} if task.uses_labels else {"valid", "label"}
  return {k: v for k, v in batch.items() if k not in drop}


__all__ = ["BUILDERS", "Classification", "Contrastive", "DenoisingAutoencoder", "build_task",
           "image", "model_batch", "text"]
