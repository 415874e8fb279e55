"""One way to place a model: every load creates each leaf directly in its target sharding.

Resume, transfer from a run, the best-checkpoint restore, `--mode=eval`,
prediction and the Hugging Face import all take their shardings from the mesh
and the logical-axis rules (`parallel.sharding.Layout`): Orbax restores each
leaf into a `jax.ShapeDtypeStruct(..., sharding=...)` target, and safetensors
tensors are read slice by slice inside `jax.make_array_from_callback`. No load
reads the whole tree onto one device or copies it through host numpy, so a
model that fits only sharded loads the same way it trains.

  config, params = pj.load_params("runs/pretrain", mesh=pj.make_mesh({"fsdp": -1}))
  config, params = pj.load_params(minilm_dir())          # a HF BERT dir, host numpy
  config, params = pj.load_params("Qwen2-0.5B/")          # a HF decoder dir (config.model)
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh, NamedSharding

from ptft_jax.errors import CheckpointError
from ptft_jax.models.transformer import TransformerConfig
from ptft_jax.optim import lora
from ptft_jax.parallel import sharding
from ptft_jax.train import checkpoint
from ptft_jax.utils import absolute_path, is_file, read_json

MODEL_CONFIG_FILE = "model_config.json"  # what convert.workdir writes next to imported weights
TASK_CONFIG_FILE = "task_config.json"  # ... and, for decoders, the task that continues them


def layout(mesh: Mesh, rules: Mapping[str, Any] | None = None, config=None) -> sharding.Layout:
  """The Layout of `config.sharding` (if given) with `rules` on top (DEFAULT_RULES otherwise)."""
  sc = dict((config or {}).get("sharding") or {})
  sc["rules"] = {**dict(sc.get("rules") or {}), **dict(rules or {})}
  return sharding.Layout.from_config({"sharding": sc}, mesh)


def placer(target: sharding.Layout):
  """`(param path, shape) -> NamedSharding` by the layout's rules (for `hf_bert.placement`)."""
  fresh = dataclasses.replace(target, replicated_dims={})
  return lambda path, shape: NamedSharding(fresh.mesh, fresh.spec(path, shape))


def import_mesh(devices=None) -> Mesh:
  """All devices on one fsdp axis: imported weights split as far as the rules allow."""
  return sharding.make_mesh({"fsdp": -1}, devices=devices)


def bytes_on(tree, device) -> int:
  """Bytes of `tree`'s jax.Array shards held by `device` (the others are not counted)."""
  return sum(shard.data.nbytes for leaf in jax.tree_util.tree_leaves(tree)
             if isinstance(leaf, jax.Array)
             for shard in leaf.addressable_shards if shard.device == device)


def load_params(path: str | os.PathLike, *, mesh: Mesh | None = None,
                rules: Mapping[str, Any] | None = None) -> tuple[Any, dict]:
  """The model config and params of a run, an imported workdir, or a Hugging Face dir.

  Args:
    path: a ptft_jax run directory (`config.json` of a run; params of its latest
      complete checkpoint, LoRA adapters merged), a pretrained workdir written by
      `python -m ptft_jax.convert hf` / `hf-bert` (`model_config.json`), or a HF
      directory (`config.json` with `model_type` bert, gpt2, llama, mistral, qwen2 or
      gemma + `model.safetensors` or its index).
    mesh: with a mesh every leaf is a jax.Array created in its sharding by the
      rules; without, a tree on the first local device (a run) or host float32
      numpy (a HF dir), as before.
    rules: logical axis -> mesh axis, over `parallel.sharding.DEFAULT_RULES`.

  Returns:
    `(model_config, params)`: a ConfigDict `config.model` (a run; an imported or HF
    decoder: `name="gpt"` + fields) or a TransformerConfig (imported and HF BERT);
    params in the Model layout
    (`{"backbone": ..., "heads": ...}`). A run's model_state (BatchNorm
    statistics) is in `pj.checkpoint.load_params`.
  """
  path = absolute_path(path)  # a gs:// run as it is
  target = layout(mesh, rules) if mesh is not None else None
  config_file = os.path.join(path, "config.json")
  hf = None
  if is_file(config_file):
    try:
      hf = read_json(config_file)
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{config_file}: unreadable ({e})") from None
  if isinstance(hf, dict) and "model_type" in hf:  # a Hugging Face directory
    from ptft_jax.convert import hf as hf_convert

    return hf_convert.load_hf(path, placement=placer(target) if target is not None else None)
  if isinstance(hf, dict):  # a ptft_jax run
    model_config = ml_collections.ConfigDict(hf).get("model")
  elif is_file(os.path.join(path, MODEL_CONFIG_FILE)):
    model_config = read_model_config(path)
  else:
    raise CheckpointError(f"{path}: neither a ptft_jax run (config.json), an imported workdir "
                          f"({MODEL_CONFIG_FILE}) nor a Hugging Face model directory")
  loaded, _ = checkpoint.load_params(path, sharding=target)
  return model_config, lora.merge_loaded(loaded["params"], path)


def _read_json(path: str):
  try:
    return read_json(path)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: unreadable ({str(e).splitlines()[0]})") from None


def read_model_config(workdir: str | os.PathLike) -> TransformerConfig | ml_collections.ConfigDict:
  """`model_config.json` of an imported workdir: a TransformerConfig (BERT imports) or a
  ConfigDict with `name` (decoder imports: use it as `config.model`)."""
  path = os.path.join(os.fspath(workdir), MODEL_CONFIG_FILE)
  data = _read_json(path)
  if not isinstance(data, dict):
    raise CheckpointError(f"{path}: not a JSON object")
  if "name" in data:
    return ml_collections.ConfigDict(data)
  try:
    return TransformerConfig(**data)
  except TypeError as e:
    raise CheckpointError(f"{path}: not a TransformerConfig: {str(e).splitlines()[0]}") from None


def read_task_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict | None:
  """`task_config.json` of an imported workdir (decoder imports), or None if absent."""
  path = os.path.join(os.fspath(workdir), TASK_CONFIG_FILE)
  return ml_collections.ConfigDict(_read_json(path)) if is_file(path) else None
