"""Decoder exports against what transformers and PEFT computed from them, and a real LoRA SFT
run exported (torch is not needed here).

tests/fixtures/hf_decoder_export/<case>/ holds a run's params and the logits that
transformers' AutoModelForCausalLM (and PEFT's PeftModel on the imported base) computed from
its export (tools/check_decoder_export.py; torch 2.13, transformers 5.24, peft 0.21, measured
differences to the run's own logits <= 1.1e-5 in measured.json). The export of the same
params today must still give those logits: read back by our loader (the merged model), or
with PEFT's merge redone in numpy on the base's tensors (the adapter).
"""

import json
import os

import numpy as np
import pytest

import ptft_jax as pj
from ptft_jax.convert import load_hf
from ptft_jax.data.text import hf_tokenizer
from ptft_jax.models import causal_lm_logits
from tests.e2e.test_decoder_export_files import (
  CASES,
  _export,
  _peft_merge,
  _tensors,
  imports,  # noqa: F401 -- a fixture
  write_run,
)
from tests.helpers import FIXTURES, load_config

pytestmark = pytest.mark.usefixtures("compile_cache")
NAMES = sorted(n for n in os.listdir(CASES) if os.path.isdir(os.path.join(CASES, n)))
TEXT = "def reverse(text):\n    return text[::-1]"  # as tools/check_decoder_export.py
CHAT = [{"role": "user", "content": "Reverse abc"}, {"role": "assistant", "content": "cba"}]


def _outputs(case: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(CASES, case, "outputs.npz"), allow_pickle=False) as f:
    return dict(f)


def _write_hf_dir(path, like: str, tensors: dict) -> str:
  """A HF directory: `like`'s config.json with `tensors` as its model.safetensors."""
  import safetensors.numpy

  os.makedirs(path)
  with open(os.path.join(like, "config.json")) as a, open(os.path.join(path, "config.json"),
                                                           "w") as b:
    b.write(a.read())
  safetensors.numpy.save_file(tensors, os.path.join(path, "model.safetensors"),
                              metadata={"format": "pt"})
  return str(path)


def test_measured_fixture_is_within_tolerance():
  with open(os.path.join(CASES, "measured.json")) as f:
    measured = json.load(f)
  assert sorted(measured["cases"]) == NAMES
  for row in measured["cases"].values():
    assert row["hf_vs_run"] <= 1e-4 and row.get("peft_vs_run", 0.0) <= 1e-4


@pytest.mark.parametrize("case", NAMES)
def test_export_gives_transformers_logits(case, imports, tmp_path):  # noqa: F811
  workdir, _ = write_run(tmp_path / "run", case, imports)
  out = _outputs(case)
  assert _export(workdir, tmp_path / "merged") == 0
  config, params = load_hf(str(tmp_path / "merged"))
  logits = np.asarray(causal_lm_logits(config, params, out["input_ids"]))
  assert logits.shape == out["hf_logits"].shape and np.abs(out["hf_logits"]).max() > 0.5
  assert np.max(np.abs(logits - out["hf_logits"])) <= 1e-4
  if "peft_logits" in out:
    assert _export(workdir, tmp_path / "adapter", "--adapter-only") == 0
    base = os.path.join(FIXTURES, "hf_decoders", case.removesuffix("_lora"))
    merged = _peft_merge(_tensors(base), str(tmp_path / "adapter"), conv1d=case == "gpt2_lora")
    config, params = load_hf(_write_hf_dir(tmp_path / "peft", base, merged))
    logits = np.asarray(causal_lm_logits(config, params, out["input_ids"]))
    assert np.max(np.abs(logits - out["peft_logits"])) <= 1e-4
  if "text_ids" in out:  # the export's tokenizer tokenizes as transformers' AutoTokenizer
    tok = hf_tokenizer.load_hf_tokenizer(str(tmp_path / "merged"))
    assert list(tok.prefix_ids) + tok.encode(TEXT) == out["text_ids"].tolist()
    if "chat_ids" in out:
      assert tok.chat_ids(CHAT) == out["chat_ids"].tolist()


def test_lora_sft_run_exports_what_it_computes(imports, tmp_path):  # noqa: F811
  """configs/llm_sft.py with LoRA from the imported llama for a few steps, then export-hf:
  merged, the export's logits are the run's; the PEFT adapter on the HF base gives them too."""
  data = "pkg://sft_tiny"
  c = load_config("llm_sft", f"init={imports['hf_decoders/llama']},train={data}/train.jsonl,"
                             "lora=2,seq_len=64,lr=0.05,chat_template=none")
  c.train.steps = c.train.log_every = c.train.checkpoint_every = 3
  c.train.eval_every, c.train.tensorboard, c.eval_splits = 0, False, ()
  c.data.batch_size = 8
  run = str(tmp_path / "run")
  pj.train_and_evaluate(c, run)
  assert _export(run, tmp_path / "merged") == 0
  assert _export(run, tmp_path / "adapter", "--adapter-only") == 0
  model_config, params = pj.load_params(run)  # LoRA merged by optim.lora
  ids = np.random.default_rng(0).integers(3, 300, size=(2, 16)).astype(np.int32)
  want = np.asarray(causal_lm_logits(model_config, params, ids))
  config, exported = load_hf(str(tmp_path / "merged"))
  assert np.max(np.abs(np.asarray(causal_lm_logits(config, exported, ids)) - want)) <= 1e-5
  base = os.path.join(FIXTURES, "hf_decoders", "llama")
  merged = _peft_merge(_tensors(base), str(tmp_path / "adapter"), conv1d=False)
  changed = [k for k, v in _tensors(base).items() if not np.array_equal(v, merged[k])]
  assert len(changed) == 2 * 7  # the adapters trained: every adapted weight moved
  config, peft = load_hf(_write_hf_dir(tmp_path / "peft", base, merged))
  assert np.max(np.abs(np.asarray(causal_lm_logits(config, peft, ids)) - want)) <= 1e-5
