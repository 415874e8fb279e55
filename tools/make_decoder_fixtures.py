"""Writes tests/fixtures/hf_decoders/<arch>/: tiny random Hugging Face decoder LLMs with the
logits and greedy generations transformers (torch) computes from them.

Run with the torch venv (made with torch 2.13.0+cpu, transformers 5.24.0, tokenizers 0.23.3):

  bash launch/setup_torch_peer.sh            # .venv-torch/ in the repository, git-ignored
  .venv-torch/bin/python tools/make_decoder_fixtures.py

Architectures (hidden 32, 2 layers, 4 heads, intermediate 64, 128 positions, vocab 300):
  gpt2     learned positions, LayerNorm, gelu_new, Conv1D weights [in, out], packed c_attn; tied
  llama    RMSNorm, SwiGLU, rope llama3 scaling (factor 8, original 64 positions), GQA 4/2,
           no biases; untied lm_head
  mistral  llama-like, GQA 4/2, sliding_window 8 (the 16-token logits exercise it); untied
  qwen2    GQA 4/2, q/k/v biases, tied; its tokenizer_config.json has a ChatML chat_template
  gemma    MQA (1 kv head), head_dim 16 (heads * head_dim = 64 != hidden 32), GeGLU
           (gelu_pytorch_tanh), RMSNorm (1 + w), embeddings * sqrt(hidden); tied

Every parameter is its HF initialization plus N(0, 0.2) noise (seeded), so norm weights,
biases and Gemma's zero-initialized norm weights are non-trivial and greedy choices are not
near-ties: the first seed whose greedy steps all have a top-1 minus top-2 logit margin of at
least MIN_MARGIN is kept. Attention is "eager"; generate's cached output is checked against a
greedy loop of full forwards (no cache).

Each <arch>/ holds (all arrays load with np.load(allow_pickle=False)):
  config.json, model.safetensors     save_pretrained (float32)
  tokenizer.json, tokenizer_config.json
                                     one byte-level BPE (tokenizers) trained on the shipped
                                     corpus: vocab 300, <|bos|> 0, <|eos|> 1, <|pad|> 2
  generation_config.json             as save_pretrained writes it
  reference.npz                      input_ids [2, 16] int32, logits [2, 16, 300] float32
                                     (model(input_ids), no padding); prompt_{k} [n_k] and
                                     greedy_{k} [n_k + 8] int32 for k = 0, 1, 2 (n = 3, 7, 11):
                                     generate(do_sample=False, max_new_tokens=8) on one prompt
                                     alone, eos disabled so all 8 tokens are generated
"""

import json
import os
import shutil

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "fixtures", "hf_decoders")
CORPUS = os.path.join(REPO, "ptft_jax", "data", "text", "assets", "corpus", "python_reference.txt")
VOCAB = 300
SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]
BOS, EOS, PAD = 0, 1, 2
PROMPT_LENGTHS = (3, 7, 11)
NEW_TOKENS = 8
NOISE = 0.2
MIN_MARGIN = 0.05  # smallest top-1 minus top-2 logit over all greedy steps
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=128, bos_token_id=BOS,
              eos_token_id=EOS, pad_token_id=PAD)
ARCHS = {
    "gpt2": dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                 n_positions=128, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                 tie_word_embeddings=True),
    "llama": dict(COMMON, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=10000.0,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 64}),
    "mistral": dict(COMMON, num_key_value_heads=2, sliding_window=8, tie_word_embeddings=False),
    "qwen2": dict(COMMON, num_key_value_heads=2, tie_word_embeddings=True,
                  use_sliding_window=False),
    "gemma": dict(COMMON, num_key_value_heads=1, head_dim=16,
                  hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
}


def train_tokenizer():
  """Byte-level BPE on the start of the corpus -> (tokenizers.Tokenizer, that text)."""
  import tokenizers

  with open(CORPUS, encoding="utf-8") as f:
    text = f.read()[:20000]
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(text.splitlines(), trainer)
  assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
  assert [tok.token_to_id(s) for s in SPECIALS] == [BOS, EOS, PAD]
  return tok, text


def write_tokenizer(tok, out: str, chat_template: str | None) -> None:
  """tokenizer.json + a tokenizer_config.json that transformers 4.x and 5.x both load."""
  import transformers

  tok.save(os.path.join(out, "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": SPECIALS[BOS],
            "eos_token": SPECIALS[EOS], "pad_token": SPECIALS[PAD], "model_max_length": 128}
  if chat_template:
    config["chat_template"] = chat_template
  with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
    f.write("\n")
  loaded = transformers.AutoTokenizer.from_pretrained(out)
  assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (BOS, EOS, PAD)
  if chat_template:
    chat = loaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                      add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", repr(chat)


def build_model(arch: str, seed: int):
  import torch
  import transformers

  torch.manual_seed(seed)
  config = transformers.AutoConfig.for_model(arch, **ARCHS[arch])
  config._attn_implementation = "eager"
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  model.eval()
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for _, p in sorted(model.named_parameters()):  # tied tensors appear (and move) once
      p.add_(NOISE * torch.randn(p.shape, generator=gen, dtype=p.dtype))
  return model


def references(model, ids: np.ndarray, prompts: list[np.ndarray]) -> dict[str, np.ndarray]:
  import torch

  out = {"input_ids": ids.astype(np.int32)}
  with torch.no_grad():
    out["logits"] = model(torch.tensor(ids, dtype=torch.long)).logits.numpy().astype(np.float32)
    margins = []
    for k, prompt in enumerate(prompts):
      x = torch.tensor(prompt[None], dtype=torch.long)
      gen = model.generate(x, do_sample=False, max_new_tokens=NEW_TOKENS, eos_token_id=None,
                           pad_token_id=PAD, output_logits=True, return_dict_in_generate=True)
      seq = gen.sequences[0].numpy()
      assert seq.shape == (len(prompt) + NEW_TOKENS,), seq.shape
      assert (seq[:len(prompt)] == prompt).all()
      for step in gen.logits:
        top = torch.topk(step[0].float(), 2).values
        margins.append(float(top[0] - top[1]))
      # The cached generate agrees with a greedy loop of full forwards (no cache).
      full = torch.tensor(prompt[None], dtype=torch.long)
      for _ in range(NEW_TOKENS):
        nxt = model(full).logits[:, -1].argmax(-1, keepdim=True)
        full = torch.cat([full, nxt], dim=1)
      assert (full[0].numpy() == seq).all(), (seq, full[0].numpy())
      out[f"prompt_{k}"] = prompt.astype(np.int32)
      out[f"greedy_{k}"] = seq.astype(np.int32)
  return out, min(margins)


def main() -> None:
  import torch
  import transformers

  torch.set_num_threads(2)
  tok, text = train_tokenizer()
  rng = np.random.default_rng(0)
  ids = rng.integers(3, VOCAB, size=(2, 16))
  encoded = tok.encode(text[:2000]).ids
  prompts = [np.array([BOS] + encoded[10 * k:10 * k + n - 1]) for k, n in
             enumerate(PROMPT_LENGTHS)]
  os.makedirs(OUT, exist_ok=True)
  for index, arch in enumerate(ARCHS):
    out = os.path.join(OUT, arch)
    shutil.rmtree(out, ignore_errors=True)
    # The first seed whose greedy choices all win by MIN_MARGIN (no near-ties).
    for seed in range(100 * index, 100 * index + 100):
      model = build_model(arch, seed)
      refs, margin = references(model, ids, prompts)
      if margin >= MIN_MARGIN:
        break
    else:
      raise SystemExit(f"{arch}: no seed gives a greedy margin of {MIN_MARGIN}")
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(tok, out, CHATML if arch == "qwen2" else None)
    np.savez(os.path.join(out, "reference.npz"), **refs)
    # Reload from disk: what was saved reproduces the references.
    again = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    again.eval()
    with torch.no_grad():
      logits = again(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    assert np.allclose(logits, refs["logits"], atol=1e-5), arch
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"{arch}: seed {seed}, {sorted(os.listdir(out))} {size / 1024:.0f} KB, logits std "
          f"{refs['logits'].std():.2f}, min greedy margin {margin:.3f}")
  print(f"torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
  main()
