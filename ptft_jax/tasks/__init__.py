"""Tasks: what a stage trains for -- inputs, loss, per-example eval outputs, summaries.

  image.py    Classification, DenoisingAutoencoder, Contrastive (vision and generic)
  mae.py      MaskedAutoencoder: MAE pretraining of ViT backbones
  text.py     MaskedLM (+ next-sentence), CausalLM, TextClassification, TextRegression
  losses.py   per-example losses (cross-entropy, MSE, NT-Xent)
  metrics.py  host-side metrics over a whole split (accuracy, per-class P/R/F1, regression)
  augment.py  jittable image augmentations (one program per batch)

`build_task(config, info)` picks a task by `config.task.name` from `BUILDERS`,
which each task module contributes to, with the task keys its builder reads in
`READS`; a key no builder of that task reads is refused (`check_task_keys`).
May import: ptft_jax.errors, ptft_jax.models (heads), ptft_jax.data (dataset info
types). Never the optimizer or the loop.
"""

import flax.linen as nn
import ml_collections

from ptft_jax.errors import ConfigError
from ptft_jax.tasks import image, mae, text
from ptft_jax.tasks.image import Classification, Contrastive, DenoisingAutoencoder

# name -> builder(config.task, dataset info) -> (task, head module or {name: head})
BUILDERS = {**image.BUILDERS, **mae.BUILDERS, **text.BUILDERS}
# name -> the config.task keys its builder reads
READS = {**image.READS, **mae.READS, **text.READS}
# The task keys of ptft_jax.config.base_config() with their defaults (tasks may not import
# config; tests/unit/test_config_checks.py keeps the two equal). Every config carries them,
# so a task that does not read one only objects when it was set to something else.
TASK_DEFAULTS = {"label_smoothing": 0.0, "head_hidden_sizes": (), "head_dropout_rate": 0.0,
                 "mixup_alpha": 0.0}


def _plain(value):
  """A comparable, printable value: ConfigDicts as dicts, lists as tuples."""
  if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict, dict)):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def check_task_keys(task_config, where: str = "config.task"):
  """Raises ConfigError for a task key that the task named `task_config.name` never reads.

  A key its builder does not read (`READS`) is an error unless it holds the
  `base_config()` default (`TASK_DEFAULTS`). `where` is the dotted name the
  error uses for `task_config` (e.g. "config.stages.finetune.task").
  """
  name = task_config["name"]
  if name not in BUILDERS:
    raise ConfigError(f"{where}.name: unknown task {name!r}; choose one of {sorted(BUILDERS)}")
  reads = READS[name]
  unread = [f"{where}.{key}={_plain(value)!r}" for key, value in task_config.items()
            if key != "name" and key not in reads
            and not (key in TASK_DEFAULTS and _plain(value) == TASK_DEFAULTS[key])]
  if unread:
    verb, pronoun = ("is", "it") if len(unread) == 1 else ("are", "them")
    raise ConfigError(f"{', '.join(unread)} {verb} not read by task {name!r} "
                      f"(it reads: {', '.join(reads)}); remove {pronoun}")


def build_task(config: ml_collections.ConfigDict, info, *,
               check_keys: bool = True) -> tuple[object, dict[str, nn.Module]]:
  """Returns (task, {head name: head}) for `config.task` and the dataset's `info`.

  Refuses task keys the task does not read (see `check_task_keys`), unless
  `check_keys` is False: a run that already trained is rebuilt as it ran, even
  if an older version accepted a key its task ignored.
  """
  if check_keys:
    check_task_keys(config.task)
  elif config.task.name not in BUILDERS:
    raise ConfigError(f"config.task.name: unknown task {config.task.name!r}; choose one of "
                      f"{sorted(BUILDERS)}")
  task, head = BUILDERS[config.task.name](config.task, info)
  # A builder returns one head (stored under task.head_name) or a dict of them
  # (multi-head tasks such as masked LM + next-sentence prediction).
  return task, (dict(head) if isinstance(head, dict) else {task.head_name: head})


def model_batch(task, batch: dict) -> dict:
  """The batch the model sees: pretraining tasks never see labels, no task sees the padding mask."""
  drop = {"valid"} if task.uses_labels else {"valid", "label"}
  return {k: v for k, v in batch.items() if k not in drop}


__all__ = ["BUILDERS", "READS", "TASK_DEFAULTS", "Classification", "Contrastive",
           "DenoisingAutoencoder", "build_task", "check_task_keys", "image", "mae",
           "model_batch", "text"]
