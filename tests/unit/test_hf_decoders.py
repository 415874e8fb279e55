"""HF decoder import (gpt2, llama, mistral, qwen2, gemma) against transformers' outputs.

The fixtures are tiny random HF models with transformers' logits and greedy generations
(tools/make_decoder_fixtures.py, torch 2.13 + transformers 5.24); torch is not needed here.
Greedy generation through the KV-cache generator is checked in tests/e2e/test_decoder.py.
"""

import json
import os
import re
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

import ptft_jax as pj
from ptft_jax.convert import __main__ as cli
from ptft_jax.convert import hf, hf_decoder
from ptft_jax.convert.hf_bert import export_hf_bert
from ptft_jax.errors import CheckpointError
from ptft_jax.models import build_backbone, causal_lm_logits
from ptft_jax.models.heads import CausalLMHead
from ptft_jax.models.transformer import BertEncoder, TransformerConfig
from tests.helpers import FIXTURES, flat

ARCHS = ("gpt2", "llama", "mistral", "qwen2", "gemma")
FIXTURE = os.path.join(FIXTURES, "hf_decoders")


def _dir(arch: str) -> str:
  return os.path.join(FIXTURE, arch)


def _reference(arch: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(_dir(arch), "reference.npz"), allow_pickle=False) as f:
    return dict(f)


@pytest.fixture(scope="module")
def loaded():
  return {arch: hf_decoder.load_hf_decoder(_dir(arch)) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_match_transformers(loaded, arch):
  config, params = loaded[arch]
  ref = _reference(arch)
  logits = np.asarray(causal_lm_logits(config, params, ref["input_ids"]))
  assert logits.shape == ref["logits"].shape
  assert np.max(np.abs(logits - ref["logits"])) <= 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_params_are_the_models_tree(loaded, arch):
  """Every param the gpt backbone (and an untied CausalLMHead) defines, in its shape."""
  config, params = loaded[arch]
  ids = {"input_ids": np.zeros((1, 4), np.int32)}
  want = jax.eval_shape(lambda: build_backbone(config).init(
      jax.random.key(0), ids, train=False))["params"]
  got = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                               params["backbone"])
  assert got == jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), want)
  tied = hf_decoder.hf_task_config(_dir(arch)).tied
  assert tied == (arch in ("gpt2", "qwen2", "gemma")) and (params["heads"] == {}) == tied
  if not tied:
    features = {"sequence": np.zeros((1, 1, config.hidden_size), np.float32),
                "word_embeddings": np.zeros((config.vocab_size, config.hidden_size), np.float32)}
    head = jax.eval_shape(lambda: CausalLMHead(tied=False).init(
        jax.random.key(0), features, {}, train=False))["params"]
    assert params["heads"]["lm"]["output"]["kernel"].shape == head["output"]["kernel"].shape


def test_configs_map_each_architecture(loaded):
  c = {arch: loaded[arch][0] for arch in ARCHS}
  assert all(cfg.name == "gpt" and cfg.dropout_rate == 0.0 for cfg in c.values())
  assert (c["gpt2"].norm, c["gpt2"].position_embedding, c["gpt2"].activation) == (
      "layer", "learned", "gelu_tanh")
  assert (c["llama"].rope_scaling, c["llama"].rope_factor, c["llama"].rope_original_max_positions,
          c["llama"].num_kv_heads, c["llama"].qkv_bias) == ("llama3", 8.0, 64, 2, False)
  assert c["mistral"].sliding_window == 8 and c["qwen2"].sliding_window == 0
  assert (c["qwen2"].qkv_bias, c["qwen2"].out_bias, c["qwen2"].mlp_bias) == (True, False, False)
  assert (c["gemma"].norm_offset, c["gemma"].embed_scale, c["gemma"].head_dim_override,
          c["gemma"].num_kv_heads, c["gemma"].activation) == (1.0, True, 16, 1, "gelu_tanh")
  assert hf.model_type(_dir("qwen2")) == "qwen2" and hf.is_decoder(_dir("gemma"))
  assert dict(hf.hf_task_config(_dir("llama"))) == {"name": "causal_lm", "tied": False}


def test_config_defaults_and_nulls():
  """Keys a config.json omits take transformers' defaults; an explicit null is kept."""
  with open(os.path.join(_dir("mistral"), "config.json")) as f:
    hf_config = json.load(f)
  assert hf_decoder.config_from_hf({**hf_config, "sliding_window": None}).sliding_window == 0
  hf_config.pop("sliding_window")
  assert hf_decoder.config_from_hf(hf_config).sliding_window == 4096  # MistralConfig's
  with open(os.path.join(_dir("gemma"), "config.json")) as f:
    hf_config = json.load(f)
  legacy = {**hf_config, "hidden_act": "gelu", "hidden_activation": None}  # Gemma 2b/7b
  assert hf_decoder.config_from_hf(legacy).activation == "gelu_tanh"
  with open(os.path.join(_dir("qwen2"), "config.json")) as f:
    hf_config = json.load(f)
  v4 = {k: v for k, v in hf_config.items() if k != "layer_types"}
  v4.update(use_sliding_window=True, sliding_window=4, max_window_layers=0)
  assert hf_decoder.config_from_hf(v4).sliding_window == 4
  assert hf_decoder.config_from_hf({**v4, "max_window_layers": 2}).sliding_window == 0


def _copy(arch, tmp_path) -> str:
  out = str(tmp_path / arch)
  shutil.copytree(_dir(arch), out)
  return out


def _edit_tensors(model_dir, edit):
  path = os.path.join(model_dir, "model.safetensors")
  tensors = safetensors.numpy.load_file(path)
  edit(tensors)
  safetensors.numpy.save_file(tensors, path)


def _edit_config(model_dir, edit):
  path = os.path.join(model_dir, "config.json")
  with open(path) as f:
    data = json.load(f)
  edit(data)
  with open(path, "w") as f:
    json.dump(data, f)


Q = "model.layers.0.self_attn.q_proj.weight"
BAD_TENSORS = {
    "missing": ("llama", lambda t: t.pop(Q), f"missing tensors: {Q.removeprefix('model.')}"),
    "no_lm_head": ("llama", lambda t: t.pop("lm_head.weight"),
                   "missing tensors: lm_head.weight (config.json: tie_word_embeddings is false)"),
    "extra": ("llama", lambda t: t.update({"score.weight": np.ones((3, 32), np.float32)}),
              "unexpected tensors: score.weight"),
    "shape": ("llama", lambda t: t.update({Q: np.ones((32, 31), np.float32)}),
              f"tensor '{Q}' has shape (32, 31), expected (32, 32)"),
    "packed_shape": ("gpt2", lambda t: t.update(
        {"transformer.h.1.attn.c_attn.weight": np.ones((32, 95), np.float32)}),
                     "tensor 'transformer.h.1.attn.c_attn.weight' has shape (32, 95), "
                     "expected (32, 96)"),
    "int_dtype": ("llama", lambda t: t.update({Q: np.ones((32, 32), np.int32)}),
                  f"tensor '{Q}' has dtype I32"),
    "untied_copy": ("qwen2", lambda t: t.update(
        {"lm_head.weight": t["model.embed_tokens.weight"] + 1}),
                    "'lm_head.weight' differs from 'model.embed_tokens.weight'"),
    "dotdot": ("gemma", lambda t: t.update({"../x": np.ones(2, np.float32)}),
               "unsafe tensor name '../x'"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_bad_tensors_give_one_line_errors(tmp_path, case):
  arch, edit, message = BAD_TENSORS[case]
  model_dir = _copy(arch, tmp_path)
  _edit_tensors(model_dir, edit)
  with pytest.raises(CheckpointError) as info:
    hf_decoder.load_hf_decoder(model_dir)
  text = str(info.value)
  assert "\n" not in text and message in text and model_dir in text, text


BAD_CONFIGS = {
    "model_type": ("llama", lambda c: c.update(model_type="gemma2"),
                   "model_type 'gemma2' is not supported"),
    "rope_type": ("llama", lambda c: c["rope_parameters"].update(rope_type="yarn"),
                  "rope_parameters rope_type 'yarn' is not supported"),
    "llama3_fields": ("llama", lambda c: c["rope_parameters"].pop("low_freq_factor"),
                      "rope_parameters (llama3) has no 'low_freq_factor'"),
    "activation": ("mistral", lambda c: c.update(hidden_act="relu"),
                   "hidden_act 'relu' is not supported"),
    "partial_window": ("qwen2", lambda c: c.update(layer_types=["full_attention",
                                                                "sliding_attention"],
                                                   sliding_window=4),
                       "a sliding window on layers [1] of 2 is not supported"),
    "missing_key": ("gemma", lambda c: c.pop("hidden_size"), "missing key 'hidden_size'"),
    "gpt2_option": ("gpt2", lambda c: c.update(scale_attn_by_inverse_layer_idx=True),
                    "scale_attn_by_inverse_layer_idx True is not supported"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_configs_give_one_line_errors(tmp_path, case):
  arch, edit, message = BAD_CONFIGS[case]
  model_dir = _copy(arch, tmp_path)
  _edit_config(model_dir, edit)
  with pytest.raises(CheckpointError) as info:
    hf_decoder.load_hf_decoder(model_dir)
  text = str(info.value)
  assert "\n" not in text and message in text and "config.json" in text, text


def test_transformers4_config_base_model_names_and_buffers(loaded, tmp_path):
  """rope_scaling + rope_theta (transformers 4), names without `model.` (a LlamaModel),
  an old rotary inv_freq buffer and a tied lm_head copy: the same config and params."""
  model_dir = _copy("llama", tmp_path)

  def v4(c):
    rope = c.pop("rope_parameters")
    c["rope_theta"] = rope.pop("rope_theta")
    c["rope_scaling"] = rope
  _edit_config(model_dir, v4)

  def base(t):
    for name in [n for n in t if n.startswith("model.")]:
      t[name.removeprefix("model.")] = t.pop(name)
    t["layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
  _edit_tensors(model_dir, base)
  config, params = hf_decoder.load_hf_decoder(model_dir)
  assert config == loaded["llama"][0]
  assert flat(params).keys() == flat(loaded["llama"][1]).keys()
  for path, value in flat(loaded["llama"][1]).items():
    np.testing.assert_array_equal(flat(params)[path], value, err_msg=path)


def test_gpt2_hub_names_and_buffers(loaded, tmp_path):
  """The hub's gpt2 file: GPT2Model names (no `transformer.`) with causal-mask buffers."""
  model_dir = _copy("gpt2", tmp_path)

  def hub(t):
    for name in list(t):
      t[name.removeprefix("transformer.")] = t.pop(name)
    for i in range(2):
      t[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 128, 128), np.float32))
      t[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
  _edit_tensors(model_dir, hub)
  _, params = hf_decoder.load_hf_decoder(model_dir)
  for path, value in flat(loaded["gpt2"][1]).items():
    np.testing.assert_array_equal(flat(params)[path], value, err_msg=path)


def test_bfloat16_and_float16_tensors_read_as_float32(tmp_path):
  """Checkpoints in bfloat16 (most released LLMs) or float16: each value exactly its
  float32 widening, also for the tied lm_head comparison."""
  model_dir = _copy("gemma", tmp_path)
  want = {}

  def narrow(t):
    for i, name in enumerate(sorted(t)):
      t[name] = t[name].astype(ml_dtypes.bfloat16 if i % 2 else np.float16)
      want[name] = t[name].astype(np.float32)
    t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()  # a tied copy, equal
  _edit_tensors(model_dir, narrow)
  _, params = hf_decoder.load_hf_decoder(model_dir)
  np.testing.assert_array_equal(params["backbone"]["embeddings"]["word_embeddings"]["embedding"],
                                want["model.embed_tokens.weight"])
  np.testing.assert_array_equal(params["backbone"]["layer_1"]["mlp"]["gate"]["kernel"],
                                want["model.layers.1.mlp.gate_proj.weight"].T)
  np.testing.assert_array_equal(params["backbone"]["final_norm"]["scale"],
                                want["model.norm.weight"])


def _split_into_index(model_dir):
  """model.safetensors -> two files + model.safetensors.index.json (save_pretrained's form)."""
  tensors = safetensors.numpy.load_file(os.path.join(model_dir, "model.safetensors"))
  os.remove(os.path.join(model_dir, "model.safetensors"))
  names = sorted(tensors)
  files = {"model-00001-of-00002.safetensors": names[::2],
           "model-00002-of-00002.safetensors": names[1::2]}
  for file, part in files.items():
    safetensors.numpy.save_file({n: tensors[n] for n in part}, os.path.join(model_dir, file))
  weight_map = {n: f for f, part in files.items() for n in part}
  with open(os.path.join(model_dir, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return weight_map


def test_multi_file_checkpoint(loaded, tmp_path):
  model_dir = _copy("gpt2", tmp_path)
  weight_map = _split_into_index(model_dir)
  config, params = hf_decoder.load_hf_decoder(model_dir)
  assert config == loaded["gpt2"][0]
  for path, value in flat(loaded["gpt2"][1]).items():
    np.testing.assert_array_equal(flat(params)[path], value, err_msg=path)
  # A tensor the index places in a file that lacks it; a file outside the directory.
  index = os.path.join(model_dir, "model.safetensors.index.json")
  name = next(iter(weight_map))
  wrong = {**weight_map, name: next(f for f in set(weight_map.values()) if f != weight_map[name])}
  for bad, message in ((wrong, f"lacks tensors that model.safetensors.index.json places there: "
                               f"{name}"),
                       ({**weight_map, name: "../model.safetensors"}, "only file names in")):
    with open(index, "w") as f:
      json.dump({"weight_map": bad}, f)
    with pytest.raises(CheckpointError, match="^[^\n]*" + re.escape(message)):
      hf_decoder.load_hf_decoder(model_dir)


def test_cli_hf_writes_a_workdir_load_params_reads(loaded, tmp_path, capsys):
  out = str(tmp_path / "w")
  assert cli.main(["hf", "--src", _dir("mistral"), "--workdir", out]) == 0
  assert "mistral: 2 layers, hidden 32) + heads ['lm']" in capsys.readouterr().out
  for name in ("model_config.json", "task_config.json", "hf_config.json", "tokenizer.json",
               "tokenizer_config.json", "generation_config.json"):
    assert os.path.isfile(os.path.join(out, name)), name
  assert not os.path.exists(os.path.join(out, "config.json"))  # that would mean a run
  config, params = pj.load_params(out)
  assert config == loaded["mistral"][0]
  for path, value in flat(loaded["mistral"][1]).items():
    np.testing.assert_array_equal(flat(params)[path], value, err_msg=path)
  with open(os.path.join(out, "task_config.json")) as f:
    assert json.load(f) == {"name": "causal_lm", "tied": False}
  # A HF decoder directory itself: the same tree.
  config, params = pj.load_params(_dir("qwen2"))
  assert config == loaded["qwen2"][0] and params["heads"] == {}


def test_cli_hf_and_load_hf_take_bert_too(tmp_path, capsys):
  tiny = TransformerConfig(vocab_size=12, hidden_size=8, num_layers=1, num_heads=2,
                           intermediate_size=16, max_position_embeddings=16)
  shapes = jax.eval_shape(lambda: BertEncoder(tiny).init(
      jax.random.key(0), {"input_ids": np.zeros((1, 1), np.int32)}, train=False))["params"]
  params = jax.tree_util.tree_map(lambda s: np.full(s.shape, 0.5, np.float32), shapes)
  export_hf_bert(tiny, params, tmp_path / "bert")
  config, loaded_params = hf.load_hf(tmp_path / "bert")
  assert config == tiny and hf.hf_task_config(tmp_path / "bert") is None
  assert not hf.is_decoder(tmp_path / "bert") and loaded_params["heads"] == {}
  out = str(tmp_path / "w")
  assert cli.main(["hf", "--src", str(tmp_path / "bert"), "--workdir", out]) == 0
  assert "(bert: 1 layers, hidden 8) -> " in capsys.readouterr().out
  assert pj.load_params(out)[0] == tiny
  assert not os.path.exists(os.path.join(out, "task_config.json"))


def test_cli_hf_bad_source_is_one_line(tmp_path, capsys):
  model_dir = _copy("gemma", tmp_path)
  _edit_config(model_dir, lambda c: c.update(model_type="t5"))
  assert cli.main(["hf", "--src", model_dir, "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "model_type 't5' is not supported" in err
