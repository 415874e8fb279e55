r"""Command line: run a config-file experiment.

  python -m ptft_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m ptft_jax.main --config=configs/digits.py:cnn --workdir=runs/x --config.optim.lr=3e-4

A user error prints one line and exits with status 2 (add --debug for the traceback).
SIGTERM saves the current step and exits 0; the same command resumes. A workdir
holding a run with a different config is refused unless --overwrite, which moves
the old run aside to `<workdir>.old-<timestamp>`.

Multi-host: run the same command on every host with --multihost (TPU VM slices,
SLURM; see launch/), or with --coordinator_address, --num_processes and
--process_id (or PTFT_COORDINATOR, PTFT_NUM_PROCESSES, PTFT_PROCESS_ID); see
ptft_jax/parallel/multihost.py.
"""

import re
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks for user errors.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "If --workdir holds a run with a different config, move it aside to "
    "<workdir>.old-<timestamp> and start fresh (never deletes).")
# Multi-host (see ptft_jax/parallel/multihost.py); each also reads PTFT_COORDINATOR,
# PTFT_NUM_PROCESSES, PTFT_PROCESS_ID, PTFT_MULTIHOST from the environment.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0, to join a multi-process run explicitly.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (explicit).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (explicit).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", False, "Call jax.distributed.initialize() with the cluster found automatically "
    "(TPU VM slices, SLURM, ...).")
# --mode=eval scores a checkpoint of --workdir (its config.json; no --config) on --split.
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"], "train, or eval a checkpoint.")
_SPLIT = flags.DEFINE_string("split", "test", "--mode=eval: the split to score.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "latest", "--mode=eval: latest, best or a step.")


def _main(argv):
  del argv
  from absl import logging as absl_logging

  from ptft_jax import train  # late import: flag errors should not wait for jax
  from ptft_jax.errors import ConfigError
  from ptft_jax.parallel import multihost

  # Orbax and TFDS log every file they touch at INFO and chat at WARNING; keep the
  # console to our lines (--debug shows everything).
  absl_logging.set_verbosity(absl_logging.INFO if _DEBUG.value else absl_logging.ERROR)
  if not _WORKDIR.value:
    raise ConfigError("--workdir is required (the directory for this run's outputs)")
  multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                       _MULTIHOST.value)  # before anything asks jax for devices
  if _MODE.value == "eval":
    from ptft_jax.inference import evaluate

    result, path = evaluate.evaluate_checkpoint(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
    scalars = "  ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float))
    print(f"{_SPLIT.value}: {scalars}\nwrote {path}", flush=True)
    return
  if _CONFIG.value is None:
    raise ConfigError("--config is required to train (--mode=eval reads the workdir's config)")
  train.run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)


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
  bad_value = re.match(r"flag --config\.(\S+?)=(.*?): (.*)", text)
  if bad_value:  # a value of the wrong type
    key, value, reason = bad_value.groups()
    return f"config.{key}: cannot use {value!r} ({reason.strip().splitlines()[0]})"
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


def _quiet_unraisable(hook):
  """Drops 'Event loop is closed' from TensorStore reads that finish after Orbax gave up
  on a corrupt checkpoint (the CheckpointError already said what is wrong)."""

  def quiet(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and "Event loop is closed" in str(unraisable.exc_value)):
      hook(unraisable)

  quiet.ptft_quiet = True
  return quiet


def main():
  """Entry point: parses flags; user errors become one line and exit status 2.

  A preempted run (SIGTERM) exits 0 after its checkpoint is saved.
  """
  from ptft_jax.errors import UserError
  from ptft_jax.train import preemption

  debug = "--debug" in sys.argv
  if not debug and not hasattr(sys.unraisablehook, "ptft_quiet"):
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
  # From here on a SIGTERM is a request to save and exit 0, even before training starts.
  with preemption.watch(early=True):
    try:
      app.run(_main, flags_parser=_parse_flags)
    except preemption.Preempted as e:
      print(e, flush=True)
      sys.exit(0)
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
