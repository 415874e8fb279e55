"""Checks decoder exports (`python -m ptft_jax.convert export-hf`) with transformers and PEFT,
and writes tests/fixtures/hf_decoder_export/ with what they computed.

Run with the torch venv (torch 2.13.0+cpu, transformers 5.24.0, peft 0.21.2; peft is not in
launch/setup_torch_peer.sh: `.venv-torch/bin/pip install peft`); the ptft_jax side runs in
.venv through `--ptft-python`, since .venv-torch has no jax:

  # one export of yours: transformers' logits of DIR against the run's own (<= 1e-4)
  .venv-torch/bin/python tools/check_decoder_export.py --workdir RUN --export DIR
  # a PEFT adapter (--adapter-only): PeftModel on the base model BASE (a HF directory)
  .venv-torch/bin/python tools/check_decoder_export.py --workdir RUN --export DIR --base BASE
  # the committed fixture (every case below), with a table of the measured differences
  .venv-torch/bin/python tools/check_decoder_export.py --make-fixture

"The run's own" logits are `ptft_jax.models.causal_lm_logits` of the run's latest params
(LoRA adapters merged by optim.lora, not by the export code) on random ids.

Fixture cases (runs written from params, as a run's checkpoint; tests/fixtures/hf_decoders/
<arch> is the imported base where one is named):
  llama_lora     LoRA rank 2 on q/k/v/o/gate/up/down of every layer; merged and adapter
  gpt2_lora      LoRA on query, value, out and mlp/intermediate (GPT-2's c_attn gets a
                 block-diagonal adapter with no key block); merged and adapter
  qwen2_lora     LoRA rank 3 on layer 0's attention only (PEFT target_modules name full
                 module paths); tied; merged and adapter; chat template ids
  gemma_full     layer 1's MLP and the final norm replaced (tied embeddings)
  mistral_full   the untied LM head and layer 0's query replaced (sliding window 8 < 12 ids)
  scratch_*      runs with no imported base: the HF type chosen from the model config's
                 shape: llama (llama3 rope, GQA, untied, the shipped sft_tiny tokenizer),
                 gpt2 (exact gelu), qwen2 (window 4 on all layers, linear rope), gemma
                 (MQA, head_dim 8 != 16 / 4), mistral (window 4, untied)

Each tests/fixtures/hf_decoder_export/<case>/ holds (all arrays load with
np.load(allow_pickle=False)):
  config.json     the run's config.json: `init.pretrained_workdir` is "hf_decoders/<arch>"
                  (relative to tests/fixtures; import it first) or ""
  params.npz      float16 arrays, flat `backbone/...`, `heads/...`, `lora/...` paths: every
                  param of a scratch run; for an imported base only the params that replace
                  or add to the base's (values are float16-exact: cast to float32)
  outputs.npz     input_ids [1, 12] int32; hf_logits [1, 12, vocab] float32 (transformers on
                  the merged export); peft_logits (adapter cases: PeftModel on the base);
                  text_ids / chat_ids (the export's tokenizer through AutoTokenizer, where
                  the export has one)
and measured.json the versions and max |difference| of each case.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
OUT = os.path.join(FIXTURES, "hf_decoder_export")
TOLERANCE = 1e-4
SEQ = 12
TEXT = "def reverse(text):\n    return text[::-1]"
CHAT = [{"role": "user", "content": "Reverse abc"}, {"role": "assistant", "content": "cba"}]
PROJECTIONS = (r"backbone/layer_\d+/(attention/(query|key|value|out)"
               r"|mlp/(gate|intermediate|output))/kernel")
SCRATCH = dict(hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32,
               max_position_embeddings=64, vocab_size=64, dropout_rate=0.0,
               attention_dropout_rate=0.0)
ROPE = dict(norm="rms", layer_norm_eps=1e-6, position_embedding="rope", gated_mlp=True,
            activation="silu", qkv_bias=False, out_bias=False, mlp_bias=False)
CASES = {
    "llama_lora": dict(init="llama", lora=(2, 4.0, PROJECTIONS)),
    "gpt2_lora": dict(init="gpt2", lora=(2, 3.0, r"backbone/layer_\d+/(attention/(query|value|"
                                                  r"out)|mlp/intermediate)/kernel")),
    "qwen2_lora": dict(init="qwen2", lora=(3, 6.0, r"backbone/layer_0/attention/(query|key|"
                                                   r"value|out)/kernel")),
    "gemma_full": dict(init="gemma", replace=r"backbone/(layer_1/mlp/.*|final_norm/scale)"),
    "mistral_full": dict(init="mistral", replace=r"heads/lm/.*|backbone/layer_0/attention/"
                                                 r"query/kernel"),
    "scratch_llama": dict(model=dict(SCRATCH, **ROPE, num_kv_heads=2, vocab_size=400,
                                     rope_scaling="llama3", rope_factor=8.0,
                                     rope_original_max_positions=16), tied=False,
                          tokenizer="pkg://sft_tiny"),
    "scratch_gpt2": dict(model=dict(SCRATCH, layer_norm_eps=1e-5, activation="gelu"),
                         tied=True),
    "scratch_qwen2": dict(model=dict(SCRATCH, **dict(ROPE, qkv_bias=True), num_kv_heads=2,
                                     sliding_window=4, rope_scaling="linear", rope_factor=2.0,
                                     rope_theta=5000.0), tied=True),
    "scratch_gemma": dict(model=dict(SCRATCH, **dict(ROPE, activation="gelu_tanh"),
                                     norm_offset=1.0, embed_scale=True, num_kv_heads=1,
                                     head_dim_override=8), tied=True),
    "scratch_mistral": dict(model=dict(SCRATCH, **ROPE, num_kv_heads=2, sliding_window=4),
                            tied=False),
}


# --- ptft_jax side (.venv) ------------------------------------------------------------------


def _noise(rng, path: str, shape, scale: float = 1.0) -> np.ndarray:
  """float16-exact random values for a param at `path` (norm scales near 1)."""
  if path.endswith("/scale"):
    value = 1.0 + 0.2 * rng.standard_normal(shape)
  elif path.endswith("/bias"):
    value = 0.1 * rng.standard_normal(shape)
  else:
    value = scale * 0.3 * rng.standard_normal(shape)
  return value.astype(np.float16)


def _case_params(name: str, case: dict, seed: int) -> tuple[dict, dict]:
  """(run config.json, params.npz contents) of one case."""
  import jax
  import ml_collections

  from ptft_jax.convert import hf_decoder
  from ptft_jax.models import build_backbone
  from ptft_jax.models.heads import CausalLMHead
  from ptft_jax.optim import lora
  from ptft_jax.utils import flat_paths

  rng = np.random.default_rng(seed)
  store: dict[str, np.ndarray] = {}
  init = case.get("init")
  if init:
    base_dir = os.path.join(FIXTURES, "hf_decoders", init)
    model, base = hf_decoder.load_hf_decoder(base_dir)
    tied = hf_decoder.hf_task_config(base_dir).tied
    if "lora" in case:
      rank, alpha, targets = case["lora"]
      with_adapters = lora.add_adapters(base, jax.random.key(seed), rank=rank, targets=targets)
      for path, value in flat_paths(with_adapters["lora"]).items():
        store[f"lora/{path}"] = _noise(rng, path, np.shape(value))
    else:
      import re

      for path, value in flat_paths(base).items():
        if re.fullmatch(case["replace"], path):
          store[path] = _noise(rng, path, np.shape(value))
      assert store, name
  else:
    model = ml_collections.ConfigDict({"name": "gpt", **case["model"]})
    tied = case["tied"]
    ids = {"input_ids": np.zeros((1, 4), np.int32)}
    backbone = build_backbone(model).init(jax.random.key(seed), ids, train=False)["params"]
    params = {"backbone": backbone}
    if not tied:
      features = {"sequence": np.zeros((1, 1, model.hidden_size), np.float32),
                  "word_embeddings": np.zeros((model.vocab_size, model.hidden_size), np.float32)}
      params["heads"] = {"lm": CausalLMHead(tied=False).init(
          jax.random.key(seed + 1), features, {}, train=False)["params"]}
    for path, value in flat_paths(params).items():
      # Gemma's RMSNorm multiplies by 1 + scale: its scales vary around 0.
      offset = -1.0 if model.get("norm_offset", 0.0) and path.endswith("/scale") else 0.0
      store[path] = (_noise(rng, path, np.shape(value)).astype(np.float32) + offset).astype(
          np.float16)
  config = {"model": model.to_dict(), "task": {"name": "sft", "tied": bool(tied)},
            "init": {"pretrained_workdir": f"hf_decoders/{init}" if init else ""},
            "lora": ({"rank": case["lora"][0], "alpha": case["lora"][1],
                      "targets": case["lora"][2]} if "lora" in case else {"rank": 0}),
            "data": {"tokenizer": {"path": case.get("tokenizer", "")}}}
  return config, store


def write_case_run(case_dir: str, run: str, imports: dict[str, str]) -> str:
  """The run of a fixture case (config.json + a checkpoint of its params) in `run`;
  `imports` caches imported bases by "hf_decoders/<arch>" (import_hf_decoder of the fixture)."""
  from ptft_jax.convert import hf_decoder
  from ptft_jax.convert import workdir as convert_workdir
  from ptft_jax.train import checkpoint
  from ptft_jax.utils import flat_paths, unflatten_paths

  with open(os.path.join(case_dir, "config.json")) as f:
    config = json.load(f)
  with np.load(os.path.join(case_dir, "params.npz"), allow_pickle=False) as f:
    flat = {k: v.astype(np.float32) for k, v in f.items()}
  init = config["init"]["pretrained_workdir"]
  if init:
    if init not in imports:
      imports[init] = os.path.join(os.path.dirname(run), "imported_" + init.replace("/", "_"))
      convert_workdir.import_hf_decoder(os.path.join(FIXTURES, init), imports[init])
    _, base = hf_decoder.load_hf_decoder(os.path.join(FIXTURES, init))
    flat = {**{k: np.asarray(v) for k, v in flat_paths(base).items()}, **flat}
    config["init"]["pretrained_workdir"] = imports[init]
  os.makedirs(run)
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  checkpoint.save_pretrained(run, unflatten_paths(flat))
  return run


def run_logits(run: str, ids: np.ndarray) -> np.ndarray:
  """The run's own logits: its params (LoRA merged by optim.lora) through causal_lm_logits."""
  from ptft_jax.models import causal_lm_logits
  from ptft_jax.train import placement

  model_config, params = placement.load_params(run)
  return np.asarray(causal_lm_logits(model_config, params, ids))


def _ids(vocab: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(3, vocab, size=(1, SEQ)).astype(np.int32)


def ptft_build(tmp: str) -> None:
  """(.venv) every case: fixture files, run, exports (merged, adapter), the run's logits."""
  from ptft_jax.convert import __main__ as cli

  imports: dict[str, str] = {}
  for seed, (name, case) in enumerate(CASES.items()):
    case_dir = os.path.join(tmp, name)
    os.makedirs(os.path.join(case_dir, "fixture"))
    config, store = _case_params(name, case, seed)
    with open(os.path.join(case_dir, "fixture", "config.json"), "w") as f:
      json.dump(config, f, indent=1)
    np.savez_compressed(os.path.join(case_dir, "fixture", "params.npz"), **store)
    run = write_case_run(os.path.join(case_dir, "fixture"), os.path.join(case_dir, "run"),
                         imports)
    for kind, extra in (("merged", []), ("adapter", ["--adapter-only"])):
      if kind == "adapter" and "lora" not in case:
        continue
      out = os.path.join(case_dir, kind)
      assert cli.main(["export-hf", "--workdir", run, "--out", out, *extra]) == 0, (name, kind)
    ids = _ids(config["model"]["vocab_size"], seed)
    np.savez(os.path.join(case_dir, "ours.npz"), input_ids=ids, logits=run_logits(run, ids))


def ptft_logits(run: str, out: str) -> None:
  """(.venv) the run's logits on random ids -> `out` (.npz)."""
  from ptft_jax.train import placement

  model_config, _ = placement.load_params(run)
  ids = _ids(int(model_config.vocab_size))
  np.savez(out, input_ids=ids, logits=run_logits(run, ids))


def ptft_tokens(export: str, out: str) -> None:
  """(.venv) our tokenizer from the export dir: TEXT's ids (and CHAT's when templated)."""
  from ptft_jax.data.text import hf_tokenizer

  tok = hf_tokenizer.load_hf_tokenizer(export)
  arrays = {"text_ids": np.array(tok.prefix_ids + tuple(tok.encode(TEXT)), np.int32)}
  if tok.chat_template:
    arrays["chat_ids"] = np.array(tok.chat_ids(CHAT), np.int32)
  np.savez(out, **arrays)


# --- transformers side (.venv-torch) -------------------------------------------------------


def hf_model(path: str):
  import torch
  import transformers

  model = transformers.AutoModelForCausalLM.from_pretrained(
      path, attn_implementation="eager", dtype=torch.float32)
  model.eval()
  return model


def logits_of(model, ids: np.ndarray) -> np.ndarray:
  import torch

  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def peft_model(base: str, adapter: str, merged: str | None = None):
  """PeftModel of `adapter` on `base`; with `merged` (the merged export) checks that PEFT's
  merge_and_unload gives its weights (<= 1e-5)."""
  import peft
  import safetensors.torch
  import torch

  model = peft.PeftModel.from_pretrained(hf_model(base), adapter)
  model.eval()
  if merged is not None:
    again = peft.PeftModel.from_pretrained(hf_model(base), adapter).merge_and_unload()
    ours = {}
    for name in sorted(os.listdir(merged)):
      if name.endswith(".safetensors"):
        ours.update(safetensors.torch.load_file(os.path.join(merged, name)))
    state = again.state_dict()
    worst = max(float((state[k] - v).abs().max()) for k, v in ours.items())
    assert worst <= 1e-5, f"PEFT merge_and_unload differs from the merged export by {worst}"
    assert isinstance(model.base_model.model, torch.nn.Module)
  return model


def hf_tokens(export: str) -> dict[str, np.ndarray]:
  import transformers

  tok = transformers.AutoTokenizer.from_pretrained(export)
  out = {"text_ids": np.array(tok(TEXT)["input_ids"], np.int32)}
  if tok.chat_template:
    out["chat_ids"] = np.array(tok.apply_chat_template(CHAT, tokenize=True,
                                                       return_dict=False), np.int32)
  return out


def _diff(a: np.ndarray, b: np.ndarray) -> float:
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def make_fixture(ptft_python: str, out_root: str) -> None:
  import peft
  import torch
  import transformers

  torch.set_num_threads(2)
  measured = {"torch": torch.__version__, "transformers": transformers.__version__,
              "peft": peft.__version__, "tolerance": TOLERANCE, "cases": {}}
  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([ptft_python, os.path.abspath(__file__), "--ptft-build", tmp], cwd=REPO,
                   check=True)
    if os.path.exists(out_root):
      shutil.rmtree(out_root)
    for name, case in CASES.items():
      case_dir = os.path.join(tmp, name)
      with np.load(os.path.join(case_dir, "ours.npz"), allow_pickle=False) as f:
        ours = dict(f)
      merged = os.path.join(case_dir, "merged")
      outputs = {"input_ids": ours["input_ids"],
                 "hf_logits": logits_of(hf_model(merged), ours["input_ids"])}
      row = {"model_type": json.load(open(os.path.join(merged, "config.json")))["model_type"],
             "hf_vs_run": _diff(outputs["hf_logits"], ours["logits"])}
      if "lora" in case:
        base = os.path.join(FIXTURES, "hf_decoders", case["init"])
        model = peft_model(base, os.path.join(case_dir, "adapter"), merged)
        outputs["peft_logits"] = logits_of(model, ours["input_ids"])
        row["peft_vs_run"] = _diff(outputs["peft_logits"], ours["logits"])
      if os.path.isfile(os.path.join(merged, "tokenizer.json")):
        outputs.update(hf_tokens(merged))
        subprocess.run([ptft_python, os.path.abspath(__file__), "--ptft-tokens", merged,
                        os.path.join(case_dir, "tokens.npz")], cwd=REPO, check=True)
        with np.load(os.path.join(case_dir, "tokens.npz"), allow_pickle=False) as f:
          for key, value in f.items():
            row[f"{key}_equal"] = bool(np.array_equal(value, outputs[key]))
      measured["cases"][name] = row
      print(f"{name:16s} {row}")
      assert row["hf_vs_run"] <= TOLERANCE and row.get("peft_vs_run", 0.0) <= TOLERANCE, row
      assert all(v for k, v in row.items() if k.endswith("_equal")), row
      dest = os.path.join(out_root, name)
      os.makedirs(dest)
      for file in ("config.json", "params.npz"):
        shutil.copyfile(os.path.join(case_dir, "fixture", file), os.path.join(dest, file))
      np.savez_compressed(os.path.join(dest, "outputs.npz"), **outputs)
  with open(os.path.join(out_root, "measured.json"), "w") as f:
    json.dump(measured, f, indent=1)
    f.write("\n")
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_root) for f in fs)
  print(f"wrote {os.path.relpath(out_root, REPO)} ({size / 1024:.0f} KB); torch "
        f"{torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")


def check_export(ptft_python: str, workdir: str, export: str, base: str | None) -> float:
  """transformers' (or PEFT's) logits of `export` against the run's; prints, returns the max."""
  with tempfile.TemporaryDirectory() as tmp:
    ours_file = os.path.join(tmp, "ours.npz")
    subprocess.run([ptft_python, os.path.abspath(__file__), "--ptft-logits", workdir, ours_file],
                   cwd=REPO, check=True)
    with np.load(ours_file, allow_pickle=False) as f:
      ours = dict(f)
  adapter = os.path.isfile(os.path.join(export, "adapter_config.json"))
  if adapter:
    if base is None:
      with open(os.path.join(export, "adapter_config.json")) as f:
        base = json.load(f)["base_model_name_or_path"]
      if not os.path.isfile(os.path.join(base, "config.json")):
        raise SystemExit(f"the adapter's base {base} is no HF directory; give --base HF_DIR")
    model = peft_model(base, export)
  else:
    model = hf_model(export)
  worst = _diff(logits_of(model, ours["input_ids"]), ours["logits"])
  what = f"PEFT adapter on {base}" if adapter else "AutoModelForCausalLM"
  print(f"{export}: {what}: max |logits - run's| = {worst:.2e} over {ours['logits'].shape} "
        f"({'ok' if worst <= TOLERANCE else 'ABOVE'} {TOLERANCE:g})")
  return worst


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ptft-python", default=os.path.join(REPO, ".venv", "bin", "python"),
                      help="python of the ptft_jax venv")
  parser.add_argument("--workdir", help="the exported run")
  parser.add_argument("--export", help="what export-hf wrote (a model or an adapter)")
  parser.add_argument("--base", help="an adapter's base model (a HF directory)")
  parser.add_argument("--make-fixture", action="store_true", help=f"write {OUT}")
  parser.add_argument("--out", default=OUT, help=argparse.SUPPRESS)
  parser.add_argument("--ptft-build", metavar="TMP", help=argparse.SUPPRESS)
  parser.add_argument("--ptft-logits", nargs=2, metavar=("RUN", "OUT"), help=argparse.SUPPRESS)
  parser.add_argument("--ptft-tokens", nargs=2, metavar=("DIR", "OUT"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.ptft_build:
    ptft_build(args.ptft_build)
  elif args.ptft_logits:
    ptft_logits(*args.ptft_logits)
  elif args.ptft_tokens:
    ptft_tokens(*args.ptft_tokens)
  elif args.make_fixture:
    make_fixture(args.ptft_python, args.out)
  elif args.workdir and args.export:
    worst = check_export(args.ptft_python, args.workdir, args.export, args.base)
    sys.exit(0 if worst <= TOLERANCE else 1)
  else:
    parser.error("give --workdir RUN --export DIR, or --make-fixture")


if __name__ == "__main__":
  main()
