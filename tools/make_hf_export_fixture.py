"""Writes tests/fixtures/hf_export/: a ptft_jax text classifier exported to Hugging Face, with
the logits transformers (torch) computes from the export.

Run with the torch venv; the ptft_jax side runs in .venv through `--ptft-python`:

  bash launch/setup_torch_peer.sh            # .venv-torch/ in the repository, git-ignored
  .venv-torch/bin/python tools/make_hf_export_fixture.py --ptft-python .venv/bin/python

Steps (the ptft_jax ones in a subprocess, since .venv-torch has no jax):
  1. train `configs/glue.py:task=sentiment,model=tiny` shrunk to hidden 16 for 1 step;
  2. replace its params with larger random ones (seed 0: kernels N(0, 0.3), LayerNorm
     scales 1 + N(0, 0.2), biases N(0, 0.1); 1-step params are ~init, whose near-zero
     logits and unit LayerNorm scales would hide a wrong mapping) and save them as a
     params-only run;
  3. `python -m ptft_jax.convert export-hf` that run;
  4. `AutoModelForSequenceClassification` / `AutoTokenizer.from_pretrained` the export,
     tokenize fixed texts, compute logits.

Output (about 100 KB):
  run/config.json, run/labels.json   the run's (data_dir blanked)
  run/params.npz                     its params, flat `backbone/...` / `heads/...` float32
  export/                            what export-hf wrote (config.json, model.safetensors,
                                     vocab.txt, tokenizer_config.json, special_tokens_map.json)
  hf_outputs.npz                     text_a, text_b [n] str (text_b "" = single sentence);
                                     input_ids, attention_mask, token_type_ids [n, seq] int32
                                     (HF tokenizer, padded); logits [n, num_labels] float32
All arrays load with np.load(allow_pickle=False).
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
OUT = os.path.join(REPO, "tests", "fixtures", "hf_export")
TRAIN_ARGS = [
    "--config=configs/glue.py:task=sentiment,model=tiny,steps=1,seq_len=64,batch=8",
    "--config.model.hidden_size=16", "--config.model.num_heads=2",
    "--config.model.intermediate_size=32", "--config.model.max_position_embeddings=64",
    "--config.model.vocab_size=300", "--config.data.tokenizer.vocab_size=300",
    "--config.train.tensorboard=False", "--config.eval_splits=('validation',)",
]
TEXT_A = [
    "Great product, I love it!",
    "Terrible. The worst film.",
    "Café déjà vu?",
    "It arrived on time.",
]
TEXT_B = ["", "", "Not bad at all.", "Would buy again."]


def _randomize(params: dict, seed: int = 0) -> dict:
  """Same tree, larger random values (see the module docstring)."""
  rng = np.random.default_rng(seed)
  out = {}
  for path, value in params.items():
    shape = np.shape(value)
    if path.endswith("/scale"):
      new = 1.0 + 0.2 * rng.standard_normal(shape)
    elif path.endswith("/bias"):
      new = 0.1 * rng.standard_normal(shape)
    else:
      new = 0.3 * rng.standard_normal(shape)
    out[path] = new.astype(np.float32)
  return out


def build_run(tmp: str) -> None:
  """(ptft_jax venv) steps 1-2: tmp/trained -> tmp/run (params-only) + tmp/params.npz."""
  from ptft_jax.train import checkpoint
  from ptft_jax.utils import flat_paths, unflatten_paths

  trained, run = os.path.join(tmp, "trained"), os.path.join(tmp, "run")
  subprocess.run([sys.executable, "-m", "ptft_jax.main", *TRAIN_ARGS, f"--workdir={trained}",
                  f"--config.data.data_dir={os.path.join(tmp, 'data')}"], cwd=REPO, check=True)
  loaded, _ = checkpoint.load_params(trained)
  flat = _randomize({k: np.asarray(v) for k, v in flat_paths(loaded["params"]).items()})
  np.savez_compressed(os.path.join(tmp, "params.npz"), **flat)
  tree = unflatten_paths(flat)
  os.makedirs(run)
  with open(os.path.join(trained, "config.json")) as f:
    config = json.load(f)
  config["data"]["data_dir"] = ""  # no machine path in the fixture; nothing reads data
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(config, f, indent=1)
  for name in ("labels.json", "vocab.txt"):
    shutil.copyfile(os.path.join(trained, name), os.path.join(run, name))
  checkpoint.save_pretrained(run, tree)


def hf_outputs(export: str) -> dict[str, np.ndarray]:
  """(torch venv) step 4: the HF tokenizer's ids and the HF model's logits."""
  import torch
  import transformers

  tokenizer = transformers.AutoTokenizer.from_pretrained(export)
  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      export, dtype=torch.float32)
  model.eval()
  assert type(model).__name__ == "BertForSequenceClassification", type(model).__name__
  # One call per example: the batch API takes no mix of single sentences and pairs.
  examples = [tokenizer(a, b) if b else tokenizer(a) for a, b in zip(TEXT_A, TEXT_B, strict=True)]
  enc = tokenizer.pad(examples, padding=True, return_tensors="pt")
  with torch.no_grad():
    logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                   token_type_ids=enc["token_type_ids"]).logits
  return {
      "text_a": np.array(TEXT_A), "text_b": np.array(TEXT_B),
      "input_ids": enc["input_ids"].numpy().astype(np.int32),
      "attention_mask": enc["attention_mask"].numpy().astype(np.int32),
      "token_type_ids": enc["token_type_ids"].numpy().astype(np.int32),
      "logits": logits.numpy().astype(np.float32),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ptft-python", default=os.path.join(REPO, ".venv", "bin", "python"),
                      help="python of the ptft_jax venv")
  parser.add_argument("--out", default=OUT)
  parser.add_argument("--build-run", metavar="TMP", help=argparse.SUPPRESS)  # ptft_jax side
  args = parser.parse_args()
  if args.build_run:
    build_run(args.build_run)
    return

  with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([args.ptft_python, os.path.abspath(__file__), "--build-run", tmp],
                   cwd=REPO, check=True)
    if os.path.exists(args.out):
      shutil.rmtree(args.out)
    export = os.path.join(args.out, "export")
    subprocess.run([args.ptft_python, "-m", "ptft_jax.convert", "export-hf",
                    f"--workdir={os.path.join(tmp, 'run')}", f"--out={export}"],
                   cwd=REPO, check=True)
    os.makedirs(os.path.join(args.out, "run"))
    for name in ("config.json", "labels.json"):
      shutil.copyfile(os.path.join(tmp, "run", name), os.path.join(args.out, "run", name))
    shutil.copyfile(os.path.join(tmp, "params.npz"), os.path.join(args.out, "run", "params.npz"))
  arrays = hf_outputs(export)
  np.savez_compressed(os.path.join(args.out, "hf_outputs.npz"), **arrays)
  for name in os.listdir(export):  # safetensors writes 0600; keep the checkout readable
    os.chmod(os.path.join(export, name), 0o644)
  size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
  print(f"wrote {os.path.relpath(args.out, REPO)} ({size / 1024:.0f} KB): "
        + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()))


if __name__ == "__main__":
  main()
