r"""Quickstart: pretrain without labels, then classify from ONE labeled image per class.

All on the embedded handwritten digits (1,797 real 8x8 images, no download).
Stages, in order, each in `<workdir>/<stage>`:
  pretrain    a small CNN learns from the 1,257 train images, no labels (contrastive)
  pretrained  a linear probe: a new classifier head on the frozen pretrained backbone,
              trained on 1 labeled image per class (10 images)
  scratch     the same CNN from random init, all of it trained on the same 10 images
Then `<workdir>/summary.json` and `<workdir>/validation_curves.png`. It is the
`labels=1` point of configs/label_efficiency.py, where pretraining helps on every seed.

  python -m ptft_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Expected (measured on this project's 2-core CPU, 270 test images; docs/design.md,
"Label efficiency"): test accuracy 0.769 ± 0.046 pretrained vs 0.647 ± 0.013 scratch
over seeds 0-4; pretrained wins by 5.9 to 17.4 points on validation and test on each of
them (seed 0: 0.722 vs 0.652). Wall time 27 s (AMD EPYC, AVX-512).

Arguments (`configs/quickstart.py:labels=5,seed=1`):
  labels=K                          labeled train images per class (default 1)
  pretrain=contrastive|autoencoder  the pretraining task (default contrastive)
  tiny                              a few steps per stage, for tests
  seed=N                            the seed of every stage (and which images are labeled)
"""

import ml_collections

from configs import common

# Labeled train images per class in the default quickstart: a point of the label-efficiency
# curve (configs/label_efficiency.py) where pretraining helps on every seed.
LABELS_PER_CLASS = 1


def _common(seed: int) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.seed = seed
  # A small CNN: 3x3 convs share weights across positions, which suits 8x8 digits
  # and the shift augmentation of contrastive pretraining.
  c.model = ml_collections.ConfigDict(dict(
      name="cnn", channels=(32, 64), dense_sizes=(128,), dropout_rate=0.0))
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.keep = 1
  return c


def pretrain_stage(seed: int, task: str = "contrastive", tiny: bool = False):
  """The backbone learns from the train split's images, no labels."""
  c = _common(seed)
  if task == "contrastive":
    # Mild views: on 8x8 images a 1-pixel shift is already a strong change.
    c.task = ml_collections.ConfigDict(dict(
        name="contrastive", temperature=0.5, projection_hidden=128, projection_dim=64,
        augment=dict(max_shift=1, noise=0.1, dropout=0.1, jitter=0.1)))
  elif task == "autoencoder":
    c.task = ml_collections.ConfigDict(dict(
        name="autoencoder", noise=0.2, dropout=0.3, head_hidden_sizes=(256,)))
  else:
    raise ValueError(f"pretrain={task!r}: choose contrastive or autoencoder")
  c.data.batch_size = 256
  c.optim.lr = 2e-3
  c.train.steps = 4 if tiny else 1500
  c.train.eval_every = 4 if tiny else 500
  c.eval_splits = ("validation",)
  return c


def finetune_stage(seed: int, pretrained_workdir: str, labels_per_class: int,
                   tiny: bool = False, recipe: str = "full"):
  """A classifier trained on `labels_per_class` labeled train images of each class.

  recipe "full" trains every parameter (from scratch when `pretrained_workdir` is
  ""); "probe" trains only the new head on the frozen pretrained backbone (a
  linear probe, lr 1e-2), which keeps what pretraining learned when labels are
  few. Which images are labeled depends on the seed, like the initialization.
  """
  c = _common(seed)
  c.data.labels_per_class = labels_per_class
  c.data.label_fraction_seed = seed
  c.data.batch_size = 32
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 20
  if recipe == "probe":
    c.optim.strategy.name = "linear_probe"
    c.optim.lr = 1e-2
  elif recipe != "full":
    raise ValueError(f"recipe={recipe!r}: choose full or probe")
  c.task.head_dropout_rate = 0.2
  c.train.steps = 4 if tiny else 400
  c.train.eval_every = 4 if tiny else 50
  c.init.pretrained_workdir = pretrained_workdir
  return c


def get_config(arg: str = ""):
  args = common.parse_arg(arg, pretrain="contrastive", labels=LABELS_PER_CLASS, tiny=False,
                          seed=0)
  seed, tiny = args["seed"], args["tiny"]
  return common.staged(
      pretrain=pretrain_stage(seed, args["pretrain"], tiny),
      pretrained=finetune_stage(seed, "@pretrain", args["labels"], tiny, recipe="probe"),
      scratch=finetune_stage(seed, "", args["labels"], tiny))
