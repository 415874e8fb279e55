"""What configs share: the defaults, `get_config` argument parsing, stage assembly."""

import ml_collections

from ptft_jax.config import base_config, parse_arg

__all__ = ["base_config", "copy", "parse_arg", "staged", "tiny_arg"]


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


def copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """An independent (deep) copy of `config`."""
  return ml_collections.ConfigDict(config.to_dict())


def tiny_arg(args: dict) -> str:
  """The `tiny,seed=N` argument to hand to a sibling config's get_config."""
  return ",".join(filter(None, ["tiny" if args.get("tiny") else "", f"seed={args['seed']}"]))
