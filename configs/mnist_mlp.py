r"""MLP on MNIST: 784 -> 128 (ReLU) -> 10, pretrained as an autoencoder, then fine-tuned.

Stages, in order, each in `<workdir>/<stage>`:
  pretrain  denoising autoencoder on the train images, no labels:
            784 -> 128 (backbone) -> 784 (decoder head), per-pixel MSE
  finetune  the pretrained 784 -> 128 backbone + a fresh 128 -> 10 softmax head

MNIST must be prepared in the data dir (`tfds build mnist --data_dir=DIR`, then
`--config.stages.pretrain.data.data_dir=DIR` and the same for finetune, or set
$PTFT_DATA_DIR). MNIST has no validation split: the last 10% of train is held out.

  python -m ptft_jax.main --config=configs/mnist_mlp.py --workdir=runs/mnist_mlp

Expected: not measured on this machine (MNIST is not prepared here). Look at
<workdir>/finetune/eval_test.json (test accuracy, macro-F1). Offline, the tests run
`configs/mnist_mlp.py:tiny,dataset=digits` (plumbing only: a few steps).

Arguments (`configs/mnist_mlp.py:tiny,label_fraction=0.1`):
  dataset=NAME        any 28x28 (or other) TFDS image dataset (default mnist)
  label_fraction=F    fine-tune on this stratified fraction of the labels (default 1.0)
  tiny                a few steps per stage, small batches (tests)
  seed=N              the seed of every stage
"""

import ml_collections

from configs import common


def _common(args: dict) -> ml_collections.ConfigDict:
  c = common.image_stage(args["dataset"], seed=args["seed"], tiny=args["tiny"],
                         warmup_steps=4 if args["tiny"] else 200, eval_batch_size=512)
  c.data.batch_size = 16 if args["tiny"] else 128
  c.model.name = "mlp"
  c.model.hidden_sizes = (128,)
  return c


def get_config(arg: str = ""):
  args = common.parse_arg(arg, dataset="mnist", label_fraction=1.0, tiny=False, seed=0)
  steps = lambda n: 4 if args["tiny"] else n

  pretrain = _common(args)
  pretrain.task = ml_collections.ConfigDict(dict(
      name="autoencoder", noise=0.1, dropout=0.2, head_hidden_sizes=()))
  pretrain.optim.lr = 1e-3
  pretrain.train.steps = steps(4000)
  pretrain.train.eval_every = steps(1000)
  pretrain.eval_splits = ("validation",)

  finetune = _common(args)
  finetune.data.label_fraction = args["label_fraction"]
  finetune.optim.lr = 1e-3
  finetune.train.steps = steps(3000)
  finetune.train.eval_every = steps(500)
  finetune.init.pretrained_workdir = "@pretrain"

  config = common.staged(pretrain=pretrain, finetune=finetune)
  return config
