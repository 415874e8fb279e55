r"""ResNet-18 / ResNet-50: SimCLR pretraining, frozen-backbone transfer, full fine-tuning.

Variants (`--config=configs/resnet.py:VARIANT,ARG=...`):
  recipe    (default) three stages, each in `<workdir>/<stage>`:
              pretrain  SimCLR on the train images, no labels (random resized crop,
                        flip, colour distortion, grayscale; NT-Xent, temperature 0.5)
              linear    frozen backbone (BatchNorm on its running averages, statistics
                        unchanged) -> global average pool -> Dense(1024, ReLU) -> softmax
              finetune  everything trained from the pretrained weights, BatchNorm too
  simclr    the pretrain stage alone
  linear    the linear stage alone, from `pretrained=WORKDIR`
  finetune  the finetune stage alone, from `pretrained=WORKDIR` (random init when empty)

  python -m ptft_jax.main --config=configs/resnet.py --workdir=runs/resnet50_cifar10
  python -m ptft_jax.main --config=configs/resnet.py:linear,pretrained=runs/r50/pretrain \
      --workdir=runs/r50_linear

Expected: not measured on this machine (CIFAR-10 is not prepared here, and ResNet-50
SimCLR is far beyond a 2-core CPU). Look at <workdir>/summary.json and each stage's
eval_test.json. Offline, the tests run `configs/resnet.py:tiny,dataset=digits`.

Arguments:
  depth=18|50       ResNet depth (default 50; 18 with tiny)
  width=N           first-stage channels (default 64; 4 with tiny)
  dataset=NAME      TFDS image dataset in the data dir (default cifar10; digits offline)
  imagenet_stem     the 7x7/2 conv + max-pool stem (default: the 3x3/1 stem for small images)
  tune_bn           linear: train the BatchNorm scales/biases (and so their statistics)
                    while the convolutions stay frozen
  label_fraction=F  fine-tune on this stratified fraction of the labels
  pretrained=PATH   workdir to load the backbone from (linear / finetune variants)
  tiny              a few steps, small batches, width 4, two stages of one block (tests)
  seed=N            the seed of every stage

BatchNorm: `config.model.batch_norm="auto"` makes each BatchNorm follow its
parameters: frozen scale and bias -> running averages and unchanged statistics;
trainable -> batch statistics. Set "frozen" or "train" to force one behaviour.
"""

import ml_collections

from configs import common

VARIANTS = ("recipe", "simclr", "linear", "finetune")
SIMCLR_AUGMENT = dict(crop_scale=0.08, flip=True, color=0.5, color_prob=0.8, grayscale=0.2)
FINETUNE_AUGMENT = dict(flip=True, max_shift=4)


def _common(args: dict) -> ml_collections.ConfigDict:
  tiny = args["tiny"]
  c = common.image_stage(args["dataset"], seed=args["seed"], tiny=tiny,
                         warmup_steps=2 if tiny else 500, eval_batch_size=500)
  c.model = ml_collections.ConfigDict(dict(
      name="resnet", depth=args["depth"] or (18 if tiny else 50),
      width=args["width"] or (4 if tiny else 64), small_input=not args["imagenet_stem"],
      stage_sizes=(1, 1) if tiny else (), batch_norm="auto", dtype="float32"))
  return c


def _steps(args: dict, n: int) -> int:
  return 3 if args["tiny"] else n


def simclr(args: dict) -> ml_collections.ConfigDict:
  c = _common(args)
  c.data.batch_size = 16 if args["tiny"] else 256
  c.task = ml_collections.ConfigDict(dict(
      name="contrastive", temperature=0.5, projection_hidden=2048, projection_dim=128,
      augment=SIMCLR_AUGMENT))
  if args["tiny"]:
    c.task.projection_hidden = 32
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-6
  c.train.steps = _steps(args, 40000)
  c.train.eval_every = _steps(args, 5000)
  c.eval_splits = ("validation",)
  return c


def linear(args: dict, pretrained: str) -> ml_collections.ConfigDict:
  """Frozen backbone, GAP -> Dense(1024, ReLU) -> softmax; BatchNorm frozen unless tune_bn."""
  c = _common(args)
  c.data.batch_size = 16 if args["tiny"] else 256
  c.data.label_fraction = args["label_fraction"]
  c.task.head_hidden_sizes = (1024,) if not args["tiny"] else (32,)
  c.task.augment = FINETUNE_AUGMENT
  frozen = r"backbone/(?!.*bn).*" if args["tune_bn"] else r"backbone/.*"
  c.optim.groups = [(frozen, {"frozen": True})]
  c.optim.lr = 1e-3
  c.train.steps = _steps(args, 10000)
  c.train.eval_every = _steps(args, 1000)
  c.init.pretrained_workdir = pretrained
  return c


def finetune(args: dict, pretrained: str) -> ml_collections.ConfigDict:
  """Every parameter trained, BatchNorm included (batch statistics, updated averages)."""
  c = _common(args)
  c.data.batch_size = 16 if args["tiny"] else 128
  c.data.label_fraction = args["label_fraction"]
  c.task.augment = FINETUNE_AUGMENT
  c.task.head_hidden_sizes = (1024,) if not args["tiny"] else (32,)
  c.optim.lr = 1e-4
  c.train.steps = _steps(args, 10000)
  c.train.eval_every = _steps(args, 1000)
  c.init.pretrained_workdir = pretrained
  return c


def get_config(arg: str = ""):
  parts = [p for p in (arg or "").split(",") if p]
  variant = parts.pop(0) if parts and parts[0] in VARIANTS else "recipe"
  args = common.parse_arg(",".join(parts), depth=0, width=0, dataset="cifar10", imagenet_stem=False,
                   tune_bn=False, label_fraction=1.0, pretrained="", tiny=False, seed=0)
  if args["depth"] not in (0, 18, 34, 50, 101, 152):
    raise ValueError(f"depth={args['depth']}: choose 18, 34, 50, 101 or 152")
  if variant == "simclr":
    return simclr(args)
  if variant == "linear":
    return linear(args, args["pretrained"])
  if variant == "finetune":
    return finetune(args, args["pretrained"])
  return common.staged(pretrain=simclr(args), linear=linear(args, "@pretrain"),
                       finetune=finetune(args, "@pretrain"))
