r"""BERT pretraining: masked LM + next-sentence prediction.

By default on the corpus shipped with ptft_jax (Python reference prose, ~200 KB,
no download) with a WordPiece vocabulary trained on it; or on a TFDS corpus by
name from your data_dir.

  python -m ptft_jax.main --config=configs/bert.py:tiny --workdir=runs/bert_tiny
  python -m ptft_jax.main --config=configs/bert.py:base,dataset=wikipedia/20230601.en,\
vocab=/path/to/vocab.txt,data_dir=/data/tfds --workdir=runs/bert_base
  python -m ptft_jax.main --config=configs/bert.py:large,tiny --workdir=runs/bert_large_tiny

Then fine-tune: `configs/glue.py:task=sst2,init=runs/bert_tiny` (see docs/text.md).

Layers are one nn.scan (`config.model.scan_layers=True`, params under `layers/`); the
`:tiny` figures below were measured with looped layers (`--config.model.scan_layers=False`,
whose initial weights differ), before scanning became the default.

Expected (measured on this project's 2-core CPU, seed 0): `:tiny` (600 steps,
1.0M parameters) reaches validation MLM accuracy 0.131, MLM perplexity 298, NSP
accuracy 0.604 (test 0.151 / 246 / 0.590); look at <workdir>/eval_validation.json
and eval_test.json; 43 s wall. `mini` and `base`: not
measured on this machine.

Expected, `large` (BERT-large: 24 layers x 1024, 16 heads, FFN 4096, 336,226,108
parameters with the MLM and NSP heads; sequence 512, global batch 256; fsdp over all
devices, remat=full, bfloat16 compute): on 8 devices of 16 GiB (32 sequences per
device) memory.estimate gives ~3.4 GiB per device: state 646 MiB + update 162 MiB +
gathered weights 155 MiB (scanned layers: one layer gathered at a time; looped 1.1 GiB,
4.4 GiB in all) + activations 1.9 GiB + logits 596 MiB; remat=none would need 32.3 GiB
(30.2 looped). Computed, not measured on such hardware. `large,tiny` (2 layers x 64,
4 heads, sequence 64, batch 16, the same mesh, remat and dtype) trains 2 steps on 8
simulated CPU devices with fsdp=8, loss finite (tests/e2e/test_scale_configs.py).

Arguments (`configs/bert.py:VARIANT,key=value,...`):
  tiny | mini | base | large   model size (default mini); see VARIANTS
  large,tiny           the large family (mesh, remat, dtype) at test size
  dataset=NAME         a TFDS text corpus (lm1b, wikipedia/..., c4/...) instead of the
                       shipped one; must be prepared in data_dir (array_record)
  data_dir=DIR         TFDS data_dir (default $PTFT_DATA_DIR)
  vocab=PATH           a BERT vocab.txt (default: train one of the variant's size on
                       the shipped corpus, or on corpus=...)
  corpus=PATH          local .txt files (a file or a directory) instead of the shipped corpus
  nsp=0                masked LM only (one segment per row)
  steps=N, lr=X, seed=N
"""

import math

import ml_collections

from configs import common
from ptft_jax.data import text

# layers, hidden, heads, seq_len, vocab_size (trained vocab), batch, steps, lr
VARIANTS = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, seq_len=64, vocab_size=4096,
                 batch_size=32, steps=600, lr=1e-3),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, seq_len=128, vocab_size=4096,
                 batch_size=64, steps=3000, lr=5e-4),
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, seq_len=128, vocab_size=30522,
                 batch_size=256, steps=100_000, lr=1e-4),
    # BERT-large's shape; fsdp over all devices, remat=full, bfloat16 compute (get_config).
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, seq_len=512,
                  vocab_size=30522, batch_size=256, steps=1_000_000, lr=1e-4),
}
# `large,tiny`: the large family (its mesh, remat, dtype, rules) at test size.
LARGE_TINY = dict(num_layers=2, hidden_size=64, num_heads=4, seq_len=64, vocab_size=4096,
                  batch_size=16, steps=2, lr=1e-3)


def model_config(variant: str, vocab_size: int, v: dict | None = None
                 ) -> ml_collections.ConfigDict:
  """`config.model` of a BERT variant (TransformerConfig fields); `v` overrides its sizes."""
  v = v or VARIANTS[variant]
  return ml_collections.ConfigDict(dict(
      name="bert", vocab_size=vocab_size, hidden_size=v["hidden_size"],
      num_layers=v["num_layers"], num_heads=v["num_heads"],
      intermediate_size=4 * v["hidden_size"], max_position_embeddings=512,
      type_vocab_size=2, dropout_rate=0.1, attention_dropout_rate=0.1,
      # "full" | "dots_saveable": recompute activations (memory.py); large: full
      remat="full" if variant == "large" else "none",
      # one nn.scan over the layers: compile time flat in depth; params under layers/
      # [num_layers, ...] (docs/scaling.md); False: layer_{i}/ as HF names them
      scan_layers=True))


def get_config(arg: str = "mini"):
  parts = (arg or "").split(",")
  large = "large" in parts  # `large,tiny` is the large family at test size, not `tiny`
  variant = "large" if large else next((a for a in parts if a in VARIANTS), "mini")
  rest = ",".join(a for a in parts if a not in VARIANTS)
  args = common.parse_arg(rest, dataset="", data_dir="", vocab="", corpus="", nsp=True, steps=0,
                   lr=0.0, seed=0)
  v = LARGE_TINY if large and "tiny" in parts else VARIANTS[variant]

  c = common.base_config()
  c.seed = args["seed"]
  c.data = text.pretraining_config(
      format="sentence_pairs", seq_len=v["seq_len"], batch_size=v["batch_size"],
      vocab_size=v["vocab_size"], dataset=args["dataset"], data_dir=args["data_dir"],
      vocab=args["vocab"], corpus=args["corpus"])
  c.data.nsp = args["nsp"]
  if args["dataset"]:
    c.eval_splits = ("validation",)
  vocab_size = text.vocab_file_size(args["vocab"]) if args["vocab"] else v["vocab_size"]
  c.model = model_config(variant, vocab_size, v)
  if large:  # params and Adam split over every device, the batch too; bf16 activations
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.train.compute_dtype = "bfloat16"

  c.task = ml_collections.ConfigDict(dict(
      name="masked_lm", mask_rate=0.15,
      max_predictions_per_seq=5 * math.ceil(0.15 * v["seq_len"] / 5)))  # BERT: 20 for 128

  c.optim.lr = args["lr"] or v["lr"]
  c.optim.weight_decay = 0.01
  c.optim.warmup_steps = min(1000, v["steps"] // 10)
  c.optim.decay = "linear"
  c.train.steps = args["steps"] or v["steps"]
  c.train.log_every = 1 if v is LARGE_TINY else 50
  c.train.eval_every = 0 if v is LARGE_TINY else max(c.train.steps // 5, 1)
  c.train.checkpoint_every = max(c.train.steps // 2, 1)
  c.train.keep = 1
  if v is LARGE_TINY:  # a quick look at the end, no TensorBoard files
    c.data.max_eval_examples, c.eval_splits, c.train.tensorboard = 64, ("validation",), False
  return c
