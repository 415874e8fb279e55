r"""Supervised training on the embedded handwritten digits (or MNIST / CIFAR-10 by name).

Variants (`--config=configs/digits.py:VARIANT`): mlp (default), cnn.

  python -m ptft_jax.main --config=configs/digits.py:cnn --workdir=runs/digits_cnn

Expected: not measured on this machine. 600 steps of batch 64 on 1,257 images;
look at <workdir>/eval_test.json (test accuracy, macro-F1) and metrics.jsonl.
For measured digits results see configs/quickstart.py.
"""

from configs import common


def get_config(arg: str = "mlp"):
  c = common.base_config()
  if arg == "cnn":
    c.model.name = "cnn"
    del c.model["hidden_sizes"]
    c.model.channels = (32, 64)
    c.model.dense_sizes = (128,)
  elif arg != "mlp":
    raise ValueError(f"unknown variant {arg!r}; choose mlp or cnn")
  c.train.steps = 600
  c.train.eval_every = 100
  c.train.log_every = 50
  c.train.checkpoint_every = 300
  return c
