"""Any supported Hugging Face directory, recognized by `config.json`'s `model_type`.

  bert                                  -> `hf_bert` (BertEncoder backbone, MLM / NSP heads)
  gpt2, llama, mistral, qwen2, gemma    -> `hf_decoder` (gpt backbone, causal LM head)

  config, params = load_hf("Qwen2-0.5B/")         # ConfigDict(name="gpt", ...), Model layout
  task = hf_task_config("Qwen2-0.5B/")            # ConfigDict(name="causal_lm", tied=True)
"""

import os
from typing import Any

import ml_collections

from ptft_jax.convert import hf_decoder
from ptft_jax.convert.safetensors_io import CONFIG_FILE, Params, Placement
from ptft_jax.errors import CheckpointError

BERT_TYPES = ("bert",)
MODEL_TYPES = tuple(sorted(BERT_TYPES + hf_decoder.MODEL_TYPES))


def model_type(model_dir: str | os.PathLike) -> str:
  """`model_type` of a HF directory's config.json, if supported (else a one-line error)."""
  hf = hf_decoder.read_hf_config(model_dir)
  kind = hf.get("model_type")
  if kind not in MODEL_TYPES:
    raise CheckpointError(
        f"{os.path.join(os.fspath(model_dir), CONFIG_FILE)}: model_type {kind!r} is not "
        f"supported (only {', '.join(MODEL_TYPES)})")
  return kind


def is_decoder(model_dir: str | os.PathLike) -> bool:
  """Whether the HF directory holds a supported decoder LLM (not BERT)."""
  return model_type(model_dir) in hf_decoder.MODEL_TYPES


def load_hf(model_dir: str | os.PathLike, *, placement: Placement | None = None,
            **overrides) -> tuple[Any, Params]:
  """Reads a HF directory into a model config and Model-layout params.

  Args:
    model_dir: a HF directory (`config.json` + `model.safetensors` or its index).
    placement: optional `(path, shape) -> Sharding`: each leaf is then a jax.Array read
      slice by slice into its sharding (see `hf_bert.load_hf_bert`).
    **overrides: TransformerConfig fields to replace (e.g. `dtype="bfloat16"`).

  Returns:
    `(config, {"backbone": ..., "heads": ...})`. For BERT, config is a TransformerConfig
    and heads are the MLM / NSP heads in the file (`hf_bert.load_hf_bert_model`); for a
    decoder, config is a ConfigDict (`name="gpt"` + TransformerConfig fields) and heads
    is `{"lm": ...}` for an untied output layer, else empty (`hf_decoder.load_hf_decoder`).
  """
  if model_type(model_dir) in BERT_TYPES:
    from ptft_jax.convert import hf_bert

    return hf_bert.load_hf_bert_model(model_dir, placement=placement, **overrides)
  return hf_decoder.load_hf_decoder(model_dir, placement=placement, **overrides)


def hf_task_config(model_dir: str | os.PathLike) -> ml_collections.ConfigDict | None:
  """The task config that continues the HF model's objective: `causal_lm` (with `tied`)
  for a decoder; None for BERT (its heads fit masked_lm, but the fine-tuning task is yours)."""
  if model_type(model_dir) in BERT_TYPES:
    return None
  return hf_decoder.hf_task_config(model_dir)
