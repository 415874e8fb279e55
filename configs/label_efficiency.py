r"""Label efficiency: accuracy against labeled images per class, pretrained vs scratch.

The quickstart's recipe (configs/quickstart.py) at several label budgets and seeds:
for every seed, one contrastive pretraining of the CNN on the digits' train images
(no labels), then for every budget k a fine-tuning of that backbone and a training
from scratch on the same k labeled images of each class (which images are labeled
depends on the seed). Then `<workdir>/label_efficiency.png` (test accuracy, mean ±
std over seeds, against k) and a `label_efficiency` section in `summary.json`
(validation and test accuracy, mean, std and per seed).

  python -m ptft_jax.main --config=configs/label_efficiency.py --workdir=runs/label_efficiency

Expected: see docs/design.md, "Label efficiency" (measured table and wall time).

Arguments (`configs/label_efficiency.py:labels=1-5,seeds=2,tiny`):
  labels=K-K-...  labeled images per class (default 1-2-5-10-25)
  seeds=N         seeds 0 .. N-1 (default 3)
  tiny            a few steps per stage, for tests
"""

from configs import common, quickstart


def get_config(arg: str = ""):
  args = common.parse_arg(arg, labels="1-2-5-10-25", seeds=3, tiny=False)
  budgets = [int(k) for k in args["labels"].split("-")]
  seeds = list(range(args["seeds"]))
  stages = {}
  for seed in seeds:
    stages[f"pretrain_s{seed}"] = quickstart.pretrain_stage(seed, tiny=args["tiny"])
    for k in budgets:
      stages[f"pretrained_k{k}_s{seed}"] = quickstart.finetune_stage(
          seed, f"@pretrain_s{seed}", k, args["tiny"])
      stages[f"scratch_k{k}_s{seed}"] = quickstart.finetune_stage(seed, "", k, args["tiny"])
  config = common.staged(**stages)
  config.report = "label_efficiency"
  config.label_efficiency = dict(labels_per_class=budgets, seeds=seeds,
                                 stage="{variant}_k{k}_s{seed}")
  return config
