r"""Command line: run a config-file experiment.

  python -m ptft_jax.main --config=configs/quickstart.py --workdir=runs/quickstart
  python -m ptft_jax.main --config=configs/digits.py:cnn --workdir=runs/x --config.optim.lr=3e-4

A user error prints one line and exits with status 2 (add --debug for the traceback).
SIGTERM saves the current step and exits 0; the same command resumes. A workdir
holding a run with a different config is refused unless --overwrite, which moves
the old run aside to `<workdir>.old-<timestamp>`. --workdir may be a gs://bucket/path
(Orbax writes the checkpoints there, ptft_jax its JSON files; gcsfs is needed).

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
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, logs and results (a path, or gs://bucket/path).")
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
  _check_remote_workdir(_WORKDIR.value)
  if multihost.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                          _MULTIHOST.value):  # before anything asks jax for devices
    from ptft_jax.train import preemption

    preemption.check_multihost()  # says in one line if SIGTERM cannot be served
  if _MODE.value == "eval":
    from ptft_jax.inference import evaluate

    result, path = evaluate.evaluate_checkpoint(_WORKDIR.value, _SPLIT.value, _CHECKPOINT.value)
    scalars = "  ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float))
    print(f"{_SPLIT.value}: {scalars}\nwrote {path}", flush=True)
    return
  if _CONFIG.value is None:
    raise ConfigError("--config is required to train (--mode=eval reads the workdir's config)")
  _check_task_keys(_CONFIG.value)
  train.run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)


def _check_remote_workdir(workdir: str):
  """A URL workdir: gs:// only (the one store tested, against a fake GCS), with gcsfs."""
  from ptft_jax.errors import ConfigError
  from ptft_jax.utils import REMOTE_SCHEMES, is_remote

  if not is_remote(workdir):
    return
  scheme = workdir.split("://", 1)[0]
  if scheme not in REMOTE_SCHEMES:
    raise ConfigError(f"--workdir={workdir}: {scheme}:// workdirs are not supported; use a "
                      "local or mounted path, or gs://bucket/path")
  if not re.match(r"^gs://[^/]+/[^/]", workdir):
    raise ConfigError(f"--workdir={workdir}: name a path inside the bucket, "
                      "gs://BUCKET/PATH (a run does not take a whole bucket)")
  try:
    import gcsfs  # noqa: F401 -- fsspec's gs:// file system, which ptft_jax's files go through
  except ImportError:
    raise ConfigError(f"--workdir={workdir}: a gs:// workdir needs the gcsfs package "
                      "(pip install -r requirements.txt)") from None


def _check_task_keys(config):
  """Every stage's task keys checked before the first stage trains (build_task checks
  one stage when it starts, which for a late stage is after the earlier ones ran)."""
  from ptft_jax import tasks

  stages = config.stages.items() if "stages" in config else [("", config)]
  for name, stage in stages:
    if "import_hf_bert" not in stage:
      tasks.check_task_keys(stage.task, f"config.stages.{name}.task" if name else "config.task")


def _one_line(e: BaseException) -> str:
  lines = [line for line in str(e).strip().splitlines() if line.strip()]
  return lines[0] if lines else type(e).__name__


def _parse_flags(argv):
  """absl parsing, with config-file and override errors turned into one line."""
  from ptft_jax.errors import ConfigError

  try:
    expanded, renamed = _expand_staged_overrides(argv)
  except ConfigError as e:
    raise _ConfigFailure(e) from None
  if expanded != list(argv):
    # config_flags reads the override names from sys.argv itself, not from `argv`.
    sys.argv = expanded
  try:
    parsed = flags.FLAGS(expanded)
    if _CONFIG.value is not None:  # --mode=eval needs none
      list(_CONFIG.value.keys())  # loads the file now, so its errors surface here
    return parsed
  except Exception as e:  # noqa: BLE001 -- every parse failure is a user error
    raise _ConfigFailure(ConfigError(_describe(e, argv, renamed))) from None


_OVERRIDE = re.compile(r"^(-{1,2})(no)?config\.([^=]+)(=.*)?$", re.DOTALL)
ALL_STAGES = "all_stages"


def _config_spec(argv) -> str | None:
  """The value of --config (path[:arg]) in `argv`, or None."""
  for i, arg in enumerate(argv[1:], 1):
    name, eq, value = arg.partition("=")
    if name in ("--config", "-config"):
      return value if eq else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _expand_staged_overrides(argv) -> tuple[list[str], dict[str, str]]:
  """`argv` with every `--config.all_stages.KEY[=VALUE]` made one
  `--config.stages.<stage>.KEY[=VALUE]` per trained stage, in place (so a later
  `--config.stages.<stage>.KEY` still wins); and {"stages.<stage>.KEY": "all_stages.KEY"}
  to name the user's flag in errors. Raises ConfigError for an override a staged config
  cannot take (a stage key written at the top level) or a bad `all_stages` key.
  """
  import ml_collections
  from ml_collections.config_flags import config_flags as cf

  from ptft_jax.config.keys import closest_key, has_key
  from ptft_jax.errors import ConfigError

  argv = list(argv)
  spec = _config_spec(argv)
  if spec is None or not any(_OVERRIDE.match(a) for a in argv[1:]):
    return argv, {}
  try:
    config = cf.ConfigFileFlagParser(name="config").parse(spec)
  except Exception:  # noqa: BLE001 -- absl's own parse reports a config file that fails
    return argv, {}
  if not isinstance(config, ml_collections.ConfigDict):  # e.g. a file not found, reported later
    return argv, {}
  staged = "stages" in config
  order = list(config.get("stage_order", ()) or config.stages) if staged else []
  trained = [s for s in order if "import_hf_bert" not in config.stages[s]]
  out, renamed, i = [argv[0]], {}, 1
  while i < len(argv):
    arg, i = argv[i], i + 1
    match = _OVERRIDE.match(arg)
    key = match.group(3) if match else ""
    if key == ALL_STAGES or key.startswith(ALL_STAGES + "."):
      dashes, no, _, value = match.groups()
      key = key[len(ALL_STAGES) + 1:]
      if not key:
        raise ConfigError(f"{arg}: name a key, e.g. --config.all_stages.optim.lr=0.1")
      if not staged:
        raise ConfigError(f"--config.all_stages.{key}: {spec} has no stages; "
                          f"write --config.{key}")
      have = [s for s in trained if has_key(config.stages[s], key)]
      if not have:
        guess = next(filter(None, (closest_key(config.stages[s], key) for s in trained)), "")
        raise ConfigError(f"unknown config key 'all_stages.{key}'"
                          + (f"; did you mean 'all_stages.{guess}'?" if guess else ""))
      missing = [s for s in trained if s not in have]
      if missing:
        raise ConfigError(
            f"--config.all_stages.{key}: stage{'s' * (len(missing) > 1)} {', '.join(missing)} "
            f"{'have' if len(missing) > 1 else 'has'} no {key}; write "
            + " ".join(f"--config.stages.{s}.{key}" for s in have))
      if value is None and i < len(argv) and not argv[i].startswith("-"):
        value, i = "=" + argv[i], i + 1  # `--config.all_stages.KEY VALUE`
      for s in trained:
        out.append(f"{dashes}{no or ''}config.stages.{s}.{key}{value or ''}")
        renamed[f"stages.{s}.{key}"] = f"{ALL_STAGES}.{key}"
      continue
    if match and staged and key.split(".")[0] not in config:
      raise ConfigError(_stage_key_hint(config, spec, order, trained, key))
    out.append(arg)
  return out, renamed


def _stage_key_hint(config, spec: str, order: list[str], trained: list[str], key: str) -> str:
  """What to write instead of `--config.KEY` on a staged config (a stage's key)."""
  from ptft_jax.config.keys import closest_key, has_key

  head = f"{spec} has stages {', '.join(order)}"
  have = [s for s in trained if has_key(config.stages[s], key)]
  if have and len(have) < len(trained):
    return (f"{head}: write --config.stages.{have[0] if len(have) == 1 else '<stage>'}.{key} "
            f"(only stage{'s' * (len(have) > 1)} {', '.join(have)} "
            f"{'have' if len(have) > 1 else 'has'} {key})")
  if have:
    return (f"{head}: write --config.stages.<stage>.{key} "
            f"(or --config.all_stages.{key}=... for every stage)")
  guess = next(filter(None, (closest_key(config.stages[s], key) for s in trained)), "")
  if not guess:
    return (f"{head}: no stage has {key!r}; write --config.stages.<stage>.KEY "
            "(or --config.all_stages.KEY=... for every stage)")
  return (_stage_key_hint(config, spec, order, trained, guess)
          + f"; no stage has {key!r}; did you mean {guess!r}?")


def _describe(e: BaseException, argv, renamed: dict[str, str] | None = None) -> str:
  text = str(e).replace("\\'", "'").replace("\\n", "\n")
  bad_value = re.match(r"flag --config\.(\S+?)=(.*?): (.*)", text)
  if bad_value:  # a value of the wrong type
    key, value, reason = bad_value.groups()
    key = (renamed or {}).get(key, key)  # the --config.all_stages flag the user wrote
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
