r"""Fine-tune a BERT on GLUE-style classification / regression (one sentence or a pair).

Data (`task=`):
  sst2 | cola | mrpc | qqp | qnli | rte | stsb   `glue/<task>` from a prepared TFDS
      data_dir (`tfds build glue/sst2 --file_format=array_record`; never downloaded);
      reports the validation split (GLUE test labels are hidden).
  imdb         `imdb_reviews` from the data_dir (its test split is reported).
  jsonl        your own JSONL files, `{"text": ..., "label": ...}` per line (optional
      "text_b"): train=PATH,validation=PATH[,test=PATH]; `regression` for float labels.
  sentiment    the labeled reviews shipped with ptft_jax (offline).

Start from (`init=WORKDIR`):
  a ptft_jax pretraining run (configs/bert.py): its model and tokenizer settings
      come from WORKDIR/config.json;
  an imported model (`python -m ptft_jax.convert hf-bert --src DIR --workdir WORKDIR`):
      WORKDIR/model_config.json and WORKDIR/vocab.txt;
  nothing: a configs/bert.py `model=tiny|mini|base` trained from scratch.
The backbone is loaded, the classifier initialized, pretraining heads ignored
(`<workdir>/transfer_report.json`).

  python -m ptft_jax.main --config=configs/glue.py:task=sst2,init=runs/bert_mini,\
data_dir=/data/tfds --workdir=runs/sst2
  python -m ptft_jax.main --config=configs/glue.py:task=jsonl,train=a.jsonl,\
validation=b.jsonl,init=runs/minilm --workdir=runs/mine

Other arguments: steps=N, lr=X (default 5e-5 with init, 3e-4 from scratch),
batch=N, seq_len=N, pooling=cls|mean, fraction=F (stratified label fraction), seed=N.

Expected (measured on this project's 2-core CPU, seed 0, shipped reviews, 500 steps,
lr 3e-4): `task=sentiment,model=tiny,seq_len=64` (from scratch) test accuracy 0.860
(validation 0.867); `task=sentiment,init=<a 600-step configs/bert.py:tiny run>,
seq_len=64,lr=3e-4` 0.830 (validation 0.820); 2.0 CPU-minutes each. Look at
<workdir>/eval_test.json. GLUE and imdb: not measured on this machine (no prepared
data here). Details: docs/text.md.
"""

import json
import os

import ml_collections

from configs import bert, common
from ptft_jax.data import text

# task -> (TFDS name, regression?, default train steps, split evaluated as "validation")
TFDS_TASKS = {
    "sst2": ("glue/sst2", False, 6000, "validation"),
    "cola": ("glue/cola", False, 800, "validation"),
    "mrpc": ("glue/mrpc", False, 350, "validation"),
    "qqp": ("glue/qqp", False, 30000, "validation"),
    "qnli": ("glue/qnli", False, 9000, "validation"),
    "rte": ("glue/rte", False, 250, "validation"),
    "stsb": ("glue/stsb", True, 550, "validation"),
    "imdb": ("imdb_reviews", False, 2400, "test"),
}


def pretrained_settings(workdir: str) -> tuple[dict, dict]:
  """(config.model, config.data.tokenizer) of a pretraining run or an imported model."""
  imported = os.path.join(workdir, "model_config.json")
  run = os.path.join(workdir, "config.json")
  if os.path.isfile(imported):
    with open(imported) as f:
      model = {"name": "bert", **json.load(f)}
    vocab = os.path.join(workdir, "vocab.txt")
    tokenizer = dict(vocab=vocab, vocab_size=model["vocab_size"],
                     lowercase=text.vocab_is_uncased(vocab), train_files=())
    return model, tokenizer
  if os.path.isfile(run):
    with open(run) as f:
      saved = json.load(f)
    if saved.get("model", {}).get("name") != "bert" or "tokenizer" not in saved.get("data", {}):
      raise ValueError(f"init={workdir}: not a BERT text run (config.json has model "
                       f"{saved.get('model', {}).get('name')!r})")
    tokenizer = saved["data"]["tokenizer"]
    if not tokenizer["vocab"] and not tokenizer["train_files"]:  # trained on the run's corpus
      tokenizer["train_files"] = saved["data"].get("corpus_files", [])
    return saved["model"], tokenizer
  raise ValueError(f"init={workdir}: neither model_config.json (imported model) nor "
                   "config.json (ptft_jax run) is there")


def get_config(arg: str = "task=sst2"):
  args = common.parse_arg(
      arg, task="sst2", init="", model="mini", data_dir="", train="", validation="", test="",
      regression=False, steps=0, lr=0.0, batch=32, seq_len=128, pooling="cls", fraction=1.0,
      seed=0)
  task = args["task"]
  c = common.base_config()
  c.seed = args["seed"]

  d = text.default_config()
  d.format = "labeled"
  d.data_dir = args["data_dir"]
  d.seq_len = args["seq_len"]
  d.batch_size = args["batch"]
  d.label_fraction = args["fraction"]
  if task in TFDS_TASKS:
    d.dataset, regression, steps, held_out = TFDS_TASKS[task]
    d.source = "tfds"
    d.splits.validation = held_out
    c.eval_splits = ("validation",)
  elif task in ("jsonl", "sentiment"):
    regression, steps = args["regression"], 500
    d.source, d.dataset = "jsonl", task
    if task == "sentiment":
      d.files = {s: text.example_name("sentiment", s) for s in ("train", "validation", "test")}
    else:
      d.files = dict(train=args["train"], validation=args["validation"], test=args["test"])
      c.eval_splits = ("validation", "test") if args["test"] else ("validation",)
    d.label_type = "float" if regression else "auto"
  else:
    raise ValueError(f"task={task!r}: choose one of {sorted(TFDS_TASKS)}, jsonl or sentiment")

  if args["init"]:
    model, tokenizer = pretrained_settings(args["init"])
    c.model = ml_collections.ConfigDict(model)
    d.tokenizer = ml_collections.ConfigDict(tokenizer)
    c.init.pretrained_workdir = args["init"]
  else:
    c.model = bert.model_config(args["model"], bert.VARIANTS[args["model"]]["vocab_size"])
    d.tokenizer.vocab_size = bert.VARIANTS[args["model"]]["vocab_size"]
  c.data = d

  c.task = ml_collections.ConfigDict(dict(
      name="text_regression" if regression else "text_classification",
      pooling=args["pooling"], head_dropout_rate=0.1))
  c.optim.lr = args["lr"] or (5e-5 if args["init"] else 3e-4)
  c.optim.weight_decay = 0.01
  c.optim.decay = "linear"
  c.train.steps = args["steps"] or steps
  c.optim.warmup_steps = c.train.steps // 10
  c.train.log_every = max(min(50, c.train.steps // 10), 1)
  c.train.eval_every = max(c.train.steps // 5, 1)
  c.train.checkpoint_every = c.train.steps
  c.train.keep = 1
  return c
