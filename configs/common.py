"""What configs share: the defaults, `get_config` argument parsing, stage assembly."""

import ml_collections

from ptft_jax.config import base_config, parse_arg

__all__ = ["base_config", "copy", "image_stage", "parse_arg", "staged", "tiny_arg"]

# TFDS image datasets without a validation split: the last 10% of train is held out.
HOLD_OUT_VALIDATION = ("mnist", "fashion_mnist", "cifar10", "cifar100")


def staged(**stages: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A staged config: `config.stages` run in the order given (`config.stage_order`).

  A stage's `init.pretrained_workdir="@name"` points at the earlier stage `name`.
  """
  config = ml_collections.ConfigDict()
  config.stages = ml_collections.ConfigDict()
  for name, stage in stages.items():
    config.stages[name] = stage
  config.stage_order = tuple(stages)
  return config


def image_stage(dataset: str, *, seed: int, tiny: bool, warmup_steps: int,
                eval_batch_size: int) -> ml_collections.ConfigDict:
  """A stage on a TFDS image dataset: splits, seed, logging, one kept checkpoint."""
  c = base_config()
  c.seed = seed
  c.data.dataset = dataset
  if dataset in HOLD_OUT_VALIDATION:
    c.data.train_split = "train[:90%]"
    c.data.validation_split = "train[90%:]"
    c.data.test_split = "test"
  c.data.eval_batch_size = 16 if tiny else eval_batch_size
  c.optim.warmup_steps = warmup_steps
  c.train.log_every = 2 if tiny else 100
  c.train.checkpoint_every = 5000
  c.train.keep = 1
  return c


def copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An independent (deep) copy of `config`."""
  return ml_collections.ConfigDict(config.to_dict())


def tiny_arg(args: dict) -> str:
  """The `tiny,seed=N` argument to hand to a sibling config's get_config."""
  return ",".join(filter(None, ["tiny" if args.get("tiny") else "", f"seed={args['seed']}"]))
