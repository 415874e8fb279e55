#!/usr/bin/env bash
# Runs ptft_jax on a Cloud TPU VM slice (e.g. v5litepod-256 or v4-1024): every worker runs the
# same command, `--multihost` makes jax.distributed.initialize() join them, worker 0's log
# streams here, and a preempted slice is recreated and the run resumed from its checkpoint.
#
#   launch/tpu_vm.sh create                       # gcloud compute tpus tpu-vm create
#   launch/tpu_vm.sh install                      # copy this checkout to every worker, set it up
#   launch/tpu_vm.sh run   --config=C --workdir=/mnt/ptft/runs/x [--config.k=v ...]
#   launch/tpu_vm.sh train --config=C --workdir=/mnt/ptft/runs/x [...]   # create+install+run,
#                                                 # and again after each preemption
#   launch/tpu_vm.sh status | ssh [WORKER] | delete
#
# Settings (environment variables):
#   TPU_NAME      TPU VM name                               (default ptft)
#   TPU_ZONE      zone                                      (default us-west4-a)
#   TPU_PROJECT   project                                   (default: gcloud's configured one)
#   TPU_TYPE      accelerator type: v5litepod-256, v4-1024, v5p-128, ... (default v5litepod-8)
#   TPU_VERSION   TPU software version (default v2-alpha-tpuv5-lite; v4: tpu-ubuntu2204-base)
#   TPU_SPOT      1: a Spot slice (cheap, preemptible, recreated by `train`)  (default 0)
#   TPU_BUCKET    GCS bucket mounted with gcsfuse at /mnt/ptft on every worker; put --workdir
#                 (and data_dir) under it, so checkpoints outlive the slice and every worker
#                 sees the same files (default: none; then --workdir must be a shared mount)
#   JAX_TPU       the jax TPU install (default "jax[tpu]==0.10.2", matching requirements.txt)
#   MAX_RESTARTS  preemptions `train` recovers from before giving up (default 20)
#
# What `train` does after the program stops:
#   exit 0 and "preempted: saved step N" in the log (a maintenance SIGTERM was caught and the
#     step saved)                                     -> run again on the same slice
#   the slice is PREEMPTED / TERMINATED / gone        -> delete, create, install, run again
#   exit 0                                            -> done
#   any other failure on a READY slice (a bug or a user error) -> stop with that status
# The same --workdir resumes from its latest complete checkpoint, with the same data order.
set -euo pipefail
cd "$(dirname "$0")/.."

TPU_NAME="${TPU_NAME:-ptft}"
TPU_ZONE="${TPU_ZONE:-us-west4-a}"
TPU_TYPE="${TPU_TYPE:-v5litepod-8}"
TPU_VERSION="${TPU_VERSION:-v2-alpha-tpuv5-lite}"
TPU_SPOT="${TPU_SPOT:-0}"
TPU_BUCKET="${TPU_BUCKET:-}"
JAX_TPU="${JAX_TPU:-jax[tpu]==0.10.2}"
MAX_RESTARTS="${MAX_RESTARTS:-20}"
REMOTE_DIR="ptft_jax"  # under each worker's home
LOG="ptft_run.log"      # on each worker: ~/ptft_run.log, and ~/ptft_run.status when it ends

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$TPU_ZONE")
if [[ -n "${TPU_PROJECT:-}" ]]; then WHERE+=(--project="$TPU_PROJECT"); fi

say() { echo "tpu_vm: $*" >&2; }

on_workers() {  # on_workers WORKER COMMAND: run a shell command on one worker or "all"
  "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker="$1" --command="$2"
}

state() {  # READY, CREATING, PREEMPTED, TERMINATED, ... or NOT_FOUND
  "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null \
    || echo NOT_FOUND
}

create() {
  local spot=()
  if [[ "$TPU_SPOT" == 1 ]]; then spot=(--spot); fi
  say "creating $TPU_NAME ($TPU_TYPE, $TPU_VERSION) in $TPU_ZONE"
  "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$TPU_TYPE" \
    --version="$TPU_VERSION" "${spot[@]}"
}

delete() {
  say "deleting $TPU_NAME"
  "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
}

install() {
  # 1. This checkout (without .venv, runs, .git) as one archive.
  local archive
  archive="$(mktemp -t ptft_jax.XXXXXX).tgz"
  tar czf "$archive" --exclude=./.venv --exclude=./runs --exclude=./.git .
  # 2. Copied to every worker.
  say "copying the code to every worker"
  "${GCLOUD[@]}" scp "$archive" "$TPU_NAME":ptft_jax.tgz "${WHERE[@]}" --worker=all
  rm -f "$archive"
  # 3. Unpacked and installed on every worker: the pinned requirements, then jax for TPU.
  say "installing on every worker"
  on_workers all "set -e; rm -rf ~/$REMOTE_DIR; mkdir -p ~/$REMOTE_DIR;
    tar xzf ~/ptft_jax.tgz -C ~/$REMOTE_DIR; cd ~/$REMOTE_DIR; bash launch/setup_env.sh;
    .venv/bin/pip install -q '$JAX_TPU' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
  # 4. The shared bucket, mounted at the same path everywhere.
  if [[ -n "$TPU_BUCKET" ]]; then
    say "mounting gs://$TPU_BUCKET at /mnt/ptft on every worker"
    on_workers all "set -e; command -v gcsfuse >/dev/null || {
        echo 'deb https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -c -s)' main' |
          sudo tee /etc/apt/sources.list.d/gcsfuse.list;
        curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -;
        sudo apt-get update -q; sudo apt-get install -y -q gcsfuse; };
      sudo mkdir -p /mnt/ptft; sudo chown \$USER /mnt/ptft;
      mountpoint -q /mnt/ptft || gcsfuse --implicit-dirs --rename-dir-limit=200000 \
        '$TPU_BUCKET' /mnt/ptft"
  fi
}

run() {  # run ARGS...: returns the exit status of worker 0's program (255: slice lost)
  # 1. The command as a script (arguments quoted once, here), copied to every worker.
  local script
  script="$(mktemp -t ptft_run.XXXXXX)"
  {
    echo "cd ~/$REMOTE_DIR || exit 1"
    printf 'exec .venv/bin/python -m ptft_jax.main --multihost'
    printf ' %q' "$@"
    echo
  } > "$script"
  say "on all workers: $(tail -n 1 "$script")"
  "${GCLOUD[@]}" scp "$script" "$TPU_NAME":ptft_run.sh "${WHERE[@]}" --worker=all
  rm -f "$script"
  # 2. Started on every worker, detached so that a dropped ssh does not stop it; each
  #    worker logs to ~/ptft_run.log and writes its exit status to ~/ptft_run.status.
  on_workers all "rm -f ~/$LOG ~/ptft_run.status; nohup bash -c 'bash ~/ptft_run.sh \
    > ~/$LOG 2>&1; echo \$? > ~/ptft_run.status' > /dev/null 2>&1 < /dev/null &"
  # 3. Worker 0's log streamed here until its program ends; exit with its status.
  on_workers 0 "touch ~/$LOG; tail -n +1 -F ~/$LOG & tailer=\$!;
    while [ ! -f ~/ptft_run.status ]; do sleep 5; done; sleep 2; kill \$tailer;
    exit \$(cat ~/ptft_run.status)"
}

preempted_in_log() {  # worker 0 caught a SIGTERM, saved and exited 0
  on_workers 0 "grep -q '^preempted: saved step' ~/$LOG" 2>/dev/null
}

installed() {  # every worker has this project set up
  on_workers all "test -x ~/$REMOTE_DIR/.venv/bin/python" > /dev/null 2>&1
}

train() {
  local restarts=0 status
  while true; do
    case "$(state)" in
      READY) installed || install ;;
      NOT_FOUND) create; install ;;
      PREEMPTED|TERMINATED|STOPPED) delete; create; install ;;
      *) say "waiting for $TPU_NAME (state $(state))"; sleep 30; continue ;;
    esac
    status=0
    run "$@" || status=$?
    if ! preempted_in_log; then
      if [[ "$status" == 0 ]]; then
        say "finished"
        return 0
      fi
      if [[ "$(state)" == READY ]]; then
        say "the program failed (exit $status) on a healthy slice; not retrying"
        return "$status"
      fi
    fi
    restarts=$((restarts + 1))
    if ((restarts > MAX_RESTARTS)); then
      say "preempted $restarts times; giving up (MAX_RESTARTS=$MAX_RESTARTS)"
      return 1
    fi
    say "preempted (restart $restarts of $MAX_RESTARTS); resuming from the latest checkpoint"
  done
}

command="${1:-}"
shift || true
case "$command" in
  create) create ;;
  install) install ;;
  run) run "$@" ;;
  train) train "$@" ;;
  status) state ;;
  ssh) "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker="${1:-0}" ;;
  delete) delete ;;
  *) sed -n '2,35p' "$0"; exit 2 ;;
esac
