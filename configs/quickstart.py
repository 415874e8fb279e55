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


def get_config(arg: str = ""):
  args = common.parse_arg(arg, pretrain="contrastive", tiny=False, seed=0)
  steps = lambda n: 4 if args["tiny"] else n

  pretrain = _common(args["seed"])
  if args["pretrain"] == "contrastive":
    # Mild views: on 8x8 images a 1-pixel shift is already a strong change.
    pretrain.task = ml_collections.ConfigDict(dict(
        name="contrastive", temperature=0.5, projection_hidden=128, projection_dim=64,
        augment=dict(max_shift=1, noise=0.1, dropout=0.1, jitter=0.1)))
  elif args["pretrain"] == "autoencoder":
    pretrain.task = ml_collections.ConfigDict(dict(
        name="autoencoder", noise=0.2, dropout=0.3, head_hidden_sizes=(256,)))
  else:
    raise ValueError(f"pretrain={args['pretrain']!r}: choose contrastive or autoencoder")
  pretrain.data.batch_size = 256
  pretrain.optim.lr = 2e-3
  pretrain.train.steps = steps(1500)
  pretrain.train.eval_every = steps(500)
  pretrain.eval_splits = ("validation",)

  def finetune(pretrained_workdir: str) -> ml_collections.ConfigDict:
    c = _common(args["seed"])
    c.data.label_fraction = 0.1
    c.data.batch_size = 32
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 20
    c.task.head_dropout_rate = 0.2
    c.train.steps = steps(400)
    c.train.eval_every = steps(50)
    c.init.pretrained_workdir = pretrained_workdir
    return c

  return common.staged(pretrain=pretrain, pretrained=finetune("@pretrain"),
                       scratch=finetune(""))
