#!/usr/bin/env bash
# Runs ptft_jax on a Cloud TPU VM slice (e.g. v5litepod-256 or v4-1024): every worker runs the
# same command, `--multihost` makes jax.distributed.initialize() join them, worker 0's log
# streams here, and a preempted slice is recreated and the run resumed from its checkpoint.
#
#   launch/tpu_vm.sh create                       # gcloud compute tpus tpu-vm create
#   launch/tpu_vm.sh install                      # copy this checkout to every worker, set it up
#   launch/tpu_vm.sh run   --config=C --workdir=gs://BUCKET/runs/x [--config.k=v ...]
#   launch/tpu_vm.sh train --config=C --workdir=gs://BUCKET/runs/x [...]  # create+install+
#                                                 # run, and again after each preemption
#   launch/tpu_vm.sh status | ssh [WORKER] | delete
#   launch/tpu_vm.sh --dry-run COMMAND ...        # print every command instead of running it
#
# Settings (environment variables):
#   TPU_NAME      TPU VM name                               (default ptft)
#   TPU_ZONE      zone                                      (default us-west4-a)
#   TPU_PROJECT   project                                   (default: gcloud's configured one)
#   TPU_TYPE      accelerator type: v5litepod-256, v4-1024, v5p-128, ... (default v5litepod-8)
#   TPU_VERSION   TPU software version (default v2-alpha-tpuv5-lite; v4: tpu-ubuntu2204-base)
#   TPU_SPOT      1: a Spot slice (cheap, preemptible, recreated by `train`)  (default 0)
#   TPU_NFS       the alternative to a gs:// workdir: an NFS share (a Filestore instance in
#                 the slice's network: IP:/share), mounted at /mnt/ptft on every worker; put
#                 --workdir under it. It has the atomic renames Orbax commits a local step
#                 with, and outlives the slice.                 (default: none)
#   TPU_BUCKET    GCS bucket mounted with gcsfuse at /mnt/gcs on every worker, for data
#                 (data_dir) only: gcsfuse renames are not atomic, so a --workdir under
#                 /mnt/gcs is refused (use --workdir=gs://... instead) (default: none)
#   PYTHON_VERSION  the Python uv installs on the workers (default 3.11; the images'
#                 python3 is 3.10 on Ubuntu 22.04, and ptft_jax needs >= 3.11)
#   JAX_TPU       the jax TPU install (default "jax[tpu]==V", V = requirements.txt's jax pin)
#   MAX_RESTARTS  preemptions `train` recovers from before giving up (default 20)
#
# Where the workdir lives: every worker must see the same one (each writes its shards of a
# checkpoint) and it must outlive the slice. --workdir=gs://BUCKET/PATH (recommended) needs
# no mount: Orbax writes the checkpoints there itself (TensorStore; a step counts once its
# commit_success.txt is written) and ptft_jax its config.json, metrics.jsonl, eval_*.json,
# labels.json through gcsfs; the slice's service account needs read/write access to the
# bucket. Or a path under the TPU_NFS mount. No --workdir, or one under /mnt/gcs: one line.
#
# What `train` does after the program stops:
#   exit 0 and "preempted: saved step N" in the log (a maintenance SIGTERM was caught and the
#     step saved)                                     -> run again on the same slice
#   the slice is PREEMPTED / TERMINATED / gone        -> delete, create, install, run again
#   exit 0                                            -> done
#   any other failure on a READY slice (a bug or a user error) -> stop with that status
# The same --workdir resumes from its latest complete checkpoint, with the same data order.
# A dry run takes the slice as absent (create, install, run) and the run as finishing.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
exec 3>&1  # the dry run's printout: the real stdout, even from inside $(...)
if [[ "${1:-}" == --dry-run ]]; then DRY_RUN=1; shift; fi
TPU_NAME="${TPU_NAME:-ptft}"
TPU_ZONE="${TPU_ZONE:-us-west4-a}"
TPU_TYPE="${TPU_TYPE:-v5litepod-8}"
TPU_VERSION="${TPU_VERSION:-v2-alpha-tpuv5-lite}"
TPU_SPOT="${TPU_SPOT:-0}"
TPU_NFS="${TPU_NFS:-}"
TPU_BUCKET="${TPU_BUCKET:-}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
JAX_PIN="$(sed -n -E 's/^jax==([^ #]+).*/\1/p' requirements.txt)"
JAX_TPU="${JAX_TPU:-jax[tpu]==${JAX_PIN:?requirements.txt has no jax==VERSION line}}"
MAX_RESTARTS="${MAX_RESTARTS:-20}"
REMOTE_DIR="ptft_jax"  # under each worker's home
LOG="ptft_run.log"      # on each worker: ~/ptft_run.log, and ~/ptft_run.status when it ends

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$TPU_ZONE")
if [[ -n "${TPU_PROJECT:-}" ]]; then WHERE+=(--project="$TPU_PROJECT"); fi

say() { echo "tpu_vm: $*" >&2; }

x() {  # x COMMAND...: runs it, or with --dry-run prints it (quoted, one line) instead
  if [[ "$DRY_RUN" == 1 ]]; then
    { printf '+'; printf ' %q' "$@"; printf '\n'; } >&3
  else
    "$@"
  fi
}

on_workers() {  # on_workers WORKER COMMAND: run a shell command on one worker or "all"
  x "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker="$1" --command="$2"
}

state() {  # READY, CREATING, PREEMPTED, TERMINATED, ... or NOT_FOUND
  if [[ "$DRY_RUN" == 1 ]]; then
    x "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" --format='value(state)'
    echo NOT_FOUND
    return
  fi
  "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null \
    || echo NOT_FOUND
}

create() {
  local spot=()
  if [[ "$TPU_SPOT" == 1 ]]; then spot=(--spot); fi
  say "creating $TPU_NAME ($TPU_TYPE, $TPU_VERSION) in $TPU_ZONE"
  x "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$TPU_TYPE" \
    --version="$TPU_VERSION" "${spot[@]}"
}

delete() {
  say "deleting $TPU_NAME"
  x "${GCLOUD[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
}

install() {
  # 1. This checkout as one archive: the files git tracks or would track (no .venv*, runs,
  #    caches: whatever .gitignore leaves out), or all but those without git.
  local archive
  archive="${TMPDIR:-/tmp}/ptft_jax.$$.tgz"
  if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
    x tar czf "$archive" --ignore-failed-read --verbatim-files-from \
      -T <(git ls-files -co --exclude-standard)
  else
    x tar czf "$archive" --exclude='./.venv*' --exclude=./runs --exclude=./.git .
  fi
  # 2. Copied to every worker.
  say "copying the code to every worker"
  x "${GCLOUD[@]}" scp "$archive" "$TPU_NAME":ptft_jax.tgz "${WHERE[@]}" --worker=all
  x rm -f "$archive"
  # 3. Unpacked and installed on every worker: Python $PYTHON_VERSION from uv (the image's
  #    python3 is too old), the pinned requirements, then jax for TPU at the same version.
  say "installing Python $PYTHON_VERSION, the requirements and $JAX_TPU on every worker"
  on_workers all "set -e; rm -rf ~/$REMOTE_DIR; mkdir -p ~/$REMOTE_DIR;
    tar xzf ~/ptft_jax.tgz -C ~/$REMOTE_DIR; cd ~/$REMOTE_DIR;
    export PATH=\$HOME/.local/bin:\$PATH;
    command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh;
    uv python install $PYTHON_VERSION; uv venv --seed --python $PYTHON_VERSION .venv;
    bash launch/setup_env.sh;
    .venv/bin/python -m pip install -q '$JAX_TPU' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html;
    .venv/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'"
  # 4. The shared workdir (NFS) and the data bucket (gcsfuse), at the same paths everywhere.
  if [[ -n "$TPU_NFS" ]]; then
    say "mounting $TPU_NFS at /mnt/ptft on every worker"
    on_workers all "set -e; command -v mount.nfs >/dev/null || {
        sudo apt-get update -q; sudo apt-get install -y -q nfs-common; };
      sudo mkdir -p /mnt/ptft;
      mountpoint -q /mnt/ptft || sudo mount -t nfs -o rw,hard,nconnect=8 '$TPU_NFS' /mnt/ptft;
      sudo chmod a+rwx /mnt/ptft"
  fi
  if [[ -n "$TPU_BUCKET" ]]; then
    say "mounting gs://$TPU_BUCKET at /mnt/gcs on every worker (data only)"
    on_workers all "set -e; command -v gcsfuse >/dev/null || {
        echo 'deb https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -c -s)' main' |
          sudo tee /etc/apt/sources.list.d/gcsfuse.list;
        curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -;
        sudo apt-get update -q; sudo apt-get install -y -q gcsfuse; };
      sudo mkdir -p /mnt/gcs; sudo chown \$USER /mnt/gcs;
      mountpoint -q /mnt/gcs || gcsfuse --implicit-dirs '$TPU_BUCKET' /mnt/gcs"
  fi
}

check_workdir() {  # check_workdir ARGS...: refuses a workdir that cannot hold a multi-host run
  local arg dir=""
  for arg in "$@"; do
    case "$arg" in --workdir=*) dir="${arg#--workdir=}" ;; esac
  done
  case "$dir" in
    "") say "error: --workdir=DIR is required (a directory every worker sees:" \
          "gs://BUCKET/PATH, or under /mnt/ptft with TPU_NFS set)"; exit 2 ;;
    /mnt/gcs|/mnt/gcs/*) say "error: --workdir=$dir is on the gcsfuse mount, whose renames" \
              "are not atomic (a checkpoint could be half renamed); use" \
              "--workdir=gs://BUCKET/PATH (no mount), or set TPU_NFS and use" \
              "--workdir=/mnt/ptft/..."; exit 2 ;;
  esac
}

run() {  # run ARGS...: returns the exit status of worker 0's program (255: slice lost)
  # 1. The command as a script (arguments quoted once, here), copied to every worker.
  local script
  script="${TMPDIR:-/tmp}/ptft_run.$$.sh"
  {
    echo "cd ~/$REMOTE_DIR || exit 1"
    printf 'exec .venv/bin/python -m ptft_jax.main --multihost'
    printf ' %q' "$@"
    echo
  } > "$script"
  say "on all workers: $(tail -n 1 "$script")"
  x "${GCLOUD[@]}" scp "$script" "$TPU_NAME":ptft_run.sh "${WHERE[@]}" --worker=all
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
  if [[ "$DRY_RUN" == 1 ]]; then on_workers 0 "grep -q '^preempted: saved step' ~/$LOG"; return 1; fi
  on_workers 0 "grep -q '^preempted: saved step' ~/$LOG" 2>/dev/null
}

installed() {  # every worker has this project set up
  if [[ "$DRY_RUN" == 1 ]]; then return 1; fi
  on_workers all "test -x ~/$REMOTE_DIR/.venv/bin/python" > /dev/null 2>&1
}

train() {
  local restarts=0 status current
  while true; do
    current="$(state)"
    case "$current" in
      READY) installed || install ;;
      NOT_FOUND) create; install ;;
      PREEMPTED|TERMINATED|STOPPED) delete; create; install ;;
      *) say "waiting for $TPU_NAME (state $current)"; sleep 30; continue ;;
    esac
    status=0
    run "$@" || status=$?
    if ! preempted_in_log; then
      if [[ "$status" == 0 ]]; then
        if [[ "$DRY_RUN" == 1 ]]; then say "dry run: these commands run it once"; return 0; fi
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
  run) check_workdir "$@"; run "$@" ;;
  train) check_workdir "$@"; train "$@" ;;
  status) state ;;
  ssh) x "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker="${1:-0}" ;;
  delete) delete ;;
  *) sed -n '2,47p' "$0"; exit 2 ;;
esac
