"""What tests share: the repository path, configs by name, tiny digits configs, flat trees."""

import importlib
import logging
import os

import jax
import ml_collections
import numpy as np

from ptft_jax import base_config
from ptft_jax.utils import flat_paths

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a child process with `devices` simulated CPU devices, and otherwise the
  session's flags (tests/conftest.py: its compile settings)."""
  others = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join([f"--xla_force_host_platform_device_count={devices}", *others])


class CompileLog(logging.Handler):
  """JAX's "Compiling jit(NAME) with global shapes ..." lines: `names` the jitted functions'
  names, `messages` the whole lines (they carry the shapes).

  Use as `with CompileLog() as compiles:`. It clears JAX's in-memory caches first (an
  earlier test in the process may have compiled the very same program, which JAX would then
  reuse without a line to count), turns `jax_log_compiles` on, and lets the "jax" logger
  pass warnings even when an earlier in-process CLI call set absl's verbosity (the root
  logger's level) to ERROR.
  """

  def __init__(self):
    super().__init__()
    self.names: list[str] = []
    self.messages: list[str] = []

  def emit(self, record):
    message = record.getMessage()
    if message.startswith("Compiling jit("):
      self.names.append(message[len("Compiling jit("):].split(")")[0])
      self.messages.append(message)

  def __enter__(self) -> "CompileLog":
    jax.clear_caches()
    logger = logging.getLogger("jax")
    self._restore = (logger.level, jax.config.jax_log_compiles)
    logger.setLevel(logging.WARNING)
    logger.addHandler(self)
    jax.config.update("jax_log_compiles", True)
    return self

  def __exit__(self, *exc_info) -> None:
    logger = logging.getLogger("jax")
    logger.removeHandler(self)
    logger.setLevel(self._restore[0])
    jax.config.update("jax_log_compiles", self._restore[1])


def load_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """`configs/<name>.py`'s get_config(arg), as `--config=configs/<name>.py:<arg>` would."""
  return importlib.import_module(f"configs.{name}").get_config(arg)


def tiny_config(steps: int = 8, every: int = 4, *, task: str = "classification", hidden=(32,),
                **overrides) -> ml_collections.ConfigDict:
  """A digits MLP run of `steps` steps that logs, evaluates and saves every `every` steps.

  `overrides`: `section__key=value` (e.g. `train__keep=1`, `optim__lr=0.05`) or a
  top-level key (`eval_splits=("validation",)`).
  """
  c = base_config()
  c.model.hidden_sizes = hidden
  c.task.name = task
  c.data.batch_size = 32
  c.data.eval_batch_size = 64
  c.optim.warmup_steps = 2
  c.train.steps = steps
  c.train.log_every = c.train.eval_every = c.train.checkpoint_every = every
  c.train.tensorboard = False
  for key, value in overrides.items():
    section, _, leaf = key.rpartition("__")
    (c[section] if section else c)[leaf] = value
  return c


def flat(tree) -> dict[str, np.ndarray]:
  """{"backbone/layer_0/kernel": host array} for every leaf of `tree`."""
  return {k: np.asarray(v) for k, v in flat_paths(tree).items()}


def count_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def write_tiny_hf_bert(path, vocab_lines: int | None = None) -> str:
  """A tiny Hugging Face BERT directory at `path` (config.json, model.safetensors of ones,
  vocab.txt of `vocab_lines` lines, default the vocabulary size of 12); returns it."""
  import pathlib

  from ptft_jax.convert.hf_bert import export_hf_bert
  from ptft_jax.models.transformer import BertEncoder, TransformerConfig

  config = TransformerConfig(vocab_size=12, hidden_size=8, num_layers=1, num_heads=2,
                             intermediate_size=16, max_position_embeddings=16)
  shapes = jax.eval_shape(lambda: BertEncoder(config).init(
      jax.random.key(0), {"input_ids": np.zeros((1, 1), np.int32)}, train=False))["params"]
  params = jax.tree_util.tree_map(lambda s: np.ones(s.shape, np.float32), shapes)
  path = pathlib.Path(path)
  export_hf_bert(config, params, path)
  lines = config.vocab_size if vocab_lines is None else vocab_lines
  (path / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(lines)))
  return str(path)
