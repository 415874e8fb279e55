"""Joining the processes of a multi-host run: `jax.distributed.initialize`, before any jax use.

Every host (TPU VM worker, SLURM task, local test process) runs the same
command; `initialize` makes them one JAX program with `jax.process_count()`
processes. Three ways in, first match wins:

  explicit    --coordinator_address=host:port --num_processes=N --process_id=i, or the
              environment PTFT_COORDINATOR / PTFT_NUM_PROCESSES / PTFT_PROCESS_ID
              (launch/local_multiprocess.sh uses these)
  automatic   --multihost or PTFT_MULTIHOST=1: JAX finds the coordinator itself
              (TPU VM slices, SLURM, Open MPI, GKE); a SLURM job with more than one
              task (SLURM_NTASKS > 1) joins automatically too, so N tasks never run
              N independent copies of the same experiment into one workdir
  none        a single-process run (the default)

PTFT_LOCAL_DEVICE_IDS="0,1,2,3" limits a process to those local GPUs. Needed for
one process per node under SLURM, where JAX otherwise gives each task only the
GPU at its SLURM_LOCALID (right for one process per GPU).

After it, each process reads only its share of the data (`data.pipeline` shards
by `jax.process_index()`), batches become global arrays with
`jax.make_array_from_process_local_data`, only process 0 writes logs and JSON,
and every process takes part in each Orbax save and restore.
"""

import os
import sys

import jax

from ptft_jax.errors import ConfigError

ENV_COORDINATOR = "PTFT_COORDINATOR"
ENV_NUM_PROCESSES = "PTFT_NUM_PROCESSES"
ENV_PROCESS_ID = "PTFT_PROCESS_ID"
ENV_MULTIHOST = "PTFT_MULTIHOST"
ENV_LOCAL_DEVICE_IDS = "PTFT_LOCAL_DEVICE_IDS"


def _int_env(name: str, value: int | None) -> int | None:
  if value is not None and value >= 0:
    return value
  raw = os.environ.get(name, "")
  if not raw:
    return None
  try:
    return int(raw)
  except ValueError:
    raise ConfigError(f"environment {name}={raw!r} is not an integer") from None


def settings(coordinator_address: str = "", num_processes: int | None = None,
             process_id: int | None = None, multihost: bool = False) -> dict | None:
  """The arguments for `jax.distributed.initialize` (None: a single-process run).

  Flags win over the PTFT_* environment. Raises ConfigError on an incomplete
  explicit setting (a coordinator without the process count or id, or an id
  out of range).
  """
  coordinator = coordinator_address or os.environ.get(ENV_COORDINATOR, "")
  count = _int_env(ENV_NUM_PROCESSES, num_processes)
  index = _int_env(ENV_PROCESS_ID, process_id)
  extra = {}
  if os.environ.get(ENV_LOCAL_DEVICE_IDS, ""):
    raw = os.environ[ENV_LOCAL_DEVICE_IDS]
    try:
      extra["local_device_ids"] = [int(i) for i in raw.split(",")]
    except ValueError:
      raise ConfigError(f"environment {ENV_LOCAL_DEVICE_IDS}={raw!r}: expected comma-separated "
                        "device numbers like 0,1,2,3") from None
  if coordinator:
    if count is None or index is None:
      raise ConfigError(
          f"--coordinator_address={coordinator} also needs --num_processes and --process_id "
          f"(or {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID})")
    if not 0 <= index < count:
      raise ConfigError(f"--process_id={index} must be in [0, --num_processes={count})")
    return {"coordinator_address": coordinator, "num_processes": count, "process_id": index,
            **extra}
  if count is not None or index is not None:
    raise ConfigError(
        f"--num_processes / --process_id need --coordinator_address (or {ENV_COORDINATOR}); "
        "or pass --multihost to let JAX find the cluster")
  auto = multihost or os.environ.get(ENV_MULTIHOST, "") not in ("", "0")
  if auto or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1:
    return extra
  return None


def initialize(coordinator_address: str = "", num_processes: int | None = None,
               process_id: int | None = None, multihost: bool = False) -> bool:
  """Calls `jax.distributed.initialize` as `settings` says; returns whether it did.

  Call it first, before anything asks JAX for devices. The caller then checks
  that JAX's preemption sync point can run (`train.preemption.check_multihost`,
  which warns in one line if not; ptft_jax/main.py does both).
  """
  kwargs = settings(coordinator_address, num_processes, process_id, multihost)
  if kwargs is None:
    return False
  _exit_on_uncaught_error()
  jax.distributed.initialize(**kwargs)
  return True


def _exit_on_uncaught_error():
  """An uncaught exception prints its traceback, then ends this process at once (status 1).

  Otherwise the interpreter's exit would wait in `jax.distributed.shutdown`'s barrier
  (up to 5 minutes) for processes that are themselves blocked in a collective waiting
  for this one; the launcher (local_multiprocess.sh, srun --kill-on-bad-exit, ...) sees
  the exit and stops the others.
  """
  previous = sys.excepthook

  def hook(kind, value, traceback):
    previous(kind, value, traceback)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)

  sys.excepthook = hook
