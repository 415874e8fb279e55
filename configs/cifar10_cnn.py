r"""CNN on CIFAR-10, pretrained contrastively (SimCLR), then fine-tuned.

Model: conv 3->64 (3x3, pad 1) -> ReLU -> 2x2 max-pool -> conv 64->128 -> ReLU ->
pool -> dense 1000 (ReLU) = backbone; dense 10 (softmax) = classifier head.

Stages, in order, each in `<workdir>/<stage>`:
  pretrain  SimCLR on the train images (no labels): two views per image by random
            resized crop, flip, colour distortion and grayscale; NT-Xent on a
            1000 -> 256 -> 128 projection head
  finetune  the pretrained backbone + a fresh 1000 -> 10 head, all trained, with
            flip + 4-pixel shift augmentation

CIFAR-10 must be prepared in the data dir (`tfds build cifar10 --data_dir=DIR`;
set $PTFT_DATA_DIR or `--config.stages.<stage>.data.data_dir`). The last 10%
of train is the validation split.

  python -m ptft_jax.main --config=configs/cifar10_cnn.py --workdir=runs/cifar10_cnn

Expected: not measured on this machine (CIFAR-10 is not prepared here). Look at
<workdir>/finetune/eval_test.json (test accuracy, macro-F1). Offline, the tests run
`configs/cifar10_cnn.py:tiny,dataset=digits` (plumbing only: a few steps).

Arguments (`configs/cifar10_cnn.py:tiny,label_fraction=0.1`):
  dataset=NAME        any TFDS image dataset (default cifar10)
  label_fraction=F    fine-tune on this stratified fraction of the labels (default 1.0)
  tiny                a few steps per stage, small batches, channels 8/16, dense 32 (tests)
  seed=N              the seed of every stage
"""

import ml_collections

from configs import common

SIMCLR_AUGMENT = dict(crop_scale=0.2, flip=True, color=0.5, color_prob=0.8, grayscale=0.2)


def _common(args: dict) -> ml_collections.ConfigDict:
  c = common.image_stage(args["dataset"], seed=args["seed"], tiny=args["tiny"],
                         warmup_steps=4 if args["tiny"] else 500, eval_batch_size=500)
  c.model = ml_collections.ConfigDict(dict(
      name="cnn", channels=(64, 128), dense_sizes=(1000,), dropout_rate=0.0))
  if args["tiny"]:
    c.model.channels, c.model.dense_sizes = (8, 16), (32,)
  return c


def get_config(arg: str = ""):
  args = common.parse_arg(arg, dataset="cifar10", label_fraction=1.0, tiny=False, seed=0)
  steps = lambda n: 4 if args["tiny"] else n

  pretrain = _common(args)
  pretrain.data.batch_size = 16 if args["tiny"] else 256
  pretrain.task = ml_collections.ConfigDict(dict(
      name="contrastive", temperature=0.5, projection_hidden=256, projection_dim=128,
      augment=SIMCLR_AUGMENT))
  pretrain.optim.lr = 1e-3
  pretrain.train.steps = steps(10000)
  pretrain.train.eval_every = steps(2000)
  pretrain.eval_splits = ("validation",)

  finetune = _common(args)
  finetune.data.batch_size = 16 if args["tiny"] else 128
  finetune.data.label_fraction = args["label_fraction"]
  finetune.task.augment = dict(flip=True, max_shift=4)
  finetune.task.head_dropout_rate = 0.3
  finetune.optim.lr = 5e-4
  finetune.train.steps = steps(8000)
  finetune.train.eval_every = steps(1000)
  finetune.init.pretrained_workdir = "@pretrain"

  config = common.staged(pretrain=pretrain, finetune=finetune)
  return config
