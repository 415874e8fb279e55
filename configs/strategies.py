r"""Fine-tuning strategies compared: linear probe vs partial vs full vs LoRA (and more).

Digits (default): the quickstart's pretraining stage (configs/quickstart.py,
contrastive CNN), then one fine-tuning stage per strategy on the same 10% of
the labels with the same recipe; each keeps its best validation checkpoint and
is tested on it. Then `<workdir>/summary.json`, `validation_curves.png` and
`strategies.{md,json,png}` (test accuracy against trainable parameters).

  python -m ptft_jax.main --config=configs/strategies.py --workdir=runs/strategies

Expected (measured on this project's 2-core CPU, seed 0, 270 test digits): test
accuracy linear_probe 0.944, partial 0.937, layer_decay 0.930, gradual 0.937,
full 0.930, lora 0.926, in <workdir>/strategies.md; about 3.5 CPU-minutes (13 min
wall while the machine was shared). `:text` was run here only at `:text,tiny`
(plumbing, chance accuracy). Table: docs/fine_tuning.md.

Arguments (`configs/strategies.py:tiny,pretrained=runs/quickstart/pretrain`):
  pretrained=DIR  reuse a finished pretraining run (e.g. the quickstart's) instead
                  of pretraining here
  text            the same comparison on the offline sentiment reviews with the
                  imported all-MiniLM-L6-v2 (configs/minilm_text.py's stages)
  tiny            a few steps per stage, for tests
  seed=N          the seed of every stage
"""

import os

import ml_collections

from configs import common, minilm_text, quickstart

# stage name -> (strategy settings, lora rank, lr multiplier on the recipe's lr)
VARIANTS = {
    "linear_probe": ({"name": "linear_probe"}, 0, 10.0),
    "partial": ({"name": "freeze_layers", "freeze_layers": 2}, 0, 1.0),
    "layer_decay": ({"name": "layer_decay", "layer_decay": 0.5}, 0, 2.0),
    "gradual": ({"name": "gradual_unfreeze", "unfreeze_every": 100}, 0, 1.0),
    "full": ({"name": "full"}, 0, 1.0),
    "lora": ({"name": "lora"}, 4, 5.0),
}
TEXT_VARIANTS = {
    "linear_probe": ({"name": "linear_probe"}, 0, 100.0),
    "partial": ({"name": "freeze_layers", "freeze_layers": 4}, 0, 2.0),
    "full": ({"name": "full"}, 0, 1.0),
    "lora": ({"name": "lora"}, 8, 20.0),
}


def _variant(base: ml_collections.ConfigDict, strategy: dict, rank: int, lr_mult: float,
             pretrained: str, targets: str) -> ml_collections.ConfigDict:
  c = common.copy(base)
  c.optim.strategy.update(strategy)
  c.optim.lr = base.optim.lr * lr_mult
  c.lora.rank, c.lora.targets = rank, targets
  c.init.pretrained_workdir = pretrained
  # Test on the best validation checkpoint, so no strategy is judged on a late dip.
  c.train.early_stopping.update(dict(metric="accuracy", mode="max", patience=0))
  return c


def get_config(arg: str = ""):
  args = common.parse_arg(arg, pretrained="", text=False, tiny=False, seed=0)
  stages = {}
  if args["text"]:
    source = minilm_text.get_config(common.tiny_arg(args))
    stages["minilm"] = source.stages.minilm
    base, ref, variants = source.stages.pretrained, "@minilm", TEXT_VARIANTS
    targets = r"backbone/layer_\d+/(attention/(query|key|value|out)|mlp/\w+)/kernel"
  else:
    base = quickstart.finetune_stage(args["seed"], "", 0, args["tiny"])  # the full recipe
    base.data.labels_per_class, base.data.label_fraction, base.data.label_fraction_seed = 0, 0.1, 0
    ref, variants = "@pretrain", VARIANTS
    targets = r"backbone/.*/kernel"
    if not args["pretrained"]:
      stages["pretrain"] = quickstart.pretrain_stage(args["seed"], tiny=args["tiny"])
  if args["pretrained"]:
    ref = os.path.abspath(args["pretrained"])
  for name, (strategy, rank, lr_mult) in variants.items():
    stages[name] = _variant(base, strategy, rank, lr_mult, ref, targets)
    if args["tiny"]:
      stages[name].optim.strategy.unfreeze_every = 2
  config = common.staged(**stages)
  config.report = "trainable_params"
  return config
