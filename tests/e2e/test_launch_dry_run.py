"""The cluster launchers against fake `gcloud` / `srun` / `scontrol` executables put first on
PATH: launch/tpu_vm.sh (dry run; create, install, run, and delete / recreate / resume after a
lost slice) and launch/slurm_gpu.sbatch (dry run; coordinator and process ids from SLURM's
variables; requeue after a saved preemption)."""

import json
import os
import shlex
import stat
import subprocess
import sys

from tests.helpers import REPO

FAKE_GCLOUD = '''#!{python}
"""gcloud compute tpus tpu-vm VERB NAME ...: logs its argv, keeps the slice state in files."""
import json, os, sys
d = os.environ["FAKE_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "gcloud.log"), "a") as f:
  f.write(json.dumps(args) + "\\n")
path = lambda name: os.path.join(d, name)
state = open(path("state")).read() if os.path.exists(path("state")) else "NOT_FOUND"
verb = args[3]
if verb == "describe":
  if state == "NOT_FOUND":
    sys.exit(1)
  print(state)
elif verb == "create":
  open(path("state"), "w").write("READY")
elif verb == "delete":
  os.remove(path("state"))
  if os.path.exists(path("installed")):
    os.remove(path("installed"))
elif verb == "ssh":
  cmd = next(a[len("--command="):] for a in args if a.startswith("--command="))
  if "test -x" in cmd:
    sys.exit(0 if os.path.exists(path("installed")) else 1)
  if "uv venv" in cmd:
    open(path("installed"), "w").close()
  if "tail -n +1 -F" in cmd:  # the run: the first one loses its slice
    runs = len(open(path("runs")).read()) if os.path.exists(path("runs")) else 0
    open(path("runs"), "a").write("x")
    if runs == 0:
      open(path("state"), "w").write("PREEMPTED")
      sys.exit(255)
    print("step 10/10")
  if "grep -q '^preempted" in cmd:
    sys.exit(1)
'''

FAKE_SCONTROL = '''#!/usr/bin/env bash
if [[ "$1 $2" == "show hostnames" ]]; then
  [[ "$3" == "gpu[07-08]" ]] && printf 'gpu07\\ngpu08\\n'
else
  echo "scontrol $*" >> "$FAKE_DIR/scontrol.log"
fi
'''

# srun: drops its own options and runs the command once per task, as SLURM would
# (SLURM_PROCID 0..N-1, SLURM_LOCALID within a node of 8).
FAKE_SRUN = '''#!/usr/bin/env bash
echo "srun $*" >> "$FAKE_DIR/srun.log"
while [[ "$1" == --* ]]; do shift; done
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % 8)) "$@" || exit $?
done
'''

# The program: says what it got; task 0 saved at the time limit.
FAKE_PYTHON = '''#!/usr/bin/env bash
echo "task $PTFT_PROCESS_ID gpu $PTFT_LOCAL_DEVICE_IDS: $*"
if [[ "$PTFT_PROCESS_ID" == 0 ]]; then echo "preempted: saved step 7 in /shared/r"; fi
'''

SLURM = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "16",
         "SLURM_JOB_NUM_NODES": "2", "SLURM_SUBMIT_DIR": REPO}


def _fakes(tmp_path) -> dict:
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in {"gcloud": FAKE_GCLOUD.format(python=sys.executable),
                     "scontrol": FAKE_SCONTROL, "srun": FAKE_SRUN,
                     "fake_python": FAKE_PYTHON}.items():
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IXUSR)
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "TPU_", "PTFT_"))}
  return {**env, "PATH": f"{bin_dir}:{env['PATH']}", "FAKE_DIR": str(tmp_path),
          "TMPDIR": str(tmp_path)}


def _run(script, args, env, **kwargs):
  return subprocess.run(["bash", script, *args], cwd=tmp_cwd(env), env=env,
                        capture_output=True, text=True, timeout=120, **kwargs)


def tmp_cwd(env) -> str:
  return env["FAKE_DIR"]  # the scripts cd to the repository themselves


def _gcloud_calls(tmp_path) -> list[str]:
  """Each gcloud call as a short name: describe, create, delete, scp code / run, ssh ..."""
  log = tmp_path / "gcloud.log"
  calls = []
  for line in (log.read_text().splitlines() if log.exists() else []):
    args = json.loads(line)
    verb = args[3]
    if verb == "scp":
      verb += " code" if any(a.endswith(":ptft_jax.tgz") for a in args) else " run"
    elif verb == "ssh":
      cmd = next(a for a in args if a.startswith("--command="))
      verb += next(f" {name}" for key, name in [
          ("uv venv", "install"), ("nohup", "start"), ("tail -n +1 -F", "wait"),
          ("grep -q", "grep"), ("test -x", "installed?")] if key in cmd)
    calls.append(verb)
  return calls


RUN_ARGS = ["--config=configs/digits.py", "--workdir=/mnt/ptft/runs/x",
            "--config.train.steps=10"]


def test_tpu_vm_dry_run_prints_every_command_and_runs_none(tmp_path):
  env = _fakes(tmp_path)
  proc = _run(f"{REPO}/launch/tpu_vm.sh", ["--dry-run", "train", *RUN_ARGS],
              {**env, "TPU_NFS": "10.0.0.2:/share"})
  assert proc.returncode == 0, proc.stderr
  assert _gcloud_calls(tmp_path) == []  # printed, never run
  lines = proc.stdout.splitlines()
  assert all(line.startswith("+ ") for line in lines), lines
  gcloud = "+ gcloud compute tpus tpu-vm "
  heads = [line[len(gcloud):].split(" ")[0] if line.startswith(gcloud) else line.split(" ")[1]
           for line in lines]
  assert heads == ["describe", "create", "tar", "scp", "rm", "ssh", "ssh", "scp", "ssh", "ssh",
                   "ssh"]
  install, mount = lines[5], lines[6]
  for step in ("uv python install 3.11", "uv venv --seed --python 3.11 .venv",
               "launch/setup_env.sh", "jax[tpu]==0.10.2", "libtpu_releases"):
    assert step in install, install
  assert "mount -t nfs" in mount and "10.0.0.2:/share" in mount
  assert ("on all workers: exec .venv/bin/python -m ptft_jax.main --multihost "
          "--config=configs/digits.py --workdir=/mnt/ptft/runs/x --config.train.steps=10"
          ) in proc.stderr


def test_tpu_vm_train_recreates_a_lost_slice_and_resumes(tmp_path):
  env = _fakes(tmp_path)
  proc = _run(f"{REPO}/launch/tpu_vm.sh", ["train", *RUN_ARGS], env)
  assert proc.returncode == 0, proc.stderr
  run = ["scp run", "ssh start", "ssh wait", "ssh grep"]
  assert _gcloud_calls(tmp_path) == [
      "describe", "create", "scp code", "ssh install", *run,  # the slice is lost mid-run
      "describe", "describe", "delete", "create", "scp code", "ssh install", *run]  # resumed
  assert "preempted (restart 1 of 20); resuming from the latest checkpoint" in proc.stderr
  assert proc.stdout.splitlines()[-1] == "step 10/10"


def test_tpu_vm_dry_run_with_a_gs_workdir_runs_it_and_mounts_nothing(tmp_path):
  env = _fakes(tmp_path)  # no TPU_NFS, no TPU_BUCKET: Orbax and gcsfs reach the bucket
  proc = _run(f"{REPO}/launch/tpu_vm.sh",
              ["--dry-run", "train", "--config=configs/digits.py", "--workdir=gs://b/r"], env)
  assert proc.returncode == 0, proc.stderr
  assert ("on all workers: exec .venv/bin/python -m ptft_jax.main --multihost "
          "--config=configs/digits.py --workdir=gs://b/r") in proc.stderr
  assert "mount" not in proc.stdout and "/mnt/" not in proc.stdout
  assert _gcloud_calls(tmp_path) == []


def test_tpu_vm_refuses_workdirs_that_cannot_hold_a_multihost_run(tmp_path):
  env = _fakes(tmp_path)
  for args, why in [([], "--workdir=DIR is required"),
                    (["--workdir=/mnt/gcs/runs/x"], "renames are not atomic")]:
    proc = _run(f"{REPO}/launch/tpu_vm.sh", ["--dry-run", "train", *args], env)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1 and why in proc.stderr, proc.stderr
    assert "gs://BUCKET/PATH" in proc.stderr


def test_slurm_dry_run_prints_srun_with_coordinator_and_process_ids(tmp_path):
  env = {**_fakes(tmp_path), **SLURM}
  proc = _run(f"{REPO}/launch/slurm_gpu.sbatch", ["--dry-run", "--config=c.py",
                                                  "--workdir=/shared/r"], env)
  assert proc.returncode == 0, proc.stderr
  assert not (tmp_path / "srun.log").exists()  # printed, never run
  info, srun = proc.stdout.splitlines()
  # 61440 + 4242 % 4096: the same port after a requeue (same job id)
  assert info == ("ptft: 2 nodes, 16 tasks, coordinator gpu07:61586, process ids 0..15 "
                  "from SLURM_PROCID")
  assert srun.startswith("+ srun --kill-on-bad-exit=1 bash -c ")
  assert srun.endswith(" ptft .venv/bin/python -m ptft_jax.main "
                       "--coordinator_address=gpu07:61586 --num_processes=16 --config=c.py "
                       "--workdir=/shared/r")
  task = shlex.split(srun[2:])[4]  # srun --kill-on-bad-exit=1 bash -c TASK
  assert task == ('export PTFT_PROCESS_ID="$SLURM_PROCID"; export PTFT_LOCAL_DEVICE_IDS='
                  '"${PTFT_LOCAL_DEVICE_IDS:-$SLURM_LOCALID}"; exec "$@"')


def test_slurm_run_gives_each_task_its_id_and_gpu_and_requeues_after_a_save(tmp_path):
  env = {**_fakes(tmp_path), **SLURM, "PYTHON": str(tmp_path / "bin" / "fake_python")}
  proc = _run(f"{REPO}/launch/slurm_gpu.sbatch", ["--config=c.py", "--workdir=/shared/r"], env)
  assert proc.returncode == 0, proc.stderr
  tasks = [line for line in proc.stdout.splitlines() if line.startswith("task ")]
  args = "-m ptft_jax.main --coordinator_address=gpu07:61586 --num_processes=16 --config=c.py "
  assert tasks == [f"task {i} gpu {i % 8}: {args}--workdir=/shared/r" for i in range(16)]
  assert "requeueing job 4242 to resume" in proc.stdout
  assert (tmp_path / "scontrol.log").read_text() == "scontrol requeue 4242\n"
  # One process per node: every GPU of the node, whatever the task's SLURM_LOCALID.
  proc = _run(f"{REPO}/launch/slurm_gpu.sbatch", ["--config=c.py", "--workdir=/shared/r"],
              {**env, "PTFT_PER_NODE": "1", "SLURM_NTASKS": "2", "SLURM_GPUS_ON_NODE": "4"})
  assert proc.returncode == 0, proc.stderr
  assert [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("task ")] == [
      "task 0 gpu 0,1,2,3", "task 1 gpu 0,1,2,3"]


def test_slurm_outside_a_job_is_one_line(tmp_path):
  proc = _run(f"{REPO}/launch/slurm_gpu.sbatch", ["--dry-run"], _fakes(tmp_path))
  assert proc.returncode == 2
  assert proc.stderr == ("ptft: error: SLURM_JOB_ID is not set; submit with sbatch (or set the "
                         "SLURM_* variables)\n")
