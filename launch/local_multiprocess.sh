#!/usr/bin/env bash
# Runs N processes of one experiment on this machine, joined by jax.distributed over a
# localhost coordinator, each with K simulated CPU devices: a multi-host run in miniature,
# for testing sharding, per-process data and multi-host checkpoints without a cluster.
#
#   launch/local_multiprocess.sh N --config=configs/digits.py --workdir=runs/mp [--config.x=y ...]
#
# Environment:
#   PTFT_LOCAL_DEVICES  K, CPU devices per process (default 4)
#   PTFT_PORT           coordinator port on localhost (default: a free one)
#   PYTHON              interpreter (default .venv/bin/python, else python3)
#   PTFT_LOG_DIR        where processes 1..N-1 write process_<i>.log (default: a temp dir)
#   PTFT_STOP_GRACE     seconds between SIGTERM and SIGKILL when stopping the others (10)
# Process 0 prints to this terminal. The first process to fail stops the others; the
# script exits with its status (0 when all succeed).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:?usage: launch/local_multiprocess.sh N --config=... --workdir=... [overrides...]}"
shift
K="${PTFT_LOCAL_DEVICES:-4}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
PORT="${PTFT_PORT:-$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}"
STOP_GRACE="${PTFT_STOP_GRACE:-10}"
LOG_DIR="${PTFT_LOG_DIR:-$(mktemp -d -t ptft_mp.XXXXXX)}"
mkdir -p "$LOG_DIR"
echo "local_multiprocess: $N processes x $K CPU devices, coordinator localhost:$PORT, logs of processes 1..$((N - 1)) in $LOG_DIR" >&2

run_process() {  # run_process INDEX: one process of the run, in the background
  exec env XLA_FLAGS="$OTHER_XLA_FLAGS --xla_force_host_platform_device_count=$K" JAX_PLATFORMS=cpu \
    PTFT_COORDINATOR="localhost:$PORT" PTFT_NUM_PROCESSES="$N" PTFT_PROCESS_ID="$1" \
    "$PYTHON" -m ptft_jax.main "${ARGS[@]}"
}
ARGS=("$@")
OTHER_XLA_FLAGS="$(echo "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')"
pids=()
for ((i = 0; i < N; i++)); do
  if ((i == 0)); then
    run_process 0 &
  else
    run_process "$i" > "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done

stop_all() {  # only the processes this script started: SIGTERM, then SIGKILL after a grace
  # period (a SIGTERM goes to JAX's preemption notifier, whose sync point a dead process
  # never reaches)
  local pid waited alive
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for ((waited = 0; waited < STOP_GRACE; waited++)); do
    alive=0
    for pid in "${pids[@]}"; do  # running, not a zombie waiting for this script
      if [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" =~ ^[^Z] ]]; then alive=1; fi
    done
    if ((alive == 0)); then return; fi
    sleep 1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

status=0
remaining=("${pids[@]}")
while ((${#remaining[@]} > 0)); do
  finished=""
  wait -n -p finished "${remaining[@]}" || status=$?
  remaining=("${remaining[@]/$finished}")
  remaining=(${remaining[@]})  # drop the emptied entry
  if ((status != 0)); then
    echo "local_multiprocess: a process failed (exit $status); stopping the others" >&2
    stop_all
    break
  fi
done
exit "$status"
