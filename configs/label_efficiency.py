r"""Label efficiency: accuracy against labeled images per class, pretrained vs scratch.

The quickstart's recipe (configs/quickstart.py) at several label budgets and seeds:
for every seed, one contrastive pretraining of the CNN on the digits' train images
(no labels), then for every budget k three classifiers on the same k labeled images
of each class (which images are labeled depends on the seed):
  pretrained  a linear probe: a new head on the frozen pretrained backbone (the quickstart's)
  finetuned   the pretrained backbone and a new head, all trained
  scratch     the same CNN from random initialization, all trained
Then `<workdir>/label_efficiency.png` (test accuracy, mean ± std over seeds, against
k) and a `label_efficiency` section in `summary.json` (validation and test
accuracy: mean, std and per seed).

  python -m ptft_jax.main --config=configs/label_efficiency.py --workdir=runs/label_efficiency

Expected (measured on this project's 2-core CPU, AMD EPYC with AVX-512; 1 min 39 s),
test accuracy, mean ± std over seeds 0-2:
  labels/class   pretrained (probe)   pretrained, fine-tuned   scratch
   1             0.764 ± 0.054        0.663 ± 0.029            0.648 ± 0.017
   2             0.840 ± 0.056        0.800 ± 0.050            0.767 ± 0.049
   5             0.895 ± 0.025        0.889 ± 0.024            0.879 ± 0.020
  10             0.926 ± 0.016        0.920 ± 0.003            0.906 ± 0.014
  25             0.946 ± 0.003        0.954 ± 0.008            0.949 ± 0.005
(docs/design.md, "Label efficiency and the quickstart recipe").

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
      pretrained = f"@pretrain_s{seed}"
      stages[f"pretrained_k{k}_s{seed}"] = quickstart.finetune_stage(
          seed, pretrained, k, args["tiny"], recipe="probe")
      stages[f"finetuned_k{k}_s{seed}"] = quickstart.finetune_stage(
          seed, pretrained, k, args["tiny"], recipe="full")
      stages[f"scratch_k{k}_s{seed}"] = quickstart.finetune_stage(seed, "", k, args["tiny"])
  config = common.staged(**stages)
  config.report = "label_efficiency"
  config.label_efficiency = dict(labels_per_class=budgets, seeds=seeds,
                                 variants=["pretrained", "finetuned", "scratch"],
                                 legend={"pretrained": "pretrained, linear probe",
                                         "finetuned": "pretrained, fine-tuned",
                                         "scratch": "from scratch"},
                                 stage="{variant}_k{k}_s{seed}")
  return config
