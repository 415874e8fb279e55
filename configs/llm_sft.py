r"""Instruction tuning (SFT) of a decoder LLM: full or LoRA, from an imported model or a tiny one.

Fine-tune an imported Hugging Face decoder (Llama, Mistral, Qwen2, Gemma, GPT-2) on your
JSONL instructions, `{"prompt", "response"}` or `{"messages": [...]}` per line (loss on
the responses / assistant turns only; examples packed into rows without attending
across examples):

  python -m ptft_jax.convert hf --src /path/to/Qwen2.5-0.5B-Instruct --workdir runs/qwen05
  python -m ptft_jax.main --config=configs/llm_sft.py:init=runs/qwen05,train=train.jsonl,\
validation=dev.jsonl,lora=16 --workdir=runs/qwen05_sft

Offline, in the tests: a small Llama-shaped decoder (RMSNorm, rotary positions, SwiGLU,
grouped-query attention, no biases; 2 x 128, vocab 400) trained from scratch on the
instruction set shipped with ptft_jax (pkg://sft_tiny: reverse / uppercase / sort /
largest / add, 2000 train, 200 validation, 200 test prompts) with its byte-level BPE
tokenizer and ChatML template:

  python -m ptft_jax.main --config=configs/llm_sft.py:tiny --workdir=runs/sft_tiny

Arguments (`configs/llm_sft.py:key=value,...`):
  init=DIR         an imported workdir (`python -m ptft_jax.convert hf`: model_config.json,
                   task_config.json, the tokenizer files) or a ptft_jax decoder run; the
                   backbone and the LM head are loaded from it (config.init)
  tiny             the small decoder above from scratch (no init)
  data=PATH        the train JSONL (same as train=); train=, validation=, test= name the
                   splits (without validation=, 5% of the train lines are held out as the
                   validation split); tiny: the shipped set
  tokenizer=PATH   a Hugging Face model dir or tokenizer.json (default: init; tiny: shipped)
  chat_template=   auto (the tokenizer's, default) | none (prompt + response + eos) | FILE
  lora=RANK        LoRA adapters (alpha = 2 x rank) on the attention query/key/value/out and
                   MLP gate/intermediate/output kernels; everything else frozen
  corpus=PATH      continued pretraining instead: causal_lm on .txt file(s), packed
  steps=N, lr=X (default 2e-5 full, 2e-4 LoRA, 3e-3 tiny), batch=N (rows), seq_len=N,
  accumulation=K, loss_chunk=N (positions per cross-entropy chunk), bf16, seed=N

The tiny decoder's layers are one nn.scan (`scan_layers=True`); its figures below were
measured looped (`--config.model.scan_layers=False`, other initial weights). An imported
model keeps the layout its model_config.json records (HF imports: looped).

Expected (measured on this project's 2-core CPU, seed 0): `:tiny` (600 steps of 16 rows x
128 tokens, 346,752 parameters) reaches validation loss 0.221 on the response tokens
(perplexity 1.25, next-token accuracy 0.937; test 0.202 / 1.22 / 0.938) in 47 s wall
(1.5 CPU-minutes); look at <workdir>/eval_validation.json. Exact-match of generated answers
on the held-out prompts: docs/llm.md. Imported models: not measured on this machine.
"""

import json
import os

import ml_collections

from configs import common
from ptft_jax.data import text

TINY_DATA = "pkg://sft_tiny"
# Every projection of a decoder layer (query, key, value, out; gate, up, down); a scanned
# stack (`layers/`) gets one adapter shared by its layers (docs/text.md), so prefer looped.
LORA_TARGETS = (r"backbone/(layer_\d+|layers)/(attention/(query|key|value|out)"
                r"|mlp/(gate|intermediate|output))/kernel")


def tiny_model(vocab_size: int, seq_len: int) -> ml_collections.ConfigDict:
  """A small Llama-shaped `gpt` decoder (RMSNorm, rope, SwiGLU, GQA 4/2, no biases)."""
  return ml_collections.ConfigDict(dict(
      name="gpt", vocab_size=vocab_size, hidden_size=128, num_layers=2, num_heads=4,
      num_kv_heads=2, intermediate_size=256, max_position_embeddings=seq_len,
      norm="rms", layer_norm_eps=1e-6, position_embedding="rope", gated_mlp=True,
      activation="silu", qkv_bias=False, out_bias=False, mlp_bias=False,
      dropout_rate=0.0, attention_dropout_rate=0.0, remat="none", scan_layers=True))


def pretrained_settings(workdir: str) -> tuple[dict, dict]:
  """(config.model, config.task) of an imported decoder workdir or a ptft_jax decoder run."""
  imported = os.path.join(workdir, "model_config.json")
  run = os.path.join(workdir, "config.json")
  if os.path.isfile(imported):
    with open(imported) as f:
      model = json.load(f)
    task_file = os.path.join(workdir, "task_config.json")
    if model.get("name") != "gpt" or not os.path.isfile(task_file):
      raise ValueError(f"init={workdir}: not an imported decoder (model_config.json has no "
                       "name='gpt' or task_config.json is missing); import it with "
                       "`python -m ptft_jax.convert hf`")
    with open(task_file) as f:
      task = json.load(f)
    return model, {"tied": bool(task.get("tied", True))}
  if os.path.isfile(run):
    with open(run) as f:
      saved = json.load(f)
    if saved.get("model", {}).get("name") != "gpt":
      raise ValueError(f"init={workdir}: not a decoder run (config.json has model "
                       f"{saved.get('model', {}).get('name')!r})")
    return saved["model"], {"tied": bool(saved.get("task", {}).get("tied", True))}
  raise ValueError(f"init={workdir}: neither model_config.json (imported model) nor "
                   "config.json (ptft_jax run) is there")


def get_config(arg: str = "tiny"):
  args = common.parse_arg(
      arg, tiny=False, init="", data="", train="", validation="", test="", tokenizer="",
      chat_template="auto", lora=0, corpus="", steps=0, lr=0.0, batch=0, seq_len=0,
      accumulation=1, loss_chunk=256, bf16=False, seed=0)
  tiny = args["tiny"]
  if tiny == bool(args["init"]):
    raise ValueError("configs/llm_sft.py: give init=<imported workdir> or tiny (not both)")
  seq_len = args["seq_len"] or (128 if tiny else 1024)
  batch = args["batch"] or 16
  train = args["train"] or args["data"] or (f"{TINY_DATA}/train.jsonl" if tiny else "")
  validation = args["validation"] or (f"{TINY_DATA}/validation.jsonl" if tiny else "")
  test = args["test"] or (f"{TINY_DATA}/test.jsonl" if tiny else "")
  tokenizer = args["tokenizer"] or (TINY_DATA if tiny else args["init"])

  c = common.base_config()
  c.seed = args["seed"]
  if args["corpus"]:  # continued pretraining on plain text, documents end with eos
    c.data = text.pretraining_config(
        format="packed", seq_len=seq_len, batch_size=batch, vocab_size=0,
        corpus=args["corpus"], tokenizer=tokenizer)
    c.eval_splits = ("validation",)
    task = "causal_lm"
  else:
    if not train:
      raise ValueError("configs/llm_sft.py: name the instructions: data=<jsonl> (or train=)")
    c.data = text.sft_config(train=train, validation=validation, test=test,
                             tokenizer=tokenizer, seq_len=seq_len, batch_size=batch,
                             chat_template=args["chat_template"])
    c.eval_splits = ("validation", "test") if test else ("validation",)
    task = "sft"

  if tiny:
    c.model = tiny_model(text.load_hf_tokenizer(tokenizer).size, seq_len)
    tied = True
  else:
    model, task_settings = pretrained_settings(args["init"])
    c.model = ml_collections.ConfigDict(model)
    c.model.dropout_rate = c.model.attention_dropout_rate = 0.0
    tied = task_settings["tied"]
    c.init.pretrained_workdir = args["init"]
    c.init.load = [r"backbone/.*", r"heads/lm/.*"]  # the imported LM head too
    c.init.skip = []
  c.task = ml_collections.ConfigDict(dict(name=task, tied=tied,
                                          loss_chunk=args["loss_chunk"]))

  if args["lora"]:
    c.lora.rank = args["lora"]
    c.lora.alpha = 2.0 * args["lora"]
    c.lora.targets = LORA_TARGETS
    c.optim.strategy.name = "lora"  # the base backbone frozen, adapters train
    if not tied:  # an untied pretrained LM head stays frozen too (tied: it is the embedding)
      c.optim.groups = [(r"heads/.*", {"frozen": True})]
  if args["bf16"]:
    c.train.compute_dtype = "bfloat16"
  c.optim.accumulation_steps = args["accumulation"]
  c.optim.lr = args["lr"] or (3e-3 if tiny else 2e-4 if args["lora"] else 2e-5)
  c.optim.weight_decay = 0.0 if args["lora"] else 0.01
  c.optim.b2 = 0.95
  c.optim.decay = "cosine"
  c.train.steps = args["steps"] or (600 if tiny else 1000)
  c.optim.warmup_steps = max(c.train.steps // 20, 1)
  c.train.log_every = max(min(50, c.train.steps // 10), 1)
  c.train.eval_every = max(c.train.steps // 4, 1)
  c.train.checkpoint_every = c.train.steps
  c.train.keep = 1
  return c
