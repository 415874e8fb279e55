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

The way back (`convert.decoder_export` writes the files): `config_to_hf(model_config)` is
the inverse of `config_from_hf` (`choose_model_type` picks the type a config is shaped like;
a field no HF decoder expresses is one error line), `update_hf_config` changes an imported
model's config.json only where a fine-tuned model config differs, and `export_layout` /
`kernel_modules` invert the tensor mapping above (the same Entry list).
"""

import dataclasses
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


def model_type_of(hf: Mapping[str, Any], path: str = CONFIG_FILE) -> str:
  """`model_type` of a HF config dict if it is a supported decoder (else a one-line error)."""
  return _model_type(hf, path)


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



# --- export: the inverse mapping -------------------------------------------------------------

# The *ForCausalLM class transformers builds for each model_type.
CAUSAL_LM_CLASSES = {"gemma": "GemmaForCausalLM", "gpt2": "GPT2LMHeadModel",
                     "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                     "qwen2": "Qwen2ForCausalLM"}
# Our activation -> HF's name (gpt2's gelu_new and the others' gelu_pytorch_tanh are the same).
_HF_ACTIVATIONS = {"gelu": "gelu", "silu": "silu"}
_HF_TANH_GELU = {"gpt2": "gelu_new"}
# TransformerConfig fields that do not change the function a model computes (how it runs).
RUNTIME_FIELDS = ("attention_dropout_rate", "attention_impl", "dropout_rate", "dtype", "remat",
                  "scan_layers")
# What GptDecoder always is (models.gpt's defaults); anything else has no HF decoder.
_GPT_FIXED = dict(causal=True, pre_norm=True, type_vocab_size=0, pooler=False)
_PREFIX = {"gpt2": "transformer."}  # others: "model."
LM_HEAD = "lm_head.weight"


def gpt_fields(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """Every TransformerConfig field of a `gpt` model config (`config.model`: a ConfigDict or
  dict, `name` ignored), defaults filled in as `models.gpt` fills them."""
  from ptft_jax.models.transformer import TransformerConfig

  given = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items()
           if k != "name"}
  try:
    return dataclasses.asdict(TransformerConfig(**{**_GPT_FIXED, **given}))
  except TypeError as e:
    raise ConfigError(f"config.model is not a gpt model config: "
                      f"{safetensors_io.first_line(e)}") from None


def architecture(fields: Mapping[str, Any]) -> dict[str, Any]:
  """The fields of `gpt_fields(...)` that determine the function computed, normalized:
  effective head_dim and kv heads, rope settings only where they apply."""
  out = {k: v for k, v in fields.items() if k not in RUNTIME_FIELDS}
  heads = out["num_heads"]
  out["head_dim_override"] = out["head_dim_override"] or out["hidden_size"] // heads
  out["num_kv_heads"] = out["num_kv_heads"] or heads
  rope = ("rope_theta", "rope_scaling", "rope_factor", "rope_low_freq_factor",
          "rope_high_freq_factor", "rope_original_max_positions")
  keep = {"": ("rope_theta",), "linear": ("rope_theta", "rope_scaling", "rope_factor")}.get(
      out["rope_scaling"], rope) if out["position_embedding"] == "rope" else ()
  for key in rope:
    if key not in keep:
      out.pop(key)
  out["norm_offset"] = float(out["norm_offset"])
  return out


def same_architecture(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
  """Whether two `gpt` model configs compute the same function (RUNTIME_FIELDS aside)."""
  return architecture(gpt_fields(a)) == architecture(gpt_fields(b))


def choose_model_type(model_config: Mapping[str, Any]) -> str:
  """The HF model_type a `gpt` model config is shaped like (not yet checked field by field;
  `config_to_hf` does that): LayerNorm -> gpt2; Gemma's norm offset or embedding scale ->
  gemma; q/k/v biases only -> qwen2; a sliding window -> mistral; else llama."""
  c = gpt_fields(model_config)
  if c["norm"] == "layer":
    return "gpt2"
  if c["norm_offset"] or c["embed_scale"]:
    return "gemma"
  if c["qkv_bias"] and not c["out_bias"] and not c["mlp_bias"]:
    return "qwen2"
  if c["sliding_window"]:
    return "mistral"
  return "llama"


def _requirements(model_type: str, c: Mapping[str, Any]) -> list[tuple[str, Any, str]]:
  """(field, value it must have, what HF has) for `model_type`; checked in order."""
  heads, hidden = c["num_heads"], c["hidden_size"]
  common = [(k, v, f"{k}={v!r} (all HF decoders)") for k, v in _GPT_FIXED.items()]
  if model_type == "gpt2":
    return common + [
        ("norm", "layer", "LayerNorm"), ("position_embedding", "learned", "learned positions"),
        ("gated_mlp", False, "a plain MLP"), ("qkv_bias", True, "biases everywhere"),
        ("out_bias", True, "biases everywhere"), ("mlp_bias", True, "biases everywhere"),
        ("num_kv_heads", c["num_kv_heads"] if c["num_kv_heads"] in (0, heads) else 0,
         "no grouped-query attention"),
        ("head_dim_override", c["head_dim_override"] if c["head_dim_override"] in (
            0, hidden // heads) else 0, "head_dim = hidden / heads"),
        ("norm_offset", 0.0, "no norm offset"), ("embed_scale", False, "no embedding scale"),
        ("sliding_window", 0, "no sliding window")]
  rope = common + [("norm", "rms", "RMSNorm"), ("position_embedding", "rope", "rotary positions"),
                   ("gated_mlp", True, "a gated MLP")]
  plain = [("norm_offset", 0.0, "RMSNorm without offset"),
           ("embed_scale", False, "no embedding scale")]
  if model_type == "llama":
    return rope + plain + [
        ("out_bias", c["qkv_bias"], "one attention_bias for q/k/v and o"),
        ("sliding_window", 0, "no sliding window (mistral has one)")]
  if model_type == "mistral":
    return rope + plain + [("qkv_bias", False, "no biases"), ("out_bias", False, "no biases"),
                           ("mlp_bias", False, "no biases")]
  if model_type == "qwen2":
    return rope + plain + [("qkv_bias", True, "q/k/v biases"), ("out_bias", False, "no o bias"),
                           ("mlp_bias", False, "no MLP biases")]
  return rope + [  # gemma
      ("norm_offset", 1.0, "RMSNorm(1 + w)"), ("embed_scale", True, "embeddings * sqrt(hidden)"),
      ("out_bias", c["qkv_bias"], "one attention_bias for q/k/v and o"),
      ("mlp_bias", False, "no MLP biases"), ("sliding_window", 0, "no sliding window")]


def _rope_scaling(c: Mapping[str, Any]) -> dict[str, Any] | None:
  if c["rope_scaling"] == "linear":
    return {"rope_type": "linear", "factor": float(c["rope_factor"])}
  if c["rope_scaling"] == "llama3":
    return {"rope_type": "llama3", "factor": float(c["rope_factor"]),
            "low_freq_factor": float(c["rope_low_freq_factor"]),
            "high_freq_factor": float(c["rope_high_freq_factor"]),
            "original_max_position_embeddings": int(c["rope_original_max_positions"])}
  return None


def rope_parameters(model_config: Mapping[str, Any]) -> dict[str, Any]:
  """transformers 5's `rope_parameters` dict (rope_theta inside) for a rope model config."""
  c = gpt_fields(model_config)
  return {"rope_type": "default", **(_rope_scaling(c) or {}), "rope_theta": float(c["rope_theta"])}


def config_to_hf(model_config: Mapping[str, Any], model_type: str | None = None, *,
                 tied: bool = True) -> dict[str, Any]:
  """A `gpt` model config -> the HF decoder `config.json` dict computing the same function.

  The inverse of `config_from_hf`: `config_from_hf(config_to_hf(c)) == c` for the configs
  it returns. Rope settings are written as `rope_theta` + `rope_scaling` and Qwen2's window
  as `use_sliding_window` / `max_window_layers`, which transformers 4 and 5 both read.

  Args:
    model_config: `config.model` of a decoder (`name="gpt"` + TransformerConfig fields).
    model_type: gpt2 / llama / mistral / qwen2 / gemma; default `choose_model_type`.
    tied: the LM head reuses the input embeddings (`tie_word_embeddings`).

  Raises one-line ConfigErrors naming the first field `model_type` cannot express.
  """
  c = gpt_fields(model_config)
  model_type = model_type or choose_model_type(c)
  if model_type not in MODEL_TYPES:
    raise ConfigError(f"model_type {model_type!r} is not supported (decoders: "
                      f"{', '.join(MODEL_TYPES)})")
  for field, want, what in _requirements(model_type, c):
    if c[field] != want:
      raise ConfigError(
          f"config.model.{field}={c[field]!r} has no {model_type} equivalent ({model_type} "
          f"needs {field}={want!r}: {what}); export-hf writes {', '.join(MODEL_TYPES)}")
  act = c["activation"]
  hf_act = _HF_ACTIVATIONS.get(act) or _HF_TANH_GELU.get(model_type, "gelu_pytorch_tanh")
  base = dict(architectures=[CAUSAL_LM_CLASSES[model_type]], model_type=model_type,
              vocab_size=c["vocab_size"], tie_word_embeddings=bool(tied))
  if model_type == "gpt2":
    hf = dict(base, n_embd=c["hidden_size"], n_layer=c["num_layers"], n_head=c["num_heads"],
              n_inner=c["intermediate_size"], n_positions=c["max_position_embeddings"],
              layer_norm_epsilon=c["layer_norm_eps"], activation_function=hf_act,
              scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
              reorder_and_upcast_attn=False, add_cross_attention=False,
              resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  else:
    heads = c["num_heads"]
    hf = dict(base, hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
              num_hidden_layers=c["num_layers"], num_attention_heads=heads,
              num_key_value_heads=c["num_kv_heads"] or heads,
              head_dim=c["head_dim_override"] or c["hidden_size"] // heads,
              max_position_embeddings=c["max_position_embeddings"],
              rms_norm_eps=c["layer_norm_eps"], hidden_act=hf_act,
              rope_theta=float(c["rope_theta"]), rope_scaling=_rope_scaling(c),
              attention_dropout=0.0)
    window = int(c["sliding_window"])
    if model_type in ("llama", "gemma"):
      hf["attention_bias"] = bool(c["qkv_bias"])
    if model_type == "llama":
      hf.update(mlp_bias=bool(c["mlp_bias"]), pretraining_tp=1)
    elif model_type == "mistral":
      hf["sliding_window"] = window or None
    elif model_type == "qwen2":
      hf.update(use_sliding_window=bool(window), sliding_window=window or None,
                max_window_layers=0 if window else c["num_layers"])
    elif model_type == "gemma":
      hf["hidden_activation"] = hf_act
  check_round_trip(hf, c, model_type)
  return hf


def check_round_trip(hf: Mapping[str, Any], model_config: Mapping[str, Any],
                     what: str = CONFIG_FILE) -> None:
  """`config_from_hf(hf)` computes what `model_config` does (RUNTIME_FIELDS aside), or a
  one-line ConfigError naming the first field that differs."""
  want = architecture(gpt_fields(model_config))
  got = architecture(gpt_fields(config_from_hf(hf, what)))
  for key in sorted(set(want) | set(got)):
    if want.get(key) != got.get(key):
      raise ConfigError(f"config.model.{key}={want.get(key)!r} has no {hf.get('model_type')} "
                        f"equivalent ({what} would give {got.get(key)!r})")


def update_hf_config(hf: Mapping[str, Any], model_config: Mapping[str, Any], *,
                     tied: bool, path: str = CONFIG_FILE) -> dict[str, Any]:
  """An imported model's HF config with only what the fine-tuned `model_config` changed.

  Same model_type; keys whose value `config_to_hf` would write differently are replaced
  (rope in the key style the file uses); `architectures` names the *ForCausalLM class.
  """
  model_type = _model_type(hf, path)
  out = dict(hf)
  same = (same_architecture(config_from_hf(hf, path), model_config)
          and tied_embeddings(hf, path) == tied)
  if not same:
    want = config_to_hf(model_config, model_type, tied=tied)
    if out.get("rope_parameters"):  # transformers 5 style: rope_theta inside rope_parameters
      want.pop("rope_theta", None)
      want.pop("rope_scaling", None)
      if model_type != "gpt2":
        want["rope_parameters"] = rope_parameters(model_config)
    if model_type == "qwen2" and out.get("layer_types") is not None:
      window = want["use_sliding_window"]
      want["layer_types"] = ["sliding_attention" if window else "full_attention"] * (
          want["num_hidden_layers"])
    for key, value in want.items():
      if key != "architectures" and out.get(key) != value:
        out[key] = value
  out["architectures"] = [CAUSAL_LM_CLASSES[model_type]]
  check_round_trip(out, model_config, path)
  return out


@dataclasses.dataclass(frozen=True)
class HfTensor:
  """One tensor of an exported HF checkpoint and the params it is made of.

  `name` is the full name in the file (`model.layers.0.self_attn.q_proj.weight`), `shape`
  its HF shape; each part is an `Entry` whose `path` starts at the params' root
  (`backbone/...`, `heads/lm/...`): the whole tensor (transposed when `transpose`), or a
  column range of a packed tensor (GPT-2's `c_attn`).
  """

  name: str
  shape: tuple[int, ...]
  parts: tuple[Entry, ...]


def export_layout(model_type: str, model_config: Mapping[str, Any], *,
                  tied: bool) -> list[HfTensor]:
  """The tensors of a `model_type` checkpoint (`*ForCausalLM` names) for `model_config`:
  the inverse of what `load_hf_decoder` reads (same Entry list), no lm_head when tied."""
  c = ml_collections.ConfigDict(gpt_fields(model_config))
  entries, _, output = _entries(model_type, c)
  prefix = _PREFIX.get(model_type, "model.")
  grouped: dict[str, list[Entry]] = {}
  for e in entries:
    grouped.setdefault(e.name, []).append(
        dataclasses.replace(e, path=("backbone",) + tuple(e.path)))
  out = [HfTensor(prefix + name, parts[0].shape, tuple(parts)) for name, parts in grouped.items()]
  if not tied:
    out.append(HfTensor(output, (c.vocab_size, c.hidden_size), (Entry(
        output, ("heads", "lm", "output", "kernel"), (c.vocab_size, c.hidden_size),
        transpose=True),)))
  return out


@dataclasses.dataclass(frozen=True)
class HfModule:
  """The HF module a kernel of ours belongs to (for LoRA adapters).

  `module`: its path in the *ForCausalLM (`model.layers.0.self_attn.q_proj`); `linear`:
  a torch Linear (`[out, in]` weight) rather than GPT-2's Conv1D (`[in, out]`); `columns`:
  the kernel's column range in a packed module (GPT-2's `c_attn` q|k|v), else None;
  `width`: the module's output width.
  """

  module: str
  linear: bool
  columns: tuple[int, int] | None
  width: int


def kernel_modules(layout: list[HfTensor]) -> dict[str, HfModule]:
  """{our kernel path "backbone/layer_0/attention/query/kernel": its HfModule} for the
  2-D weights of an `export_layout`."""
  out = {}
  for tensor in layout:
    if not tensor.name.endswith(".weight") or len(tensor.shape) != 2:
      continue
    module = tensor.name[:-len(".weight")]
    for part in tensor.parts:
      if part.path[-1] == "kernel":
        width = tensor.shape[0] if part.transpose else tensor.shape[1]
        out["/".join(part.path)] = HfModule(module, part.transpose, part.columns, width)
  return out
