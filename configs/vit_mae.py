r"""ViT on the embedded digits: MAE pretraining without labels, then few-label fine-tuning.

Stages, in order, each in `<workdir>/<stage>`:
  pretrain    a small ViT (patch 2 on 8x8 images: 16 patches; 4 layers x 64) learns from
              the 1,257 train images, no labels: masked autoencoding (75% of the patches
              hidden, pixels of the hidden patches predicted by a 1-layer decoder)
  pretrained  the pretrained encoder + a new classifier head, all fine-tuned on K labeled
              train images per class
  scratch     the same ViT from random init, trained the same way on the same images
Then `<workdir>/summary.json`.

  python -m ptft_jax.main --config=configs/vit_mae.py --workdir=runs/vit_mae

Expected (measured on this project's 2-core CPU, 270 test images, seeds 0-2; docs/vision.md
"ViT and MAE"): test accuracy 0.810 ± 0.009 MAE-pretrained vs 0.628 ± 0.015 scratch with
10 labels per class (seed 0: 0.811 vs 0.641); about 75 s wall per seed.
`pretrain=contrastive` (SimCLR): see the docs table.

Arguments (`configs/vit_mae.py:labels=10,seed=1`):
  labels=K     labeled train images per class (default 10)
  pretrain=mae|contrastive   the pretraining task (default mae)
  tiny         a few steps per stage, for tests
  seed=N       the seed of every stage (and which images are labeled)
"""

import ml_collections

from configs import common

PATCH = 2


def _common(seed: int) -> ml_collections.ConfigDict:
  c = common.base_config()
  c.seed = seed
  c.model = ml_collections.ConfigDict(dict(
      name="vit", image_size=8, patch_size=PATCH, hidden_size=64, num_layers=4, num_heads=4,
      intermediate_size=128, pool="gap", class_token=False))
  c.train.log_every = 100
  c.train.checkpoint_every = 5000
  c.train.keep = 1
  return c


def pretrain_stage(seed: int, task: str, tiny: bool):
  c = _common(seed)
  if task == "mae":
    c.task = ml_collections.ConfigDict(dict(
        name="mae", patch_size=PATCH, mask_ratio=0.75, decoder_width=64, decoder_layers=1))
  elif task == "contrastive":
    c.task = ml_collections.ConfigDict(dict(
        name="contrastive", temperature=0.5, projection_hidden=128, projection_dim=64,
        augment=dict(max_shift=1, noise=0.1, dropout=0.1, jitter=0.1)))
  else:
    raise ValueError(f"pretrain={task!r}: choose mae or contrastive")
  c.data.batch_size = 256
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 100
  c.train.steps = 4 if tiny else 1500
  c.train.eval_every = 4 if tiny else 500
  c.eval_splits = ("validation",)
  return c


def finetune_stage(seed: int, pretrained_workdir: str, labels_per_class: int, tiny: bool):
  c = _common(seed)
  c.data.labels_per_class = labels_per_class
  c.data.label_fraction_seed = seed
  c.data.batch_size = 32
  c.optim.lr = 1e-3
  c.optim.weight_decay = 0.05
  c.optim.warmup_steps = 20
  c.task.head_dropout_rate = 0.1
  c.train.steps = 4 if tiny else 400
  c.train.eval_every = 4 if tiny else 100
  c.init.pretrained_workdir = pretrained_workdir
  return c


def get_config(arg: str = ""):
  args = common.parse_arg(arg, pretrain="mae", labels=10, tiny=False, seed=0)
  seed, tiny = args["seed"], args["tiny"]
  return common.staged(
      pretrain=pretrain_stage(seed, args["pretrain"], tiny),
      pretrained=finetune_stage(seed, "@pretrain", args["labels"], tiny),
      scratch=finetune_stage(seed, "", args["labels"], tiny))
