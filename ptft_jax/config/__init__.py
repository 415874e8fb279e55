"""Configs: the defaults every config starts from, `get_config` arguments, the workdir's config.

  defaults.py  base_config(): every key a stage may set, with its default
  args.py      parse_arg("tiny,seed=3", tiny=False, seed=0) for `get_config(arg)`
  keys.py      dotted keys: has_key, closest_key / suggest_key (did-you-mean)
  workdir.py   <workdir>/config.json: written on a fresh run, compared on resume

May import: ptft_jax.errors, ptft_jax.utils, ptft_jax.train.checkpoint (late, to see
whether a workdir holds a run). Nothing else in ptft_jax imports into here.
"""

from ptft_jax.config.args import parse_arg
from ptft_jax.config.defaults import base_config

__all__ = ["base_config", "parse_arg"]
