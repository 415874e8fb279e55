"""Shared config defaults. Config files in configs/ start from `base_config()`."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Every key a run reads, with defaults; config files override what they need."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.dataset = "digits"
  c.data.data_dir = ""  # "" -> $PTFT_DATA_DIR or ~/.cache/ptft_jax/datasets
  c.data.train_split = "train"
  c.data.batch_size = 64  # global, over all processes and devices
  c.data.eval_batch_size = 128
  c.data.label_fraction = 1.0  # < 1: a stratified subset of the train labels
  c.data.label_fraction_seed = 0
  c.data.labels_per_class = 0  # > 0: exactly this many train labels per class (image data)
  c.data.worker_count = 0  # Grain processes decoding records (0: the training process)
  c.data.validation_split = "validation"  # e.g. "train[90%:]" for datasets without one
  c.data.test_split = "test"
  # Image folders (`--config.data.source=folder --config.data.root=DIR` on any image config;
  # ptft_jax/data/image_folder.py): class folders or <split>.csv/.jsonl under `root`.
  c.data.source = "tfds"  # tfds | folder
  c.data.root = ""
  c.data.holdout = 0.1  # folder without a validation split: stratified fraction of train
  c.data.holdout_seed = 0
  c.data.bad_images = "stop"  # stop | skip unreadable files
  # Image preprocessing over the pretrained workdir's preprocessing.json (empty / 0: inherit;
  # a folder without either: resize 256, crop 224).
  c.data.preprocessing = ml_collections.ConfigDict(dict(
      mean=(), std=(), resize=0, crop=0, interpolation=""))

  c.model = ml_collections.ConfigDict()
  c.model.name = "mlp"
  c.model.hidden_sizes = (256, 128)
  c.model.dropout_rate = 0.0

  c.task = ml_collections.ConfigDict()
  c.task.name = "classification"
  c.task.label_smoothing = 0.0
  c.task.head_hidden_sizes = ()
  c.task.head_dropout_rate = 0.0
  c.task.mixup_alpha = 0.0  # classification on images: > 0 mixes examples (soft labels)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # adamw | sgd
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.optim.decay = "cosine"  # cosine | linear | constant
  c.optim.end_lr_factor = 0.0
  c.optim.weight_decay = 1e-4
  c.optim.weight_decay_mask = r".*/kernel"  # fullmatch on the param path
  c.optim.grad_clip_norm = 1.0  # 0 disables
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.momentum = 0.9  # sgd only
  c.optim.nesterov = False
  # Ordered (regex, settings) parameter groups; first fullmatch wins. Settings:
  # frozen, lr, lr_mult, weight_decay, schedule (cosine | linear | constant),
  # unfreeze_at (step), name. Example: [("backbone/.*", {"frozen": True})]
  c.optim.groups = []
  # A named fine-tuning preset that adds groups after config.optim.groups (see
  # ptft_jax/optim/strategies.py): "" | full | linear_probe | freeze_layers | layer_decay
  # | gradual_unfreeze | discriminative | lora. The other keys are its settings.
  c.optim.strategy = ml_collections.ConfigDict(dict(
      name="",
      freeze_layers=1,  # freeze_layers: embeddings + this many layers from the input
      layer_decay=0.75,  # layer_decay: lr * layer_decay ** depth (heads depth 0)
      unfreeze_every=100,  # gradual_unfreeze: one more layer from the top every N steps
      backbone_lr_mult=0.1,  # discriminative: backbone lr = lr * this
  ))
  c.optim.accumulation_steps = 1  # microbatches per step (must divide data.batch_size)
  c.optim.ema_decay = 0.0  # > 0: EMA of the trainable params, used for evaluation and best/

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.log_every = 50
  c.train.eval_every = 200  # 0 disables periodic evaluation
  c.train.checkpoint_every = 500
  c.train.keep = 3
  c.train.tensorboard = True
  # A NaN / Inf loss or gradient: "stop" ends the run naming the step (nothing
  # non-finite is ever saved); "skip" keeps the old state for that step, up to
  # max_consecutive_skips steps in a row, then stops.
  c.train.nan_policy = "stop"
  # GiB of one device, checked against the memory estimate before compiling
  # (parallel/memory.py); 0: the backend's own limit (CPUs report none: no check).
  c.train.device_memory_gib = 0.0
  c.train.max_consecutive_skips = 10
  c.train.compute_dtype = "float32"  # "bfloat16": bf16 compute, float32 params + optimizer
  # Early stopping on a validation metric ("" = off). patience: evaluations without
  # improvement before stopping (0 = never stop, only keep the best). keep_best
  # saves the best params to <workdir>/best (apart from the latest checkpoints);
  # restore_best runs the final evaluation on them.
  c.train.early_stopping = ml_collections.ConfigDict(dict(
      metric="", mode="max", patience=0, min_delta=0.0, keep_best=True, restore_best=True))

  c.init = ml_collections.ConfigDict()
  c.init.pretrained_workdir = ""  # a ptft_jax run (or converted model) to load from
  c.init.load = ["backbone/.*"]  # fullmatch patterns of params to load
  c.init.skip = ["heads/.*"]  # ...and to leave freshly initialized

  # LoRA adapters (ptft_jax/optim/lora.py): rank 0 = off. Pair with optim.strategy.name="lora"
  # to freeze the base backbone; targets is a fullmatch regex over kernel paths.
  c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=r"backbone/.*/kernel"))

  # Device mesh (ptft_jax/parallel/sharding.py): sizes within a slice, one may be -1 (the rest);
  # dcn_* split the slices of a multi-slice TPU (one may be -1).
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1,
                                      "dcn_data": -1, "dcn_fsdp": 1, "dcn_tensor": 1})
  # Parameter sharding: logical axis -> mesh axis ("" = not split); param_axes are extra
  # (path regex, logical axes) rules tried before sharding.PARAM_AXES.
  c.sharding = ml_collections.ConfigDict(dict(
      rules=ml_collections.ConfigDict(dict(
          embed="fsdp", mlp="tensor", heads="tensor", vocab="tensor", conv_in="fsdp",
          conv_out="tensor")),
      param_axes=[]))
  c.eval_splits = ("validation", "test")
  # Keys that may change when resuming in the same workdir (logging cadence and
  # the step budget); any other change is refused, so two experiments never mix.
  c.resumable_keys = ("train.steps", "train.log_every", "train.eval_every",
                      "train.checkpoint_every", "train.keep", "train.tensorboard",
                      "train.nan_policy", "train.max_consecutive_skips",
                      "train.device_memory_gib")
  return c
