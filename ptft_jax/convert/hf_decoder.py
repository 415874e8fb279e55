"""Hugging Face decoder LLMs -> ptft_jax `gpt` backbone + causal LM head (safetensors, no torch).

Supported `model_type`s of `config.json` and what each sets in the backbone's
TransformerConfig (see ptft_jax/models/transformer.py):

  gpt2     LayerNorm, learned positions, gelu_tanh ("gelu_new"), biases everywhere.
           Conv1D weights are `[in, out]` (no transpose); `c_attn` packs q|k|v along its
           last axis and is split by reading column ranges.
  llama    RMSNorm, rope (rope_scaling none / "linear" / "llama3"), SwiGLU, GQA;
           biases per attention_bias / mlp_bias.
  mistral  llama + sliding_window.
  qwen2    llama + q/k/v biases (a per-layer sliding window is refused).
  gemma    llama + RMSNorm (1 + w), GeGLU (gelu_tanh), embeddings * sqrt(hidden),
           head_dim from the config (may differ from hidden / heads).

Tensor names may carry the `model.` (`transformer.` for gpt2) prefix of a *ForCausalLM
or not (a base model). HF Linear weights are `[out, in]`; our kernels are `[in, out]`.
Weights come from `model.safetensors` or the files of `model.safetensors.index.json`.

Loading is strict, as `hf_bert`: unsafe names, unexpected or missing tensors, non-float
dtypes, shape mismatches, an unknown model_type or an unsupported option each raise a
one-line `CheckpointError` naming the file (and tensor with both shapes). Known buffers
(GPT-2's `attn.bias` / `attn.masked_bias`, old Llama's `rotary_emb.inv_freq`) are skipped.

With a `placement` (param path, our shape -> Sharding) every leaf is a jax.Array built
by `jax.make_array_from_callback`, each device reading only its slice of the
memory-mapped file (`convert.safetensors_io`), so no host holds the whole model.

  model_config, params = load_hf_decoder("Qwen2-0.5B/")
  task_config = hf_task_config("Qwen2-0.5B/")   # ConfigDict(name="causal_lm", tied=True)
  logits = ptft_jax.models.causal_lm_logits(model_config, params, input_ids)
"""

import os
import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from ptft_jax.convert import safetensors_io
from ptft_jax.convert.safetensors_io import CONFIG_FILE, Entry, Params, Placement
from ptft_jax.errors import CheckpointError, ConfigError
from ptft_jax.models import layout

MODEL_TYPES = ("gemma", "gpt2", "llama", "mistral", "qwen2")
ROPE_MODEL_TYPES = ("gemma", "llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")
# Buffers some checkpoints carry (normalized names); never loaded.
_BUFFERS = re.compile(r"(h\.\d+\.attn\.(bias|masked_bias)|layers\.\d+\.self_attn\.rotary_emb\."
                      r"inv_freq)")
# HF activation name -> ours.
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh"}
# transformers' defaults (the config classes) for keys a config.json may omit.
_DEFAULTS = {
  "gpt2": dict(layer_norm_epsilon=1e-5, n_positions=1024, activation_function="gelu_new",
               tie_word_embeddings=True),
  "llama": dict(rms_norm_eps=1e-6, max_position_embeddings=2048, hidden_act="silu",
                tie_word_embeddings=False),
  "mistral": dict(rms_norm_eps=1e-6, max_position_embeddings=4096 * 32, hidden_act="silu",
                  sliding_window=4096, tie_word_embeddings=False),
  "qwen2": dict(rms_norm_eps=1e-6, max_position_embeddings=32768, hidden_act="silu",
                tie_word_embeddings=False),
  "gemma": dict(rms_norm_eps=1e-6, max_position_embeddings=8192, head_dim=256,
                tie_word_embeddings=True),
}
_REQUIRED = {
  "gpt2": ("vocab_size", "n_embd", "n_layer", "n_head"),
  **{t: ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
         "intermediate_size") for t in ROPE_MODEL_TYPES},
}


def read_hf_config(model_dir: str | os.PathLike) -> dict[str, Any]:
  """`config.json` of a HF directory as a dict, or a one-line CheckpointError."""
  path = os.path.join(os.fspath(model_dir), CONFIG_FILE)
  hf = safetensors_io.read_json(path, "a Hugging Face model directory")
  if not isinstance(hf, dict):
    raise CheckpointError(f"{path}: not a JSON object")
  return hf


def _model_type(hf: Mapping[str, Any], path: str) -> str:
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise CheckpointError(f"{path}: model_type {model_type!r} is not supported (decoders: "
                          f"{', '.join(MODEL_TYPES)})")
  return model_type


def _activation(name, key: str, path: str) -> str:
  if name not in _ACTIVATIONS:
    raise CheckpointError(f"{path}: {key} {name!r} is not supported (only "
                          f"{', '.join(sorted(_ACTIVATIONS))})")
  return _ACTIVATIONS[name]


def _rope_fields(hf: Mapping[str, Any], path: str) -> dict[str, Any]:
  """rope_theta and rope_scaling (transformers 4: `rope_scaling` + `rope_theta`; 5:
  `rope_parameters` with `rope_theta` inside) -> TransformerConfig rope fields."""
  params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
  if not isinstance(params, Mapping):
    raise CheckpointError(f"{path}: {key} {params!r} is not a dict")
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  rope_type = params.get("rope_type", params.get("type")) or "default"
  if rope_type not in ROPE_TYPES:
    raise CheckpointError(f"{path}: {key} rope_type {rope_type!r} is not supported (only "
                          f"{', '.join(ROPE_TYPES)})")
  partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    raise CheckpointError(f"{path}: partial_rotary_factor {partial} is not supported (only 1.0)")
  fields: dict[str, Any] = dict(position_embedding="rope", rope_theta=float(theta))
  try:
    if rope_type == "linear":
      fields.update(rope_scaling="linear", rope_factor=float(params["factor"]))
    elif rope_type == "llama3":
      fields.update(
          rope_scaling="llama3", rope_factor=float(params["factor"]),
          rope_low_freq_factor=float(params["low_freq_factor"]),
          rope_high_freq_factor=float(params["high_freq_factor"]),
          rope_original_max_positions=int(params["original_max_position_embeddings"]))
  except KeyError as e:
    raise CheckpointError(f"{path}: {key} ({rope_type}) has no {e.args[0]!r}") from None
  return fields


def _sliding_window(hf: Mapping[str, Any], model_type: str, num_layers: int, path: str) -> int:
  """The window every layer uses (0: none); a window on only some layers is refused."""
  window = hf.get("sliding_window") or 0
  if model_type == "mistral":
    return int(window)
  if model_type != "qwen2" or not window:
    return 0
  if hf.get("layer_types") is not None:  # transformers 5
    sliding = [t == "sliding_attention" for t in hf["layer_types"]]
  else:  # transformers 4: layers from max_window_layers (default 28) on, if enabled
    first = hf.get("max_window_layers")
    first = 28 if first is None else first
    sliding = [bool(hf.get("use_sliding_window")) and i >= first for i in range(num_layers)]
  if not any(sliding):
    return 0
  if not all(sliding):
    raise CheckpointError(
        f"{path}: a sliding window on layers {[i for i, s in enumerate(sliding) if s]} of "
        f"{num_layers} is not supported (only on all layers or none)")
  return int(window)


def config_from_hf(hf: Mapping[str, Any], path: str = CONFIG_FILE,
                   **overrides) -> ml_collections.ConfigDict:
  """HF decoder config dict -> the `gpt` backbone's model config.

  A ConfigDict like configs/gpt.py's `config.model`: `name="gpt"` plus TransformerConfig
  fields (dropout 0); `overrides` replace fields (e.g. `dtype="bfloat16"`, `scan_layers=True`).
  """
  model_type = _model_type(hf, path)
  hf = {**_DEFAULTS[model_type], **hf}  # an explicit null stays null ("sliding_window": null)
  missing = [k for k in _REQUIRED[model_type] if hf.get(k) is None]
  if missing:
    raise CheckpointError(f"{path}: missing key {missing[0]!r}")
  if model_type == "gpt2":
    for key, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                      ("add_cross_attention", False)):
      if hf.get(key, want) != want:
        raise CheckpointError(f"{path}: {key} {hf[key]!r} is not supported (only {want!r})")
    hidden = hf["n_embd"]
    fields = dict(
        vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=hf["n_layer"],
        num_heads=hf["n_head"], intermediate_size=hf.get("n_inner") or 4 * hidden,
        max_position_embeddings=hf["n_positions"], layer_norm_eps=hf["layer_norm_epsilon"],
        norm="layer", position_embedding="learned",
        activation=_activation(hf["activation_function"], "activation_function", path))
  else:
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hidden // heads
    kv_heads = hf.get("num_key_value_heads") or heads
    if model_type == "gemma":  # transformers maps Gemma's legacy "gelu" to the tanh form
      act_key = "hidden_activation" if hf.get("hidden_activation") else "hidden_act"
      act = hf.get(act_key) or "gelu_pytorch_tanh"
      act = "gelu_pytorch_tanh" if act == "gelu" else act
    else:
      act_key, act = "hidden_act", hf["hidden_act"]
    attention_bias = bool(hf.get("attention_bias", False))
    fields = dict(
        vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=hf["num_hidden_layers"],
        num_heads=heads, intermediate_size=hf["intermediate_size"],
        max_position_embeddings=hf["max_position_embeddings"], layer_norm_eps=hf["rms_norm_eps"],
        norm="rms", norm_offset=1.0 if model_type == "gemma" else 0.0,
        activation=_activation(act, act_key, path), gated_mlp=True,
        num_kv_heads=0 if kv_heads == heads else kv_heads,
        head_dim_override=0 if head_dim * heads == hidden else head_dim,
        qkv_bias=attention_bias or model_type == "qwen2", out_bias=attention_bias,
        mlp_bias=bool(hf.get("mlp_bias", False)), embed_scale=model_type == "gemma",
        sliding_window=_sliding_window(hf, model_type, hf["num_hidden_layers"], path),
        **_rope_fields(hf, path))
  fields.update(dropout_rate=0.0, attention_dropout_rate=0.0)
  fields.update(overrides)
  _validate(fields, path)
  return ml_collections.ConfigDict({"name": "gpt", **fields})


def _validate(fields: Mapping[str, Any], path: str) -> None:
  """The fields make a TransformerConfig for the gpt backbone (a one-line error if not)."""
  from ptft_jax.models.transformer import TransformerConfig

  try:
    TransformerConfig(**{"causal": True, "pre_norm": True, "type_vocab_size": 0,
                         "pooler": False, **fields})
  except TypeError as e:
    raise ConfigError(f"{path}: bad model fields: {safetensors_io.first_line(e)}") from None
  except ConfigError as e:
    raise CheckpointError(f"{path}: {safetensors_io.first_line(e)}") from None


def tied_embeddings(hf: Mapping[str, Any], path: str = CONFIG_FILE) -> bool:
  """HF `tie_word_embeddings` (with the model type's default): the LM head reuses the
  input embedding table."""
  model_type = _model_type(hf, path)
  tied = hf.get("tie_word_embeddings")
  return bool(_DEFAULTS[model_type]["tie_word_embeddings"] if tied is None else tied)


def hf_task_config(model_dir: str | os.PathLike) -> ml_collections.ConfigDict:
  """The task config that fine-tunes the imported model: `causal_lm` with `tied` as HF's
  `tie_word_embeddings` (reads only config.json)."""
  hf = read_hf_config(model_dir)
  path = os.path.join(os.fspath(model_dir), CONFIG_FILE)
  return ml_collections.ConfigDict({"name": "causal_lm", "tied": tied_embeddings(hf, path)})


def _entries(model_type: str, c: ml_collections.ConfigDict) -> tuple[list[Entry], str, str]:
  """(backbone entries, HF name of the embedding table, HF name of the output layer)."""
  h, inter, v = c.hidden_size, c.intermediate_size, c.vocab_size
  out: list[Entry] = []
  add = lambda name, path, shape, **kw: out.append(Entry(name, tuple(path.split("/")),
                                                         tuple(shape), **kw))
  if model_type == "gpt2":
    add("wte.weight", "embeddings/word_embeddings/embedding", (v, h))
    add("wpe.weight", "embeddings/position_embeddings/embedding", (c.max_position_embeddings, h))
    for i in range(c.num_layers):
      hf, ours = f"h.{i}", f"layer_{i}"
      for norm, name in (("ln_1", "attention_norm"), ("ln_2", "output_norm")):
        add(f"{hf}.{norm}.weight", f"{ours}/{name}/scale", (h,))
        add(f"{hf}.{norm}.bias", f"{ours}/{name}/bias", (h,))
      for j, part in enumerate(("query", "key", "value")):
        cols = (j * h, (j + 1) * h)
        add(f"{hf}.attn.c_attn.weight", f"{ours}/attention/{part}/kernel", (h, 3 * h),
            columns=cols)
        add(f"{hf}.attn.c_attn.bias", f"{ours}/attention/{part}/bias", (3 * h,), columns=cols)
      for module, name, shape in (("attn.c_proj", "attention/out", (h, h)),
                                  ("mlp.c_fc", "mlp/intermediate", (h, inter)),
                                  ("mlp.c_proj", "mlp/output", (inter, h))):
        add(f"{hf}.{module}.weight", f"{ours}/{name}/kernel", shape)
        add(f"{hf}.{module}.bias", f"{ours}/{name}/bias", shape[1:])
    add("ln_f.weight", "final_norm/scale", (h,))
    add("ln_f.bias", "final_norm/bias", (h,))
    return out, "wte.weight", "lm_head.weight"

  hd = c.head_dim_override or h // c.num_heads
  q, kv = c.num_heads * hd, (c.num_kv_heads or c.num_heads) * hd
  add("embed_tokens.weight", "embeddings/word_embeddings/embedding", (v, h))
  for i in range(c.num_layers):
    hf, ours = f"layers.{i}", f"layer_{i}"
    add(f"{hf}.input_layernorm.weight", f"{ours}/attention_norm/scale", (h,))
    add(f"{hf}.post_attention_layernorm.weight", f"{ours}/output_norm/scale", (h,))
    linears = [("self_attn.q_proj", "attention/query", q, h, c.qkv_bias),
               ("self_attn.k_proj", "attention/key", kv, h, c.qkv_bias),
               ("self_attn.v_proj", "attention/value", kv, h, c.qkv_bias),
               ("self_attn.o_proj", "attention/out", h, q, c.out_bias),
               ("mlp.gate_proj", "mlp/gate", inter, h, c.mlp_bias),
               ("mlp.up_proj", "mlp/intermediate", inter, h, c.mlp_bias),
               ("mlp.down_proj", "mlp/output", h, inter, c.mlp_bias)]
    for module, name, n_out, n_in, bias in linears:
      add(f"{hf}.{module}.weight", f"{ours}/{name}/kernel", (n_out, n_in), transpose=True)
      if bias:
        add(f"{hf}.{module}.bias", f"{ours}/{name}/bias", (n_out,))
  add("norm.weight", "final_norm/scale", (h,))
  return out, "embed_tokens.weight", "lm_head.weight"


def _normalizer(model_type: str):
  prefixes = ("transformer.",) if model_type == "gpt2" else ("model.",)
  return lambda path, names: safetensors_io.strip_prefixes(
      path, names, prefixes, keep=("lm_head.weight",))


def _load(model_dir: str, placement: Placement | None, overrides: Mapping[str, Any]):
  hf = read_hf_config(model_dir)
  config_path = os.path.join(model_dir, CONFIG_FILE)
  model_config = config_from_hf(hf, config_path, **overrides)
  model_type = hf["model_type"]
  tied = tied_embeddings(hf, config_path)
  entries, table, output = _entries(model_type, model_config)
  head = [] if tied else [Entry(output, ("output", "kernel"),
                                (model_config.vocab_size, model_config.hidden_size),
                                transpose=True)]
  with safetensors_io.Tensors(model_dir, _normalizer(model_type)) as tensors:
    present = set(tensors.names)
    expected = {e.name for e in entries + head}
    skipped = {n for n in present if _BUFFERS.fullmatch(n)} | ({output} if tied else set())
    unexpected = present - expected - skipped
    if unexpected:
      raise CheckpointError(f"{tensors.path}: unexpected tensors: "
                            f"{safetensors_io.short_list(tensors.names[n] for n in unexpected)}")
    missing = expected - present
    if missing:
      raise CheckpointError(f"{tensors.path}: missing tensors: "
                            f"{safetensors_io.short_list(missing)}"
                            + (" (config.json: tie_word_embeddings is false)"
                               if output in missing else ""))
    if tied and output in present and not tensors.equal(output, table):
      raise CheckpointError(
          f"{tensors.file_of(output)}: {tensors.names[output]!r} differs from "
          f"{tensors.names[table]!r} but config.json has tie_word_embeddings true")
    backbone = safetensors_io.gather(tensors, entries, placement, "backbone/")
    heads = {"lm": safetensors_io.gather(tensors, head, placement, "heads/lm/")} if head else {}
  if model_config.get("scan_layers", False):  # HF is looped; scan_layers=True wants `layers/...`
    backbone = layout.loop_to_scan(backbone)
  return model_config, {"backbone": backbone, "heads": heads}, tied


def load_hf_decoder(model_dir: str | os.PathLike, *, placement: Placement | None = None,
                    **overrides) -> tuple[ml_collections.ConfigDict, Params]:
  """Reads a HF decoder directory into a `gpt` model config and Model-layout params.

  Args:
    model_dir: directory with `config.json` (model_type gpt2 / llama / mistral / qwen2 /
      gemma) and `model.safetensors` or `model.safetensors.index.json` + its files.
    placement: optional `(path, shape) -> Sharding`, called with the Model path
      (`backbone/layer_0/attention/query/kernel`, `heads/lm/output/kernel`) and our
      shape (`[in, out]`); each leaf is then a jax.Array read slice by slice into it.
    **overrides: TransformerConfig fields to replace (e.g. `dtype="bfloat16"`,
      `attention_impl="einsum"`, `scan_layers=True`).

  Returns:
    `(model_config, params)`: model_config is a ConfigDict `name="gpt"` + TransformerConfig
    fields (dropout 0), as `config.model` of a run; params is
    `{"backbone": {...}, "heads": {"lm": {"output": {"kernel": [hidden, vocab]}}}}`, with
    `heads` empty when the embeddings are tied (`hf_task_config(model_dir).tied`).
    Leaves are float32 numpy (jax.Arrays with a `placement`).
  """
  model_config, params, _ = _load(os.fspath(model_dir), placement, overrides)
  return model_config, params

