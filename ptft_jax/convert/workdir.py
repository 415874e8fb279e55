"""Converted weights -> a pretrained workdir that fine-tuning starts from.

The workdir holds a params-only Orbax checkpoint (`ptft_jax.checkpoint.save_pretrained`)
and the backbone's config as `model_config.json`, so a fine-tuning config names
it in `config.init.pretrained_workdir` exactly like a pretraining run.

  model_config.json   a BERT import: TransformerConfig fields (`TransformerConfig(**d)`);
                      a decoder import: `config.model` of a run (`name="gpt"` + fields)
  task_config.json    decoder imports: the task that continues training it
                      (`{"name": "causal_lm", "tied": ...}`), for `config.task`
  hf_config.json, tokenizer.json, tokenizer_config.json, special_tokens_map.json,
  generation_config.json, chat_template.jinja
                      decoder imports: copies of the HF files present (config.json is
                      renamed: a workdir's config.json means a ptft_jax run)
  vocab.txt           BERT imports
  preprocessing.json  vision imports (`import_vision`): what the weights expect of an image,
                      {"mean": [3], "std": [3], "resize": int, "crop": int,
                       "interpolation": "bilinear" | "bicubic"} (mean/std on [0, 1] pixels;
                      resize the shorter side, then the centre crop x crop); train, eval and
                      predict read it (ptft_jax.data.preprocessing)
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

from ptft_jax.models.transformer import TransformerConfig

# The readers live beside pj.load_params, which reads these workdirs too; re-exported here.
from ptft_jax.train.placement import (  # noqa: F401
  MODEL_CONFIG_FILE,
  TASK_CONFIG_FILE,
  read_model_config,
  read_task_config,
)
from ptft_jax.utils import copy_file_atomic, write_json_atomic

HF_CONFIG_COPY = "hf_config.json"
# HF files copied next to imported decoder weights (tokenizer, generation defaults).
HF_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json", "chat_template.jinja")


def _as_dict(config) -> dict[str, Any]:
  if dataclasses.is_dataclass(config):
    return dataclasses.asdict(config)
  if isinstance(config, ml_collections.ConfigDict):
    return config.to_dict()
  return dict(config)


def write_pretrained_workdir(
    config: TransformerConfig | Mapping[str, Any], params: Mapping[str, Any],
    workdir: str | os.PathLike, *, task_config: Mapping[str, Any] | None = None,
) -> None:
  """Saves converted weights as a workdir that `ptft_jax.train.checkpoint` restores.

  Args:
    config: the backbone's TransformerConfig (`dataclasses.asdict` is JSON-able;
      `TransformerConfig(**d)` rebuilds it), or a run's `config.model` (a ConfigDict
      or dict with `name`, as `load_hf_decoder` returns).
    params: Model-layout tree `{"backbone": {...}, "heads": {name: {...}}}` of
      float32 numpy or (sharded) jax arrays (heads may be empty), i.e. the paths
      `backbone/...` and `heads/<name>/...` of `ptft_jax.models.base.Model`.
    workdir: output directory.
    task_config: written as `task_config.json` when given (e.g. `hf_task_config`).
  """
  from ptft_jax.train import checkpoint

  config_dict = _as_dict(config)
  workdir = os.fspath(workdir)
  checkpoint.save_pretrained(workdir, dict(params), config=config_dict)
  write_json_atomic(os.path.join(workdir, MODEL_CONFIG_FILE), config_dict)
  if task_config is not None:
    write_json_atomic(os.path.join(workdir, TASK_CONFIG_FILE), _as_dict(task_config))


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
    copy_file_atomic(vocab, os.path.join(os.fspath(workdir), hf_bert.VOCAB_FILE))
  return config, sorted(params["heads"])


def import_hf_decoder(
    src: str | os.PathLike, workdir: str | os.PathLike, *, mesh=None, rules=None
) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """A HF decoder directory -> pretrained workdir (backbone, untied LM head, task config,
  tokenizer and generation files).

  Placement as `import_hf_bert`: each tensor is read slice by slice into its sharding on
  `mesh` (default: all devices on the fsdp axis) by `rules`. Returns the model config
  (`config.model`) and task config (`config.task`) a fine-tuning run uses.
  """
  from ptft_jax.convert import hf_decoder
  from ptft_jax.train import placement

  src, workdir = os.fspath(src), os.fspath(workdir)
  target = placement.layout(placement.import_mesh() if mesh is None else mesh, rules)
  model_config, params = hf_decoder.load_hf_decoder(src, placement=placement.placer(target))
  task_config = hf_decoder.hf_task_config(src)
  write_pretrained_workdir(model_config, params, workdir, task_config=task_config)
  copy_file_atomic(os.path.join(src, "config.json"), os.path.join(workdir, HF_CONFIG_COPY))
  for name in HF_SIDE_FILES:
    if os.path.isfile(os.path.join(src, name)):
      copy_file_atomic(os.path.join(src, name), os.path.join(workdir, name))
  return model_config, task_config


def import_hf(src: str | os.PathLike, workdir: str | os.PathLike, *, mesh=None,
              rules=None) -> tuple[str, Any, list[str]]:
  """Any supported HF directory -> pretrained workdir, by config.json's model_type.

  BERT as `import_hf_bert`, decoders as `import_hf_decoder`. Returns
  `(model_type, model config, imported head names)`.
  """
  from ptft_jax.convert import hf

  kind = hf.model_type(src)
  if kind in hf.BERT_TYPES:
    config, heads = import_hf_bert(src, workdir, mesh=mesh, rules=rules)
    return kind, config, heads
  config, task = import_hf_decoder(src, workdir, mesh=mesh, rules=rules)
  return kind, config, [] if task.tied else ["lm"]


def import_vision(src: str | os.PathLike, workdir: str | os.PathLike, arch: str | None = None, *,
                  mesh=None, rules=None, **overrides):
  """A torchvision / timm / Hugging Face image model -> pretrained workdir.

  Writes the params (backbone + the classifier as `heads/classifier` when the file has one)
  and BatchNorm statistics (`model_state/batch_stats`, which transfer loads with the
  backbone) as one checkpoint, `model_config.json` (`config.model`: `name="resnet"` or
  `"vit"` + fields) and `preprocessing.json`. Each tensor is read slice by slice into its
  sharding on `mesh` (default: all devices on the fsdp axis) by `rules`, as
  `import_hf_bert`. `arch` and `overrides` (e.g. `image_size=384`) as
  `convert.vision.load_vision`. Returns the `convert.vision.Loaded` record (layout,
  library, model_config, variables, heads, preprocessing). The writer lives in
  `convert.vision` (its CLI `run` uses it; vision imports no workdir: no cycle).
  """
  from ptft_jax.convert import vision

  return vision.import_vision(src, workdir, arch, mesh=mesh, rules=rules, **overrides)
