"""Converted weights -> a pretrained workdir that fine-tuning starts from.

The workdir holds a params-only Orbax checkpoint (`ptft_jax.checkpoint.save_pretrained`)
and the backbone's config as `model_config.json`, so a fine-tuning config names
it in `config.init.pretrained_workdir` exactly like a pretraining run.
"""

import dataclasses
import os
import shutil
from collections.abc import Mapping
from typing import Any

from ptft_jax.models.transformer import TransformerConfig
from ptft_jax.utils import write_json_atomic


def write_pretrained_workdir(
    config: TransformerConfig, params: Mapping[str, Any], workdir: str | os.PathLike
) -> None:
  """Saves converted weights as a workdir that `ptft_jax.train.checkpoint` restores.

  Args:
    config: the backbone's TransformerConfig (`dataclasses.asdict` is JSON-able;
      `TransformerConfig(**d)` rebuilds it).
    params: Model-layout tree `{"backbone": {...}, "heads": {name: {...}}}` of
      float32 numpy or (sharded) jax arrays (heads may be empty), i.e. the paths
      `backbone/...` and `heads/<name>/...` of `ptft_jax.models.base.Model`.
    workdir: output directory.
  """
  from ptft_jax.train import checkpoint

  config_dict = dataclasses.asdict(config)
  checkpoint.save_pretrained(os.fspath(workdir), dict(params), config=config_dict)
  write_json_atomic(os.path.join(os.fspath(workdir), "model_config.json"), config_dict)


def import_hf_bert(
    src: str | os.PathLike, workdir: str | os.PathLike, *, mesh=None, rules=None
) -> tuple[TransformerConfig, list[str]]:
  """A HF BERT directory -> pretrained workdir (backbone, any MLM / NSP heads, vocab.txt).

  What `python -m ptft_jax.convert hf-bert` and an `import_hf_bert` stage of
  `ptft_jax.train.run` do. Every tensor is read slice by slice straight into its
  sharding on `mesh` (default: all devices on the fsdp axis) by `rules` (default
  rules when None), and Orbax writes each shard from its device: no host ever
  holds the whole model. Returns the backbone's config and the imported head names.
  """
  from ptft_jax.convert import hf_bert
  from ptft_jax.train import placement

  target = placement.layout(placement.import_mesh() if mesh is None else mesh, rules)
  config, params = hf_bert.load_hf_bert_model(src, placement=placement.placer(target))
  write_pretrained_workdir(config, params, workdir)
  vocab = os.path.join(os.fspath(src), hf_bert.VOCAB_FILE)
  if os.path.isfile(vocab):
    shutil.copyfile(vocab, os.path.join(os.fspath(workdir), hf_bert.VOCAB_FILE))
  return config, sorted(params["heads"])
