r"""GPT pretraining: causal LM on packed documents (no attention or loss across documents).

By default on the corpus shipped with ptft_jax (no download), WordPiece
vocabulary trained on it; or a TFDS corpus by name from your data_dir.

  python -m ptft_jax.main --config=configs/gpt.py:tiny --workdir=runs/gpt_tiny
  python -m ptft_jax.main --config=configs/gpt.py:small,dataset=lm1b,data_dir=/data/tfds \
      --workdir=runs/gpt_small

Arguments (`configs/gpt.py:VARIANT,key=value,...`):
  tiny | small         model size (default tiny); small is GPT-2 small's shape
  dataset=NAME         a prepared TFDS text corpus instead of the shipped one
  data_dir=DIR, vocab=PATH (a vocab.txt), corpus=PATH (local .txt), steps=N, lr=X, seed=N

Layers are one nn.scan (`config.model.scan_layers=True`, params under `layers/`); the
`:tiny` figures below were measured with looped layers (`--config.model.scan_layers=False`,
whose initial weights differ), before scanning became the default.

Expected (measured on this project's 2-core CPU, seed 0): `:tiny` (600 steps, 0.9M
parameters) reaches validation perplexity 165 and next-token accuracy 0.199 (train
perplexity 18: 200 KB of text overfits); look at <workdir>/eval_validation.json.
Its wall time was not recorded. `small`: not measured on this machine.
"""

import ml_collections

from configs import common
from ptft_jax.data import text

VARIANTS = {
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, seq_len=128, vocab_size=4096,
                 batch_size=32, steps=600, lr=1e-3),
    "small": dict(num_layers=12, hidden_size=768, num_heads=12, seq_len=512, vocab_size=30522,
                  batch_size=64, steps=100_000, lr=3e-4),
}


def model_config(v: dict, vocab_size: int, *, dropout: float,
                 remat: str) -> ml_collections.ConfigDict:
  """A `gpt` backbone of shape `v` (hidden_size, num_layers, num_heads, seq_len), FFN 4x."""
  return ml_collections.ConfigDict(dict(
      name="gpt", vocab_size=vocab_size, hidden_size=v["hidden_size"],
      num_layers=v["num_layers"], num_heads=v["num_heads"],
      intermediate_size=4 * v["hidden_size"], max_position_embeddings=v["seq_len"],
      dropout_rate=dropout, attention_dropout_rate=dropout, layer_norm_eps=1e-5, remat=remat,
      scan_layers=True))  # one nn.scan over the layers (docs/scaling.md)


def get_config(arg: str = "tiny"):
  variant = next((a for a in (arg or "").split(",") if a in VARIANTS), "tiny")
  rest = ",".join(a for a in (arg or "").split(",") if a not in VARIANTS)
  args = common.parse_arg(rest, dataset="", data_dir="", vocab="", corpus="", steps=0, lr=0.0,
                          seed=0)
  v = VARIANTS[variant]

  c = common.base_config()
  c.seed = args["seed"]
  c.data = text.pretraining_config(
      format="packed", seq_len=v["seq_len"], batch_size=v["batch_size"],
      vocab_size=v["vocab_size"], dataset=args["dataset"], data_dir=args["data_dir"],
      vocab=args["vocab"], corpus=args["corpus"])
  c.data.eval_batch_size = 32
  if args["dataset"]:
    c.eval_splits = ("validation",)
  vocab_size = text.vocab_file_size(args["vocab"]) if args["vocab"] else v["vocab_size"]
  # remat "full" | "dots_saveable": recompute activations (memory.py)
  c.model = model_config(v, vocab_size, dropout=0.1, remat="none")
  c.task = ml_collections.ConfigDict(dict(name="causal_lm", tied=True))

  c.optim.lr = args["lr"] or v["lr"]
  c.optim.weight_decay = 0.1
  c.optim.b2 = 0.95
  c.optim.warmup_steps = min(2000, v["steps"] // 10)
  c.train.steps = args["steps"] or v["steps"]
  c.train.log_every = 50
  c.train.eval_every = max(c.train.steps // 5, 1)
  c.train.checkpoint_every = max(c.train.steps // 2, 1)
  c.train.keep = 1
  return c
