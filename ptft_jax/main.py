r"""Command line: run a config-file experiment.

  python -m ptft_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m ptft_jax.main --config=configs/digits.py:cnn --workdir=runs/x --config.optim.lr=3e-4

A user error prints one line and exits with status 2 (add --debug for the traceback).
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks for user errors.")


def _main(argv):
  del argv
  from absl import logging as absl_logging

  from ptft_jax import train  # late import: flag errors should not wait for jax

  # Orbax and TFDS log every file they touch at INFO; keep the console to our lines.
  absl_logging.set_verbosity(absl_logging.INFO if _DEBUG.value else absl_logging.WARNING)

  if not _WORKDIR.value:
    raise SystemExit("error: --workdir is required")
  train.run(_CONFIG.value, _WORKDIR.value)


def _one_line(e: BaseException) -> str:
  msg = str(e).strip().splitlines()
  return msg[0] if msg else type(e).__name__


def main():
  """Entry point: parses flags, turns user errors into one line and exit status 2."""
  from ptft_jax.errors import UserError

  debug = "--debug" in sys.argv
  try:
    app.run(_main, flags_parser=_parse_flags)
  except UserError as e:
    if debug:
      raise
    print(f"error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv):
  """absl parsing with one-line errors that name the key and suggest the right one."""
  from ptft_jax.errors import ConfigError

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    msg = _one_line(e)
    key = _unknown_override(argv)
    if key:
      msg = f"unknown config key {key!r}{_suggestion(argv, key)}"
    raise_or_exit(ConfigError(msg))
  except Exception as e:  # config file import / get_config errors
    raise_or_exit(ConfigError(f"--config: {_one_line(e)}"))


def raise_or_exit(e: Exception):
  if "--debug" in sys.argv:
    raise e
  print(f"error: {e}", file=sys.stderr)
  sys.exit(2)


def _unknown_override(argv) -> str | None:
  for arg in argv[1:]:
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in _known_override_keys(argv):
        return key
  return None


def _load_config(argv):
  for arg in argv[1:]:
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
      path, _, arg_str = spec.partition(":")
      if not os.path.exists(path):
        return None
      module = config_flags.config_path_and_args if False else None  # noqa: F841
      import importlib.util

      spec_ = importlib.util.spec_from_file_location("_cfg", path)
      mod = importlib.util.module_from_spec(spec_)
      spec_.loader.exec_module(mod)
      return mod.get_config(arg_str) if arg_str else mod.get_config()
  return None


def _known_override_keys(argv) -> set[str]:
  from ptft_jax.config_utils import _flat_keys

  config = _load_config(argv)
  return set(_flat_keys(config)) if config is not None else set()


def _suggestion(argv, key: str) -> str:
  from ptft_jax.config_utils import suggest_key

  config = _load_config(argv)
  return suggest_key(config, key) if config is not None else ""


if __name__ == "__main__":
  main()
