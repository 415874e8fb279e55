r"""A ~1B-parameter GPT-style decoder (the `gpt` backbone): causal LM on packed documents.

18 layers x hidden 2048, 16 heads, FFN 8192, vocabulary 32,000, sequence 2048:
976,183,296 parameters (output layer tied to the embeddings). fsdp over all devices
(config.mesh data=1, fsdp=-1), `remat=full`, bfloat16 compute with float32 params
and Adam, global batch 32. The run prints its per-device memory before the first
step, and refuses to compile, naming fsdp / remat settings that would fit, when
that exceeds `config.train.device_memory_gib` (0: the backend's own limit).

  python -m ptft_jax.main --config=configs/decoder_1b.py:dataset=c4/en,vocab=/path/to/vocab.txt,\
data_dir=/data/tfds --workdir=runs/decoder_1b --config.train.device_memory_gib=16
  python -m ptft_jax.main --config=configs/decoder_1b.py:tiny --workdir=runs/decoder_1b_tiny

Expected: on 8 devices of 16 GiB (fsdp=8, 4 x 2048 tokens per device) memory.estimate
gives ~6.2 GiB per device: params 467 MiB + Adam 934 MiB + gradients and their
update 934 MiB + weights gathered for the passes 401 MiB (scanned layers, the default:
one layer gathered at a time; looped 3.2 GiB, 9.0 GiB in all) + activations 1.6 GiB
(remat=full) + logits 2.0 GiB; remat=none would need 24.9 GiB (25.4 looped). Computed, not
measured on such hardware (the formula is within 20% of XLA's buffer assignment
at small sizes, docs/scaling.md). `:tiny` (2 layers x 64, 4 heads, vocabulary 4096,
sequence 64, batch 16, the same mesh, remat and dtype) trains 2 steps on 8 simulated
CPU devices with fsdp=8 and evaluates 64 validation rows: a finite loss, nothing to
read into (tests/e2e/test_scale_configs.py).

Arguments (`configs/decoder_1b.py:key=value,...`):
  tiny                 the same family at test size (above)
  dataset=NAME         a prepared TFDS text corpus instead of the shipped one
  data_dir=DIR, vocab=PATH (a vocab.txt), corpus=PATH (local .txt), steps=N, lr=X, seed=N
"""

import ml_collections

from configs import common, gpt
from ptft_jax.data import text

FULL = dict(num_layers=18, hidden_size=2048, num_heads=16, seq_len=2048, vocab_size=32000,
            batch_size=32, steps=100_000, lr=3e-4)
TINY = dict(num_layers=2, hidden_size=64, num_heads=4, seq_len=64, vocab_size=4096,
            batch_size=16, steps=2, lr=1e-3)


def get_config(arg: str = ""):
  args = common.parse_arg(arg, tiny=False, dataset="", data_dir="", vocab="", corpus="",
                          steps=0, lr=0.0, seed=0)
  v = TINY if args["tiny"] else FULL

  c = common.base_config()
  c.seed = args["seed"]
  c.data = text.pretraining_config(
      format="packed", seq_len=v["seq_len"], batch_size=v["batch_size"],
      vocab_size=v["vocab_size"], dataset=args["dataset"], data_dir=args["data_dir"],
      vocab=args["vocab"], corpus=args["corpus"])
  c.data.eval_batch_size = v["batch_size"]
  if args["dataset"]:
    c.eval_splits = ("validation",)
  vocab_size = text.vocab_file_size(args["vocab"]) if args["vocab"] else v["vocab_size"]
  # remat "full": each layer keeps only its input, activations ~1/12 (memory.py)
  c.model = gpt.model_config(v, vocab_size, dropout=0.0, remat="full")
  c.task = ml_collections.ConfigDict(dict(name="causal_lm", tied=True))
  # Params and Adam split over every device; the batch too (fsdp is a batch axis).
  c.mesh.data, c.mesh.fsdp = 1, -1
  c.train.compute_dtype = "bfloat16"

  c.optim.lr = args["lr"] or v["lr"]
  c.optim.weight_decay = 0.1
  c.optim.b2 = 0.95
  c.optim.warmup_steps = min(2000, v["steps"] // 10)
  c.train.steps = args["steps"] or v["steps"]
  c.train.log_every = 1 if args["tiny"] else 50
  c.train.eval_every = 0 if args["tiny"] else max(c.train.steps // 5, 1)
  c.train.checkpoint_every = max(c.train.steps // 2, 1)
  c.train.keep = 1
  if args["tiny"]:  # a quick look at the end, no TensorBoard files
    c.data.max_eval_examples, c.eval_splits, c.train.tensorboard = 64, ("validation",), False
  return c
