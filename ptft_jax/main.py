r"""Command line: run a config-file experiment.

  python -m ptft_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m ptft_jax.main --config=configs/digits.py:cnn --workdir=runs/x --config.optim.lr=3e-4

A user error prints one line and exits with status 2 (add --debug for the traceback).
"""

import re
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks for user errors.")
# --mode=eval scores a checkpoint of --workdir (its config.json; no --config) on --split.
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train, or eval a checkpoint.")
_SPLIT = flags.DEFINE_string("split", "test", "--mode=eval: the split to score.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "--mode=eval: latest, best or a step.")


def _main(argv):
  del argv
  from absl import logging as absl_logging

  from ptft_jax import train  # late import: flag errors should not wait for jax
  from ptft_jax.errors import ConfigError

  # Orbax and TFDS log every file they touch at INFO; keep the console to our lines.
  absl_logging.set_verbosity(absl_logging.INFO if _DEBUG.value else absl_logging.WARNING)
  if not _WORKDIR.value:
    raise ConfigError("--workdir is required (the directory for this run's outputs)")
  if _MODE.value == "eval":
    from ptft_jax import evaluate

    result, path = evaluate.evaluate_checkpoint(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
    scalars = "  ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float))
    print(f"{_SPLIT.value}: {scalars}\nwrote {path}", flush=True)
    return
  if _CONFIG.value is None:
    raise ConfigError("--config is required to train (--mode=eval reads the workdir's config)")
  train.run(_CONFIG.value, _WORKDIR.value)


def _one_line(e: BaseException) -> str:
  lines = [line for line in str(e).strip().splitlines() if line.strip()]
  return lines[0] if lines else type(e).__name__


def _parse_flags(argv):
  """absl parsing, with config-file and override errors turned into one line."""
  from ptft_jax.errors import ConfigError

  try:
    parsed = flags.FLAGS(argv)
    if _CONFIG.value is not None:  # --mode=eval needs none
      list(_CONFIG.value.keys())  # loads the file now, so its errors surface here
    return parsed
  except Exception as e:  # noqa: BLE001 -- every parse failure is a user error
    raise _ConfigFailure(ConfigError(_describe(e, argv))) from None


def _describe(e: BaseException, argv) -> str:
  text = str(e).replace("\\'", "'").replace("\\n", "\n")
  hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
  if hint:  # ml_collections' suggestion for one component of an override key
    right, wrong = hint.groups()
    for arg in argv[1:]:
      key = arg[len("--config."):].split("=", 1)[0] if arg.startswith("--config.") else ""
      parts = key.split(".")
      if wrong in parts:
        fixed = ".".join(right if p == wrong else p for p in parts)
        return f"unknown config key {key!r}; did you mean {fixed!r}?"
  if "Failed loading config file" in text:
    path = re.search(r"Attempted \[.*?\]:\s*(\S+)", text)
    reason = text.strip().splitlines()[-1].strip()
    return f"--config: cannot load {path.group(1) if path else 'the config file'}: {reason}"
  if "Error whilst parsing config file" in text:  # get_config raised: show its last line
    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), "")
    return f"--config={spec}: {text.strip().splitlines()[-1].strip()}"
  return _one_line(e)


class _ConfigFailure(Exception):
  def __init__(self, error):
    super().__init__(str(error))
    self.error = error


def main():
  """Entry point: parses flags; user errors become one line and exit status 2."""
  from ptft_jax.errors import UserError

  debug = "--debug" in sys.argv
  try:
    app.run(_main, flags_parser=_parse_flags)
  except _ConfigFailure as e:
    if debug:
      raise e.error from e.__cause__
    print(f"error: {e.error}", file=sys.stderr)
    sys.exit(2)
  except UserError as e:
    if debug:
      raise
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
