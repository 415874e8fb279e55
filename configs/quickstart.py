r"""Quickstart: pretrain without labels, fine-tune with 10% of the labels, compare to scratch.

All on the embedded handwritten digits (1,797 real 8x8 images, no download).
Stages, in order, each in `<workdir>/<stage>`:
  pretrain    the backbone learns from the train split's images, no labels
  pretrained  a classifier head on that backbone, fine-tuned on 10% of the labels
  scratch     the same architecture trained from random init on the same 10%
Then `<workdir>/summary.json` and `<workdir>/validation_curves.png`.

  python -m ptft_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

Expected (measured on this project's 2-core CPU, 270 test images): test accuracy
0.932 ± 0.002 pretrained vs 0.916 ± 0.018 scratch over seeds 0, 1, 2 (seed 0: 0.933
vs 0.904), in <workdir>/summary.json; the wall time was not recorded. README.md,
"Quickstart result", has the per-seed numbers.

Arguments (`configs/quickstart.py:pretrain=autoencoder,tiny`):
  pretrain=contrastive|autoencoder  the pretraining task (default contrastive)
  tiny                              a few steps per stage, for tests
  seed=N                            the seed of every stage
"""

import ml_collections

from configs import common

# Labeled train images per class in the default quickstart: a point of the label-efficiency
# curve (configs/label_efficiency.py) where pretraining helps on every seed.
LABELS_PER_CLASS = 5


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
                   tiny: bool = False):
  """A classifier on `labels_per_class` labeled train images of each class.

  Which images are labeled depends on the seed, like the initialization.
  """
  c = _common(seed)
  c.data.labels_per_class = labels_per_class
  c.data.label_fraction_seed = seed
  c.data.batch_size = 32
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 20
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
      pretrained=finetune_stage(seed, "@pretrain", args["labels"], tiny),
      scratch=finetune_stage(seed, "", args["labels"], tiny))
