"""Decoder export (`python -m ptft_jax.convert export-hf` on gpt runs) without torch.

Runs are written from tests/fixtures/hf_decoder_export/<case>/ (config.json + params.npz over
an imported tests/fixtures/hf_decoders/<arch> base, as tools/check_decoder_export.py made
them); what transformers and PEFT computed from their exports is checked in
tests/e2e/test_decoder_export.py. Here: the config inverse, the files against the imported
fixtures tensor for tensor, LoRA merged and as PEFT adapters (PEFT's merge done in numpy),
shards + index, dtypes, tokenizer files, scanned layers, one-line errors, and that a failed
export leaves nothing.
"""

import json
import os
import re

import ml_collections
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from ptft_jax.convert import __main__ as cli
from ptft_jax.convert import decoder_export, hf_decoder, load_hf
from ptft_jax.convert import workdir as convert_workdir
from ptft_jax.errors import ConfigError
from ptft_jax.models import causal_lm_logits, layout
from ptft_jax.optim import lora
from ptft_jax.train import checkpoint
from ptft_jax.utils import flat_paths, unflatten_paths
from tests.helpers import FIXTURES, flat

ARCHS = ("gpt2", "llama", "mistral", "qwen2", "gemma")
CASES = os.path.join(FIXTURES, "hf_decoder_export")
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json")


def _hf_dir(arch: str) -> str:
  return os.path.join(FIXTURES, "hf_decoders", arch)


def _hf_config(arch: str) -> dict:
  with open(os.path.join(_hf_dir(arch), "config.json")) as f:
    return json.load(f)


def _tensors(directory: str) -> dict[str, np.ndarray]:
  out = {}
  for name in sorted(os.listdir(directory)):
    if name.endswith(".safetensors"):
      out.update(safetensors.numpy.load_file(os.path.join(directory, name)))
  return out


@pytest.fixture(scope="module")
def imports(tmp_path_factory):
  """{"hf_decoders/<arch>": an imported workdir}, filled on first use."""
  root = tmp_path_factory.mktemp("imports")

  class Imports(dict):
    def __missing__(self, key):
      self[key] = str(root / key.replace("/", "_"))
      convert_workdir.import_hf_decoder(os.path.join(FIXTURES, key), self[key])
      return self[key]

  return Imports()


def _case(case: str) -> tuple[dict, dict]:
  """(run config, flat float32 params over the base) of a fixture case."""
  with open(os.path.join(CASES, case, "config.json")) as f:
    config = json.load(f)
  with np.load(os.path.join(CASES, case, "params.npz"), allow_pickle=False) as f:
    params = {k: v.astype(np.float32) for k, v in f.items()}
  init = config["init"]["pretrained_workdir"]
  if init:
    _, base = hf_decoder.load_hf_decoder(os.path.join(FIXTURES, init))
    params = {**flat(base), **params}
  return config, params


def write_run(path, case: str, imports, *, edit=None) -> tuple[str, dict]:
  """A run of fixture `case` in `path` (config.json + a params checkpoint): (workdir, params).

  `edit(config, params)` may change both first (params flat, float32)."""
  config, params = _case(case)
  if config["init"]["pretrained_workdir"]:
    config["init"]["pretrained_workdir"] = imports[config["init"]["pretrained_workdir"]]
  if edit is not None:
    edit(config, params)
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  tree = unflatten_paths(params)
  checkpoint.save_pretrained(str(path), tree)
  return str(path), tree


def _export(workdir, out, *args) -> int:
  return cli.main(["export-hf", "--workdir", str(workdir), "--out", str(out), *args])


# --- config.json -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_config_to_hf_inverts_config_from_hf(arch):
  hf = _hf_config(arch)
  config, tied = hf_decoder.config_from_hf(hf), hf_decoder.tied_embeddings(hf)
  assert hf_decoder.choose_model_type(config) == arch
  written = hf_decoder.config_to_hf(config, tied=tied)
  assert hf_decoder.config_from_hf(written) == config
  assert written["model_type"] == arch and written["tie_word_embeddings"] == tied
  assert written["architectures"] == hf["architectures"]
  if arch != "gpt2":  # rope as transformers 4 and 5 both read it
    assert "rope_parameters" not in written and written["rope_theta"] == 10000.0
  # The imported file comes back unchanged when the model config did not change.
  assert hf_decoder.update_hf_config(hf, config, tied=tied) == hf


def test_update_hf_config_changes_only_what_changed():
  hf = _hf_config("llama")
  config = hf_decoder.config_from_hf(hf)
  config.rope_theta, config.max_position_embeddings = 5000.0, 256
  config.dtype, config.scan_layers = "bfloat16", True  # how it runs: no HF key
  updated = hf_decoder.update_hf_config(hf, config, tied=False)
  assert {k for k in hf if updated[k] != hf[k]} == {"rope_parameters", "max_position_embeddings"}
  assert updated["rope_parameters"]["rope_theta"] == 5000.0 and "rope_theta" not in updated
  assert hf_decoder.same_architecture(hf_decoder.config_from_hf(updated), config)


@pytest.mark.parametrize(("case", "arch"), [
    ("scratch_llama", "llama"), ("scratch_gpt2", "gpt2"), ("scratch_qwen2", "qwen2"),
    ("scratch_gemma", "gemma"), ("scratch_mistral", "mistral")])
def test_model_type_by_shape(case, arch):
  with open(os.path.join(CASES, case, "config.json")) as f:
    model = json.load(f)["model"]
  assert hf_decoder.choose_model_type(model) == arch
  written = hf_decoder.config_to_hf(model)
  assert hf_decoder.same_architecture(hf_decoder.config_from_hf(written), model)


LLAMA = dict(name="gpt", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
             intermediate_size=32, norm="rms", position_embedding="rope", gated_mlp=True,
             activation="silu", qkv_bias=False, out_bias=False, mlp_bias=False)
GPT2 = dict(name="gpt", vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
            intermediate_size=32)


@pytest.mark.parametrize(("model", "message"), [
    (dict(LLAMA, position_embedding="learned"),
     r"config.model.position_embedding='learned' has no llama equivalent \(llama needs "
     r"position_embedding='rope'"),
    (dict(LLAMA, out_bias=True, mlp_bias=True), r"config.model.out_bias=True has no llama"),
    (dict(LLAMA, qkv_bias=True, out_bias=True, sliding_window=4),
     r"config.model.qkv_bias=True has no mistral"),
    (dict(LLAMA, gated_mlp=False), r"config.model.gated_mlp=False has no llama"),
    (dict(LLAMA, norm_offset=1.0, embed_scale=True, activation="gelu"),
     r"config.model.activation='gelu' has no gemma equivalent"),
    (dict(LLAMA, norm_offset=0.5), r"config.model.norm_offset=0.5 has no gemma"),
    (dict(GPT2, num_kv_heads=1), r"config.model.num_kv_heads=1 has no gpt2"),
    (dict(GPT2, causal=False), r"config.model.causal=False has no gpt2"),
], ids=["learned-rms", "llama-biases", "window-with-biases", "plain-mlp", "gemma-exact-gelu",
        "norm-offset", "gpt2-gqa", "not-causal"])
def test_inexpressible_configs_name_the_field(model, message):
  with pytest.raises(ConfigError, match=message) as e:
    hf_decoder.config_to_hf(model)
  assert len(str(e.value).splitlines()) == 1


# --- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_export_rewrites_the_imported_files(arch, tmp_path):
  """An imported model exported again: the same config.json and, tensor for tensor, the same
  names, shapes, dtypes and values as the HF file (tied models: no lm_head)."""
  config, params = load_hf(_hf_dir(arch))
  hf = _hf_config(arch)
  written = decoder_export.export_hf_decoder(
      config, params, tmp_path / "out", tied=hf_decoder.tied_embeddings(hf), hf_config=hf)
  assert written == hf
  with open(tmp_path / "out" / "config.json") as f:
    assert json.load(f) == hf
  ours, theirs = _tensors(str(tmp_path / "out")), _tensors(_hf_dir(arch))
  assert sorted(ours) == sorted(theirs)
  for name, value in theirs.items():
    assert ours[name].dtype == value.dtype and ours[name].shape == value.shape, name
    np.testing.assert_array_equal(ours[name], value, err_msg=name)
  with safetensors.safe_open(str(tmp_path / "out" / "model.safetensors"), "numpy") as f:
    assert f.metadata() == {"format": "pt"}


def test_shards_index_and_dtypes(tmp_path):
  config, params = load_hf(_hf_dir("llama"))
  kw = dict(tied=False, hf_config=_hf_config("llama"))
  decoder_export.export_hf_decoder(config, params, tmp_path / "one", **kw)
  decoder_export.export_hf_decoder(config, params, tmp_path / "many", max_shard_size="40KB",
                                   **kw)
  files = sorted(os.listdir(tmp_path / "many"))
  shards = [f for f in files if f.endswith(".safetensors")]
  assert len(shards) == 4 and shards[0] == "model-00001-of-00004.safetensors"
  with open(tmp_path / "many" / "model.safetensors.index.json") as f:
    index = json.load(f)
  sizes = {s: os.path.getsize(tmp_path / "many" / s) for s in shards}
  one = _tensors(str(tmp_path / "one"))
  assert index["metadata"]["total_size"] == sum(v.nbytes for v in one.values())
  for shard in shards:  # at most 40 KB of data each, unless one tensor is larger
    names = [n for n, f in index["weight_map"].items() if f == shard]
    data = sum(one[n].nbytes for n in names)
    assert data <= 40_000 or len(names) == 1
    assert sizes[shard] - data < 4096  # the rest is the header
  assert sorted(index["weight_map"]) == sorted(one)
  _, again = load_hf(str(tmp_path / "many"))  # our reader takes the index
  assert all(np.array_equal(a, b) for a, b in zip(flat(again).values(), flat(params).values(),
                                                  strict=True))
  for dtype, tag in (("bfloat16", "BF16"), ("float16", "F16")):
    out = tmp_path / dtype
    written = decoder_export.export_hf_decoder(config, params, out, dtype=dtype, **kw)
    assert written["dtype"] == dtype
    with safetensors.safe_open(str(out / "model.safetensors"), "numpy" if tag == "F16" else
                               "flax") as f:
      assert all(str(f.get_slice(k).get_dtype()) == tag for k in f.keys())
    _, low = load_hf(str(out))
    for path, value in flat(params).items():
      want = value.astype("bfloat16" if dtype == "bfloat16" else np.float16).astype(np.float32)
      np.testing.assert_array_equal(flat(low)[path], want, err_msg=path)


def test_writes_one_tensor_at_a_time_from_sharded_params(imports, tmp_path, monkeypatch):
  """Params are restored sharded over the 8 simulated devices; every host copy is one leaf
  (or one LoRA adapter), never the model."""
  workdir, params = write_run(tmp_path / "run", "llama_lora", imports)
  restored, gathered = [], []
  real_restore, real_host = decoder_export._restore, decoder_export.to_host

  def restore(*args):
    restored.append(real_restore(*args))
    return restored[-1]

  def to_host(x):
    gathered.append(int(np.prod(np.shape(x))) * 4)
    return real_host(x)

  monkeypatch.setattr(decoder_export, "_restore", restore)
  monkeypatch.setattr(decoder_export, "to_host", to_host)
  assert _export(workdir, tmp_path / "out") == 0
  kernel = restored[0]["backbone"]["layer_0"]["mlp"]["output"]["kernel"]
  assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
  base = {k: v for k, v in flat(params).items() if not k.startswith("lora/")}
  assert len(gathered) == len(base) and max(gathered) == max(v.nbytes for v in base.values())


# --- runs ----------------------------------------------------------------------------------------


def _peft_merge(base: dict, adapter_dir: str, conv1d: bool) -> dict:
  """What PEFT's merge_and_unload does to the base's HF tensors: W += (alpha / r) * B @ A
  (GPT-2's Conv1D weights [in, out]: the transpose), r and alpha per rank/alpha_pattern."""
  with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
    config = json.load(f)
  tensors = safetensors.numpy.load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
  out = dict(base)
  for name, a in tensors.items():
    if not name.endswith(".lora_A.weight"):
      continue
    module = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
    b = tensors[name.replace("lora_A", "lora_B")]
    key = next((k for k in config["rank_pattern"] if re.match(rf"(.*\.)?({k})$", module)), None)
    r = config["rank_pattern"].get(key, config["r"])
    alpha = config["alpha_pattern"].get(key, config["lora_alpha"])
    assert a.shape[0] == b.shape[1] == r
    delta = (alpha / r) * (b @ a)
    out[module + ".weight"] = base[module + ".weight"] + (delta.T if conv1d else delta)
  return out


def test_lora_run_merged_and_as_a_peft_adapter(imports, tmp_path):
  workdir, params = write_run(tmp_path / "run", "llama_lora", imports)
  assert _export(workdir, tmp_path / "merged") == 0
  merged = lora.merge_lora(params, 4.0)
  config, again = load_hf(str(tmp_path / "merged"))
  ours, want = flat(again), flat(merged)
  assert sorted(ours) == sorted(want)
  for path, value in want.items():
    np.testing.assert_allclose(ours[path], value, rtol=0, atol=1e-6, err_msg=path)
  ids = np.arange(3, 15, dtype=np.int32)[None]
  np.testing.assert_allclose(causal_lm_logits(config, again, ids),
                             causal_lm_logits(config, merged, ids), rtol=0, atol=1e-5)
  # The imported model's config.json, generation and tokenizer files come along unchanged.
  for name in ("config.json",) + SIDE_FILES:
    with open(tmp_path / "merged" / name, "rb") as a, open(os.path.join(
        _hf_dir("llama"), name), "rb") as b:
      assert json.loads(a.read()) == json.loads(b.read()), name

  assert _export(workdir, tmp_path / "adapter", "--adapter-only", "--base-model",
                 "hub/llama-tiny") == 0
  assert sorted(os.listdir(tmp_path / "adapter")) == [
      "adapter_config.json", "adapter_model.safetensors", "tokenizer.json",
      "tokenizer_config.json"]
  with open(tmp_path / "adapter" / "adapter_config.json") as f:
    adapter = json.load(f)
  assert {k: adapter[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout",
                                  "bias", "base_model_name_or_path", "fan_in_fan_out")} == {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4.0,
      "lora_dropout": 0.0, "bias": "none", "base_model_name_or_path": "hub/llama-tiny",
      "fan_in_fan_out": False}
  assert adapter["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                       "up_proj", "v_proj"]
  tensors = safetensors.numpy.load_file(str(tmp_path / "adapter" /
                                            "adapter_model.safetensors"))
  assert len(tensors) == 2 * 7 * 2
  q = params["lora"]["backbone"]["layer_1"]["attention"]["query"]["kernel"]
  prefix = "base_model.model.model.layers.1.self_attn.q_proj"
  np.testing.assert_array_equal(tensors[f"{prefix}.lora_A.weight"], q["a"].T)  # [r, in]
  np.testing.assert_array_equal(tensors[f"{prefix}.lora_B.weight"], q["b"].T)  # [out, r]
  peft = _peft_merge(_tensors(_hf_dir("llama")), str(tmp_path / "adapter"), conv1d=False)
  exported = _tensors(str(tmp_path / "merged"))
  assert sorted(peft) == sorted(exported)
  for name, value in exported.items():
    np.testing.assert_allclose(peft[name], value, rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", ["gpt2_lora", "qwen2_lora"])
def test_adapters_of_packed_and_partial_modules(case, imports, tmp_path):
  """GPT-2's c_attn holds q|k|v: one adapter whose rank counts its parts (q and v here: A
  stacks their a.T, B has their b.T on the diagonal and no key block). Qwen2's adapters on
  layer 0 only: target_modules are full module paths."""
  workdir, _ = write_run(tmp_path / "run", case, imports)
  assert _export(workdir, tmp_path / "merged") == 0
  assert _export(workdir, tmp_path / "adapter", "--adapter-only") == 0
  with open(tmp_path / "adapter" / "adapter_config.json") as f:
    adapter = json.load(f)
  assert adapter["base_model_name_or_path"] == imports[f"hf_decoders/{case[:-5]}"]
  tensors = safetensors.numpy.load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
  if case == "gpt2_lora":
    assert adapter["target_modules"] == ["attn.c_proj", "c_attn", "c_fc"]
    assert (adapter["rank_pattern"], adapter["alpha_pattern"]) == ({"c_attn": 4}, {"c_attn": 6.0})
    b = tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    assert b.shape == (96, 4) and not b[32:64].any() and not b[:32, 2:].any()
  else:
    assert adapter["target_modules"] == [f"model.layers.0.self_attn.{m}_proj" for m in "koqv"]
  peft = _peft_merge(_tensors(_hf_dir(case[:-5])), str(tmp_path / "adapter"),
                     conv1d=case == "gpt2_lora")
  for name, value in _tensors(str(tmp_path / "merged")).items():
    np.testing.assert_allclose(peft[name], value, rtol=0, atol=1e-6, err_msg=name)


def test_scanned_run_exports_the_looped_layout(imports, tmp_path):
  """A run with scan_layers (layers/... [num_layers, ...], per-layer adapters [L, in, rank])
  writes what its looped twin writes."""
  def scanned(config, params):
    config["model"]["scan_layers"] = True
    tree = layout.loop_to_scan({k: v for k, v in unflatten_paths(params).items()
                                if k != "lora"})
    with_lora = lora.add_adapters(tree, __import__("jax").random.key(0), rank=2,
                                  targets=r"backbone/layers/attention/(query|value)/kernel")
    rng = np.random.default_rng(0)
    adapters = {k: rng.standard_normal(np.shape(v)).astype(np.float32)
                for k, v in flat_paths(with_lora["lora"]).items()}
    params.clear()
    params.update(flat(tree), **{f"lora/{k}": v for k, v in adapters.items()})

  workdir, params = write_run(tmp_path / "run", "llama_lora", imports, edit=scanned)
  assert _export(workdir, tmp_path / "out") == 0
  looped = layout.scan_to_loop(lora.merge_lora(params, 4.0))
  _, again = load_hf(str(tmp_path / "out"))
  for path, value in flat(looped).items():
    np.testing.assert_allclose(flat(again)[path], value, rtol=0, atol=1e-5, err_msg=path)


def test_tokenizer_generation_and_ids_of_runs_without_an_import(imports, tmp_path):
  """No imported base: the HF type by shape; the tokenizer from config.data.tokenizer.path
  (pkg://sft_tiny), its generation config and special ids; without one the ids are null."""
  workdir, _ = write_run(tmp_path / "llama", "scratch_llama", imports)
  assert _export(workdir, tmp_path / "out") == 0
  shipped = os.path.join(os.path.dirname(decoder_export.__file__), "..", "data", "text",
                         "assets", "sft_tiny")
  for name in SIDE_FILES:
    with open(tmp_path / "out" / name, "rb") as a, open(os.path.join(shipped, name), "rb") as b:
      assert a.read() == b.read(), name
  with open(tmp_path / "out" / "config.json") as f:
    hf = json.load(f)
  assert (hf["model_type"], hf["bos_token_id"], hf["eos_token_id"], hf["pad_token_id"]) == (
      "llama", 1, 2, 0)
  assert hf["rope_scaling"]["rope_type"] == "llama3" and not hf["tie_word_embeddings"]
  workdir, _ = write_run(tmp_path / "gpt2", "scratch_gpt2", imports)
  assert _export(workdir, tmp_path / "gpt2_out") == 0
  assert sorted(os.listdir(tmp_path / "gpt2_out")) == ["config.json", "model.safetensors"]
  with open(tmp_path / "gpt2_out" / "config.json") as f:
    hf = json.load(f)
  assert (hf["activation_function"], hf["bos_token_id"], hf["eos_token_id"]) == ("gelu", None,
                                                                               None)


def test_a_failed_export_leaves_nothing(imports, tmp_path, monkeypatch, capsys):
  workdir, _ = write_run(tmp_path / "run", "mistral_full", imports)
  calls = []
  real = decoder_export._tensor_value

  def failing(leaves, tensor):
    calls.append(tensor.name)
    if len(calls) == 5:
      raise OSError("disk full")
    return real(leaves, tensor)

  monkeypatch.setattr(decoder_export, "_tensor_value", failing)
  with pytest.raises(OSError, match="disk full"):
    _export(workdir, tmp_path / "exports" / "out", "--max-shard-size", "30KB")
  assert os.listdir(tmp_path / "exports") == []  # no out, no staging directory
  monkeypatch.setattr(decoder_export, "_tensor_value", real)
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "notes.txt").write_text("mine")
  assert _export(workdir, tmp_path / "taken") == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "exists and is not an empty directory" in err
  assert os.listdir(tmp_path / "taken") == ["notes.txt"]
  (tmp_path / "empty").mkdir()
  assert _export(workdir, tmp_path / "empty") == 0  # an empty directory is taken
  assert "model.safetensors" in os.listdir(tmp_path / "empty")


def _change_head(config, params):
  params["heads/lm/output/kernel"] = params["heads/lm/output/kernel"] + 1.0


def _drop_alpha(config, params):
  config["lora"].pop("alpha")


def _learned_positions(config, params):
  config["model"]["norm"] = "layer"


@pytest.mark.parametrize(("case", "edit", "args", "message"), [
    ("mistral_full", None, ["--adapter-only"], r"--adapter-only: .* holds no LoRA adapters"),
    ("llama_lora", _change_head, ["--adapter-only"],
     r"--adapter-only: heads/lm/output/kernel differs from the init .*; export the merged"),
    ("llama_lora", _drop_alpha, [], r"holds LoRA adapters but config.json gives no lora.alpha"),
    ("scratch_mistral", _learned_positions, [],
     r"config.model.position_embedding='rope' has no gpt2 equivalent"),
    ("scratch_gpt2", None, ["--max-shard-size", "big"], r"--max-shard-size 'big': use bytes"),
    ("scratch_gpt2", None, ["--checkpoint=best"], r"--checkpoint=best: .* has no best"),
], ids=["adapter-without-lora", "adapter-base-changed", "no-alpha", "inexpressible",
        "bad-shard-size", "no-best"])
def test_errors_are_one_line(imports, tmp_path, capsys, case, edit, args, message):
  workdir, _ = write_run(tmp_path / "run", case, imports, edit=edit)
  assert _export(workdir, tmp_path / "out", *args) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("error: "), err
  assert re.search(message, err), err
  assert not os.path.exists(tmp_path / "out")


def test_parse_size():
  assert decoder_export.parse_size("2GB") == 2 * 10**9
  assert decoder_export.parse_size("3MiB") == 3 * 2**20
  assert decoder_export.parse_size("1.5kb") == 1500 and decoder_export.parse_size(7) == 7


def test_model_config_is_a_configdict_or_a_dict():
  model = ml_collections.ConfigDict(dict(GPT2, activation="gelu_tanh"))
  assert hf_decoder.config_to_hf(model) == hf_decoder.config_to_hf(model.to_dict())
  assert hf_decoder.config_to_hf(model)["activation_function"] == "gelu_new"


def test_run_from_a_hf_directory_itself(imports, tmp_path):
  """init.pretrained_workdir may name the HF directory (no import): its config.json is the
  origin, its tokenizer ships, and it is the adapter's base."""
  def from_hf(config, params):
    config["init"]["pretrained_workdir"] = _hf_dir("llama")

  workdir, params = write_run(tmp_path / "run", "llama_lora", imports, edit=from_hf)
  assert _export(workdir, tmp_path / "merged") == 0
  with open(tmp_path / "merged" / "config.json") as f:
    assert json.load(f) == _hf_config("llama")
  assert _export(workdir, tmp_path / "adapter", "--adapter-only") == 0
  with open(tmp_path / "adapter" / "adapter_config.json") as f:
    assert json.load(f)["base_model_name_or_path"] == _hf_dir("llama")


def test_packed_adapters_that_differ_per_layer(imports, tmp_path):
  """GPT-2 with a query adapter in layer 0 and query + value in layer 1: c_attn ranks differ
  per layer, so target_modules and rank_pattern name full module paths."""
  def partial(config, params):
    for key in [k for k in params if k.startswith("lora/backbone/layer_0/attention/value")]:
      del params[key]

  workdir, _ = write_run(tmp_path / "run", "gpt2_lora", imports, edit=partial)
  assert _export(workdir, tmp_path / "merged") == 0
  assert _export(workdir, tmp_path / "adapter", "--adapter-only") == 0
  with open(tmp_path / "adapter" / "adapter_config.json") as f:
    adapter = json.load(f)
  assert adapter["rank_pattern"] == {"transformer.h.1.attn.c_attn": 4}
  assert "transformer.h.0.attn.c_attn" in adapter["target_modules"]
  peft = _peft_merge(_tensors(_hf_dir("gpt2")), str(tmp_path / "adapter"), conv1d=True)
  for name, value in _tensors(str(tmp_path / "merged")).items():
    np.testing.assert_allclose(peft[name], value, rtol=0, atol=1e-6, err_msg=name)
