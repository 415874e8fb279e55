r"""LSTM / GRU: next-token language model on unlabeled text, then a sentiment classifier.

Model: token embedding (256) -> 2 recurrent layers (hidden 256) = backbone.
Stages, in order, each in `<workdir>/<stage>`:
  pretrain  causal LM on packed unlabeled text (the state restarts at every
            document of a packed row); tied output layer (logits = h @ embedding^T)
  finetune  the pretrained backbone + a fresh softmax layer on the final hidden
            state (after the last real token; padding is masked, not read)

Data, by `dataset=`:
  ""            (default, offline) LM on the corpus shipped with ptft_jax, classifier on
                the shipped labeled reviews (ptft_jax/data/text/assets/sentiment)
  imdb_reviews  TFDS from the data dir: LM on its 50k-review "unsupervised" split,
                classifier on train[:90%] (validation train[90%:], test "test");
                pass vocab=PATH (e.g. BERT's uncased vocab.txt) for a real vocabulary
Both stages share one tokenizer, trained on the shipped corpus unless `vocab=` is given.

  python -m ptft_jax.main --config=configs/rnn.py --workdir=runs/lstm_sentiment
  python -m ptft_jax.main --config=configs/rnn.py:cell=gru,dataset=imdb_reviews,vocab=V.txt \
      --workdir=runs/gru_imdb

Expected: not measured on this machine. Look at <workdir>/finetune/eval_test.json
(test accuracy) and <workdir>/pretrain/eval_validation.json (perplexity). The tests
run `configs/rnn.py:tiny` offline (plumbing only: a few steps).

Arguments:
  cell=lstm|gru     the recurrent cell (default lstm)
  bidirectional     the classifier reads both directions; it loads the embedding and
                    the first forward layer of the (unidirectional) LM, the rest is new
  dataset=NAME      "" or imdb_reviews (above)
  data_dir=DIR      TFDS data dir (and the vocabulary cache)
  vocab=PATH        a WordPiece vocab.txt; "" trains one of 4096 tokens on the corpus
  label_fraction=F  fine-tune on this stratified fraction of the labels
  tiny              hidden 32, a few steps, short rows (tests)
  seed=N            the seed of both stages
"""

import ml_collections

from configs import common
from ptft_jax.data import text

VOCAB_SIZE = 4096


def _data(args: dict, fmt: str) -> ml_collections.ConfigDict:
  """`config.data` of one stage; `fmt` is "packed" (LM) or "labeled" (classifier)."""
  d = text.default_config()
  d.format = fmt
  d.data_dir = args["data_dir"]
  d.tokenizer.vocab = args["vocab"]
  d.tokenizer.vocab_size = VOCAB_SIZE
  d.nsp = False
  d.seq_len = 32 if args["tiny"] else (256 if args["dataset"] else 64)
  d.batch_size = 16 if args["tiny"] else 64
  d.eval_batch_size = 16 if args["tiny"] else 128
  d.max_eval_examples = 64 if args["tiny"] else 2048
  if args["dataset"] == "imdb_reviews":
    d.source, d.dataset = "tfds", "imdb_reviews"
    d.splits = (dict(train="unsupervised", validation="test[:2%]", test="test[:2%]")
                if fmt == "packed" else
                dict(train="train[:90%]", validation="train[90%:]", test="test"))
  elif args["dataset"]:
    raise ValueError(f"dataset={args['dataset']!r}: choose '' (offline) or imdb_reviews")
  elif fmt == "labeled":
    d.source, d.dataset = "jsonl", "sentiment"
    d.files = {s: text.example_name("sentiment", s) for s in ("train", "validation", "test")}
  return d


def _stage(args: dict, fmt: str, bidirectional: bool) -> ml_collections.ConfigDict:
  tiny = args["tiny"]
  c = common.base_config()
  c.seed = args["seed"]
  c.data = _data(args, fmt)
  vocab_size = text.vocab_file_size(args["vocab"]) if args["vocab"] else VOCAB_SIZE
  c.model = ml_collections.ConfigDict(dict(
      name="rnn", vocab_size=vocab_size, cell=args["cell"], hidden_size=32 if tiny else 256,
      num_layers=2, bidirectional=bidirectional, embed_dim=0, dropout_rate=0.1))
  c.optim.warmup_steps = 2 if tiny else 200
  c.optim.grad_clip_norm = 1.0
  c.train.log_every = 2 if tiny else 100
  c.train.checkpoint_every = 5000
  c.train.keep = 1
  return c


def get_config(arg: str = ""):
  args = common.parse_arg(arg, cell="lstm", bidirectional=False, dataset="", data_dir="", vocab="",
                   label_fraction=1.0, tiny=False, seed=0)
  if args["cell"] not in ("lstm", "gru"):
    raise ValueError(f"cell={args['cell']!r}: choose lstm or gru")
  steps = lambda n: 3 if args["tiny"] else n

  pretrain = _stage(args, "packed", bidirectional=False)
  pretrain.task = ml_collections.ConfigDict(dict(name="causal_lm", tied=True))
  pretrain.optim.lr = 2e-3
  pretrain.train.steps = steps(3000 if not args["dataset"] else 30000)
  pretrain.train.eval_every = steps(500)
  pretrain.eval_splits = ("validation",)

  finetune = _stage(args, "labeled", bidirectional=args["bidirectional"])
  finetune.data.label_fraction = args["label_fraction"]
  finetune.task = ml_collections.ConfigDict(dict(
      name="text_classification", pooling="cls", head_dropout_rate=0.1))
  finetune.optim.lr = 1e-3
  finetune.train.steps = steps(600 if not args["dataset"] else 5000)
  finetune.train.eval_every = steps(100 if not args["dataset"] else 500)
  finetune.init.pretrained_workdir = "@pretrain"
  if args["bidirectional"]:  # layer 1 reads both directions: its input size changed
    finetune.init.load = ["backbone/embed/.*", "backbone/layer_0_forward/.*"]

  config = common.staged(pretrain=pretrain, finetune=finetune)
  return config
