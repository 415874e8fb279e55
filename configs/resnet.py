r"""ResNet-18 / ResNet-50: SimCLR pretraining, frozen-backbone transfer, full fine-tuning.

Variants (`--config=configs/resnet.py:VARIANT,ARG=...`):
  imagenet_frozen   the seed's recipe on your image folder: ImageNet ResNet-50 weights
              (`init=`, imported with `python -m ptft_jax.convert vision`), backbone and
              BatchNorm frozen (running averages), GAP -> Dense(1024, ReLU) -> softmax,
              trained on `data=ROOT` (ROOT/train/<class>/*.jpg, optional validation/ or
              val/ and test/; without validation/ 10% of train is held out, stratified);
              the weights' preprocessing.json (mean/std, resize 256, crop 224) is used in
              training, evaluation and prediction. `unfreeze_top=1` adds a second stage
              (`<workdir>/top`) that continues from the first (`<workdir>/frozen`) with the
              top ResNet stage (stage4) trained at a tenth of the head's learning rate;
              its BatchNorms stay on their ImageNet running averages unless `tune_bn`.
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

  python -m ptft_jax.convert vision --src resnet50.safetensors --workdir runs/r50_imagenet
  python -m ptft_jax.main --config=configs/resnet.py:imagenet_frozen,init=runs/r50_imagenet,\
data=/data/flowers,unfreeze_top=1 --workdir=runs/flowers
  python -m ptft_jax.predict --workdir runs/flowers/top --input new_photos/ --output p.jsonl

Expected: not measured on this machine (CIFAR-10 is not prepared here, ImageNet weights
cannot be downloaded, and ResNet-50 SimCLR is far beyond a 2-core CPU). Look at
<workdir>/summary.json and each stage's eval_test.json. Offline, the tests run
`configs/resnet.py:tiny,dataset=digits` and `imagenet_frozen,tiny` with a random-init
ResNet-50 (width 4, one block per stage) saved as a pretrained workdir and the digits
written as a 32x32 PNG folder (`python -m ptft_jax.data.builders.digits_folder ROOT`):
it trains, evaluates and predicts class names; accuracy is meaningless there.

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
  data=ROOT         an image folder instead of a TFDS dataset (`config.data.source =
                    "folder"`, ptft_jax/data/image_folder.py), any variant
imagenet_frozen only:
  init=PATH         the pretrained workdir (model_config.json of a ResNet + weights, and its
                    preprocessing.json); a ptft_jax ResNet run works too
  unfreeze_top=K    add the second stage: the top K ResNet stages trained (default 0: none)
  steps=N, lr=X     first stage (default 2000 steps, lr 1e-3; the second stage: the same
                    steps, lr / 10 for the head and lr / 100 for the unfrozen stages)
  batch=N           global batch size (default 64)
  crop=N            the side the model sees (default: the init's preprocessing, else 224)
  bad_images=skip   skip unreadable / non-image files (counted) instead of stopping
  workers=N         Grain worker processes decoding images (default 0: the training process)

BatchNorm: `config.model.batch_norm="auto"` makes each BatchNorm follow its
parameters: frozen scale and bias -> running averages and unchanged statistics;
trainable -> batch statistics. Set "frozen" or "train" to force one behaviour.
"""

import json
import os

import ml_collections

from configs import common
from ptft_jax.data import image_folder

VARIANTS = ("recipe", "simclr", "linear", "finetune", "imagenet_frozen")
IMAGENET_AUGMENT = dict(crop_scale=0.35, flip=True)  # on the device, after the centre crop
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


def _folder_data(args: dict, c: ml_collections.ConfigDict) -> None:
  """`data=ROOT`: the image folder replaces the TFDS dataset (batch sizes kept)."""
  if args["data"]:
    c.data = image_folder.folder_config(
        args["data"], batch_size=c.data.batch_size, eval_batch_size=c.data.eval_batch_size,
        crop=args.get("crop", 0), bad_images=args.get("bad_images", "stop"),
        worker_count=args.get("workers", 0))
    if image_folder.split_location(args["data"], "test") is None and os.path.isdir(
        args["data"]):
      c.eval_splits = ("validation",)  # no test/ in the folder: evaluate what exists


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


def pretrained_model(workdir: str) -> ml_collections.ConfigDict:
  """`config.model` of a pretrained ResNet workdir: an import's model_config.json or a run's."""
  for name, pick in (("model_config.json", lambda d: d), ("config.json", lambda d: d.get("model"))):
    path = os.path.join(workdir, name)
    if os.path.isfile(path):
      with open(path) as f:
        model = pick(json.load(f))
      if not isinstance(model, dict) or model.get("name") != "resnet":
        raise ValueError(f"init={workdir}: {name} is not a ResNet's (model name "
                         f"{(model or {}).get('name')!r}); import ResNet weights with "
                         "`python -m ptft_jax.convert vision`")
      return ml_collections.ConfigDict(model)
  raise ValueError(f"init={workdir}: neither model_config.json (imported weights) nor "
                   "config.json (a ptft_jax run) is there")


def imagenet_frozen(args: dict) -> ml_collections.ConfigDict:
  """Frozen ImageNet ResNet + BatchNorm, GAP -> Dense(1024, ReLU) -> softmax; optional stage 2."""
  if not args["init"] or not args["data"]:
    raise ValueError("configs/resnet.py:imagenet_frozen needs init=<pretrained workdir> "
                     "(python -m ptft_jax.convert vision) and data=<image folder>")
  tiny = args["tiny"]
  c = common.image_stage("digits", seed=args["seed"], tiny=tiny, warmup_steps=2 if tiny else 100,
                         eval_batch_size=128)
  c.data.batch_size = args["batch"] or (8 if tiny else 64)
  _folder_data(args, c)
  c.model = pretrained_model(args["init"])
  c.model.batch_norm = "auto"  # frozen scale and bias: running averages, statistics unchanged
  c.task.head_hidden_sizes = (32,) if tiny else (1024,)
  c.task.augment = IMAGENET_AUGMENT
  c.optim.groups = [(r"backbone/.*", {"frozen": True})]
  c.optim.lr = args["lr"] or 1e-3
  steps = args["steps"] or (4 if tiny else 2000)
  c.train.steps = steps
  c.train.eval_every = steps if tiny else 500
  c.train.checkpoint_every = 2 if tiny else 500
  c.init.pretrained_workdir = args["init"]
  k = args["unfreeze_top"]
  if not k:
    return c
  stages = len(c.model.get("stage_sizes", ()) or ()) or 4
  if not 0 < k <= stages:
    raise ValueError(f"unfreeze_top={k}: choose 1..{stages} (the top ResNet stages)")
  top = "|".join(str(s) for s in range(stages - k + 1, stages + 1))
  t = common.copy(c)
  t.init.pretrained_workdir = "@frozen"
  t.init.load = [r"backbone/.*", r"heads/.*"]  # the head trained in the first stage too
  t.init.skip = []
  norms = [] if args["tune_bn"] else [
      (rf"backbone/stage({top})_block\d+/(bn\d+|proj_bn)/.*", {"frozen": True})]
  t.optim.groups = [*norms, (rf"backbone/stage({top})_.*", {"lr_mult": 0.1}),
                    (r"backbone/.*", {"frozen": True})]
  t.optim.lr = c.optim.lr / 10
  return common.staged(frozen=c, top=t)


def get_config(arg: str = ""):
  parts = [p for p in (arg or "").split(",") if p]
  variant = parts.pop(0) if parts and parts[0] in VARIANTS else "recipe"
  args = common.parse_arg(",".join(parts), depth=0, width=0, dataset="cifar10", imagenet_stem=False,
                   tune_bn=False, label_fraction=1.0, pretrained="", tiny=False, seed=0, data="",
                   init="", unfreeze_top=0, steps=0, lr=0.0, batch=0, crop=0, bad_images="stop",
                   workers=0)
  if args["depth"] not in (0, 18, 34, 50, 101, 152):
    raise ValueError(f"depth={args['depth']}: choose 18, 34, 50, 101 or 152")
  only = [k for k in ("init", "unfreeze_top", "steps", "lr", "batch") if args[k]]
  if variant != "imagenet_frozen" and only:
    raise ValueError(f"{', '.join(only)}: only for configs/resnet.py:imagenet_frozen")
  if variant == "imagenet_frozen":
    return imagenet_frozen(args)
  if variant == "simclr":
    return _with_folder(args, simclr(args))
  if variant == "linear":
    return _with_folder(args, linear(args, args["pretrained"]))
  if variant == "finetune":
    return _with_folder(args, finetune(args, args["pretrained"]))
  return common.staged(pretrain=_with_folder(args, simclr(args)),
                       linear=_with_folder(args, linear(args, "@pretrain")),
                       finetune=_with_folder(args, finetune(args, "@pretrain")))


def _with_folder(args: dict, c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  label_fraction = c.data.get("label_fraction", 1.0)
  _folder_data(args, c)
  c.data.label_fraction = label_fraction
  return c
