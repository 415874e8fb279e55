"""Multi-host faults: SIGTERM to one process of a 2-process run (2 local processes x 4 CPU
devices, the real CLI), a preemption check that cannot run, and resuming with another
process count (2 x 4 -> 1 x 8 devices)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import grain
import pytest

from ptft_jax.errors import CheckpointError
from ptft_jax.train import checkpoint, preemption
from tests.helpers import REPO, xla_flags

# A digits MLP that would train for a long time: only a preemption ends it.
ARGS = ["--config=configs/digits.py:mlp", "--config.model.hidden_sizes=(32,)",
        "--config.data.batch_size=32", "--config.data.eval_batch_size=64",
        "--config.train.log_every=1", "--config.train.eval_every=0",
        "--config.train.checkpoint_every=100000", "--config.train.tensorboard=False",
        "--config.eval_splits=('validation',)"]


def _port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir, log_dir, steps: int, *, processes: int = 2, devices: int = 4,
           env: dict | None = None) -> list[subprocess.Popen]:
  """The processes of one run, as launch/local_multiprocess.sh starts them (pids known)."""
  os.makedirs(log_dir, exist_ok=True)
  port, procs = _port(), []
  for i in range(processes):
    extra = {"PTFT_COORDINATOR": f"localhost:{port}", "PTFT_NUM_PROCESSES": str(processes),
             "PTFT_PROCESS_ID": str(i)} if processes > 1 else {}
    log = open(os.path.join(log_dir, f"process_{i}.log"), "w")
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "ptft_jax.main", f"--workdir={workdir}", *ARGS,
         f"--config.train.steps={steps}"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {}), **extra, "JAX_PLATFORMS": "cpu",
             "XLA_FLAGS": xla_flags(devices)}))
  return procs


def _finish(procs, log_dir, timeout=300) -> tuple[list[int], list[str]]:
  deadline = time.monotonic() + timeout
  try:
    codes = [p.wait(timeout=max(1, deadline - time.monotonic())) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  logs = [open(os.path.join(log_dir, f"process_{i}.log")).read() for i in range(len(procs))]
  return codes, logs


def _train_rows(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  return sum('"split": "train"' in line or '"train"' in line for line in open(path))


@pytest.fixture(scope="module")
def preempted_run(tmp_path_factory):
  """A 2-process run whose process 1 alone got SIGTERM once it was training."""
  tmp = tmp_path_factory.mktemp("faults")
  workdir, logs = str(tmp / "run"), str(tmp / "logs1")
  procs = _start(workdir, logs, steps=1_000_000)
  deadline = time.monotonic() + 240
  while _train_rows(workdir) < 3 and time.monotonic() < deadline:
    if any(p.poll() is not None for p in procs):
      break
    time.sleep(0.5)
  if _train_rows(workdir) >= 3 and procs[1].poll() is None:
    os.kill(procs[1].pid, signal.SIGTERM)  # process 1 only
  codes, out = _finish(procs, logs)
  return workdir, codes, out


def test_sigterm_to_one_process_saves_the_same_step_on_all_and_exits_0(preempted_run):
  workdir, codes, out = preempted_run
  assert codes == [0, 0], "\n".join(o[-2000:] for o in out)
  steps = checkpoint.complete_steps(workdir)
  assert len(steps) == 1 and steps[0] >= 3, steps  # one step, saved by both processes
  for o in out:
    assert re.search(rf"^preempted: saved step {steps[0]} in ", o, re.M), o[-2000:]
  data = os.listdir(os.path.join(checkpoint.checkpoint_dir(workdir), str(steps[0]), "data"))
  assert sorted(n for n in data if n.startswith("process_")) == [
      "process_0-of-2.json", "process_1-of-2.json"]


def test_rerun_resumes_and_a_missing_preemption_service_is_said_at_start(
    preempted_run, tmp_path):
  workdir, codes, _ = preempted_run
  assert codes == [0, 0]
  saved = checkpoint.complete_steps(workdir)[-1]
  # The same command (2 more steps) resumes, here with JAX's preemption service off:
  # every process says at start, in one line, that a SIGTERM would not be saved.
  procs = _start(workdir, str(tmp_path / "logs2"), steps=saved + 2,
                 env={"JAX_ENABLE_PREEMPTION_SERVICE": "false"})
  codes, out = _finish(procs, str(tmp_path / "logs2"))
  assert codes == [0, 0], "\n".join(o[-2000:] for o in out)
  assert f"at step {saved}" in re.search(r"^resumed from .*$", out[0], re.M).group(0)
  for o in out:
    warnings = [line for line in o.splitlines() if line.startswith("warning:")]
    assert warnings == [preemption._UNAVAILABLE], o[-2000:]
  assert checkpoint.complete_steps(workdir)[-1] == saved + 2

  # 2 x 4 -> 1 x 8 devices: one process takes the data position both had saved.
  procs = _start(workdir, str(tmp_path / "logs3"), steps=saved + 4, processes=1, devices=8)
  codes, out = _finish(procs, str(tmp_path / "logs3"))
  assert codes == [0], out[0][-3000:]
  assert re.search(rf"^resumed from .* at step {saved + 2}$", out[0], re.M), out[0][-3000:]
  assert "corrupt" not in out[0]
  last = os.path.join(checkpoint.checkpoint_dir(workdir), str(saved + 4), "data")
  assert json.load(open(os.path.join(last, "process_0-of-1.json"))) == {
      "next_index": saved + 4}  # the position went on from saved + 2, not from 0


def test_a_per_process_data_position_from_another_process_count_is_refused(preempted_run):
  workdir, codes, _ = preempted_run
  assert codes == [0, 0]
  step = checkpoint.complete_steps(workdir)[0]
  manager = checkpoint.make_manager(workdir, read_only=True)
  try:
    # The in-memory iterator's state is its position: taken over.
    it = iter(grain.MapDataset.range(10).to_iter_dataset())
    assert checkpoint._other_count_position(manager, step, it) == {"next_index": step}
    # A Grain DataLoader keeps a position per process: one line that says why and what to do.
    loader = iter(grain.DataLoader(
        data_source=list(range(10)), sampler=grain.samplers.IndexSampler(
            num_records=10, shuffle=False, seed=0, num_epochs=None), worker_count=0))
    with pytest.raises(CheckpointError) as e:
      checkpoint._other_count_position(manager, step, loader)
  finally:
    manager.close()
  assert str(e.value) == (
      f"cannot resume from {manager.directory}/{step}: its data position was saved by 2 "
      "process(es) and this run has 1, and this run's data pipeline (a Grain DataLoader) "
      "keeps one position per process; resume with 2 process(es), or use a new --workdir")


def test_should_stop_warns_once_when_the_preemption_check_cannot_run(monkeypatch, capsys):
  from jax._src import distributed

  monkeypatch.setattr(distributed.global_state, "client", object())  # "joined", no service
  monkeypatch.setattr(distributed.global_state, "preemption_sync_manager", None)
  monkeypatch.setattr(preemption.jax, "process_count", lambda: 2)
  monkeypatch.setattr(preemption, "_multihost_unavailable", False)
  assert not preemption.should_stop(3) and not preemption.should_stop(4)
  assert capsys.readouterr().err.splitlines() == [preemption._UNAVAILABLE]


# Loaded at start-up through PYTHONPATH: process 1 fails right after joining the run.
FAIL_AFTER_JOINING = '''import os
if os.environ.get("PTFT_PROCESS_ID") == "1":
  import jax
  _join = jax.distributed.initialize
  def _initialize(*args, **kwargs):
    _join(*args, **kwargs)
    raise RuntimeError("injected failure in process 1")
  jax.distributed.initialize = _initialize
'''


def test_an_error_in_one_process_ends_the_run_quickly(tmp_path):
  (tmp_path / "inject").mkdir()
  (tmp_path / "inject" / "sitecustomize.py").write_text(FAIL_AFTER_JOINING)
  start = time.monotonic()
  proc = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "2", f"--workdir={tmp_path / 'run'}", *ARGS,
       "--config.train.steps=1000000"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHON": sys.executable, "PTFT_LOCAL_DEVICES": "4",
           "PTFT_LOG_DIR": str(tmp_path / "logs"), "PTFT_STOP_GRACE": "5",
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "inject"), REPO])})
  elapsed = time.monotonic() - start
  log1 = (tmp_path / "logs" / "process_1.log").read_text()
  assert proc.returncode == 1, proc.stderr[-2000:] + log1[-2000:]
  assert "RuntimeError: injected failure in process 1" in log1
  assert "a process failed (exit 1); stopping the others" in proc.stderr
  # Not the 5 minutes of jax.distributed.shutdown's barrier, nor a hang of process 0.
  assert elapsed < 120, elapsed
