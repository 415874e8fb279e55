"""Writes tests/fixtures/minilm_reference.npz with HF transformers (torch) outputs.

Run with a separate torch venv (torch is not a ptft_jax requirement):

  bash launch/setup_torch_peer.sh            # .venv-torch/ in the repository, git-ignored
  .venv-torch/bin/python tools/make_bert_fixture.py \
      --model-dir "$(.venv/bin/python -m ptft_jax.convert.minilm)"

The .npz has no object arrays (np.load works with allow_pickle=False):
  text_a, text_b      [n] str (text_b "" = single sentence)
  input_ids, attention_mask, token_type_ids   [n, seq] int32 (padded, HF tokenizer)
  last_hidden_state   [n, seq, hidden] float32 (BertModel, eval mode)
  pooler_output       [n, hidden] float32
"""

import argparse
import os

import numpy as np
import torch
import transformers

TEXT_A = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Café déjà vu: a naïve résumé?",
    "JAX compiles XLA programs; unbelievably, 1234567 steps ran in 3.5 hours!",
]
TEXT_B = ["", "", "Tokenizers handle ÜNÏCÖDÉ, emoji 🙂 and 中文 characters.", ""]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model-dir", required=True, help="all-MiniLM-L6-v2 directory")
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(__file__), "..", "tests", "fixtures", "minilm_reference.npz"))
  args = parser.parse_args()

  tokenizer = transformers.BertTokenizerFast.from_pretrained(args.model_dir)
  model = transformers.BertModel.from_pretrained(args.model_dir, dtype=torch.float32)
  model.eval()
  # One call per example: the batch API takes no mix of single sentences and pairs.
  examples = [tokenizer(a, b) if b else tokenizer(a) for a, b in zip(TEXT_A, TEXT_B, strict=True)]
  enc = tokenizer.pad(examples, padding=True, return_tensors="pt")
  with torch.no_grad():
    out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                token_type_ids=enc["token_type_ids"])
  arrays = {
      "text_a": np.array(TEXT_A),
      "text_b": np.array(TEXT_B),
      "input_ids": enc["input_ids"].numpy().astype(np.int32),
      "attention_mask": enc["attention_mask"].numpy().astype(np.int32),
      "token_type_ids": enc["token_type_ids"].numpy().astype(np.int32),
      "last_hidden_state": out.last_hidden_state.numpy().astype(np.float32),
      "pooler_output": out.pooler_output.numpy().astype(np.float32),
  }
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {os.path.normpath(args.out)}: "
        + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()))


if __name__ == "__main__":
  main()
