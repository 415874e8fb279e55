"""Reliability: preemption (SIGTERM), the NaN / Inf policy, unfinished and failed saves,
--overwrite, atomic result files. Exact resume after SIGKILL is in test_train.py and
launch/fault_injection.py."""

import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from ptft_jax import tasks, train
from ptft_jax.errors import CheckpointError, ConfigError, NonFiniteError
from ptft_jax.train import checkpoint, loop, preemption, steps
from ptft_jax.utils import write_json_atomic
from tests.helpers import REPO, tiny_config

pytestmark = pytest.mark.usefixtures("compile_cache")


def small_config(**train):
  """8 steps, logged, evaluated and saved every 4, every checkpoint kept."""
  return tiny_config(steps=8, every=4, train__keep=10, eval_splits=("validation",),
                     **{f"train__{k}": v for k, v in train.items()})


def _params(workdir, step=None):
  params, _ = checkpoint.load_params(str(workdir), step=step)
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(params)}


def _assert_bitwise(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """An uninterrupted run: its workdir and final parameters."""
  workdir = tmp_path_factory.mktemp("straight")
  train.train_and_evaluate(small_config(), str(workdir))
  return workdir, _params(workdir)


def _on_batch(monkeypatch, calls: dict[int, callable]):
  """Runs calls[n] when the loop asks for its n-th train batch (n=1: the first step's)."""
  real, count = tasks.model_batch, [0]

  def model_batch(task, batch):
    out = real(task, batch)
    if "valid" not in batch:  # a train batch (the model's example batch is an eval batch)
      count[0] += 1
      if count[0] in calls:
        out = calls[count[0]](out) or out
    return out

  monkeypatch.setattr(tasks, "model_batch", model_batch)


def _sigterm(*_):
  os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_compile_step_and_eval_saves_and_resumes_bitwise(
    straight, tmp_path, monkeypatch):
  handler = signal.getsignal(signal.SIGTERM)
  # 1) during the first compilation: the flag is seen after step 1, which is saved.
  real_make = steps.make_train_step

  def make_train_step(*a, **k):
    step = real_make(*a, **k)
    return lambda state, batch: (_sigterm(), step(state, batch))[1]  # runs at trace time

  with monkeypatch.context() as m, preemption.watch():  # what the CLI does around everything
    m.setattr(steps, "make_train_step", make_train_step)
    with pytest.raises(preemption.Preempted, match=r"saved step 1 .*same command"):
      train.train_and_evaluate(small_config(), str(tmp_path))
  assert checkpoint.complete_steps(str(tmp_path)) == [1]
  assert signal.getsignal(signal.SIGTERM) == handler and not preemption.requested()

  # 2) during step 3 (the 2nd step of this resumed run): step 3 is saved, not 4.
  with monkeypatch.context() as m, preemption.watch():
    _on_batch(m, {2: _sigterm})
    with pytest.raises(preemption.Preempted) as e:
      train.train_and_evaluate(small_config(), str(tmp_path))
  assert e.value.step == 3 and checkpoint.complete_steps(str(tmp_path)) == [1, 3]

  # 3) during the evaluation at step 4: the evaluation ends (it is part of the run's
  # history), step 4 is saved, and the run exits before step 5.
  real_eval, seen = loop.evaluate, []

  def evaluate(*a, **k):
    _sigterm()
    result = real_eval(*a, **k)
    seen.append(result)
    return result

  with monkeypatch.context() as m, preemption.watch():
    m.setattr(loop, "evaluate", evaluate)
    with pytest.raises(preemption.Preempted) as e:
      train.train_and_evaluate(small_config(), str(tmp_path))
  assert e.value.step == 4 and len(seen) == 1 and 0 <= seen[0]["accuracy"] <= 1
  assert checkpoint.complete_steps(str(tmp_path)) == [1, 3, 4]
  evals = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in evals if r["split"] == "validation"] == [4]

  train.train_and_evaluate(small_config(), str(tmp_path))
  _assert_bitwise(_params(tmp_path), straight[1])
  assert signal.getsignal(signal.SIGTERM) == handler  # the library alone leaves it alone


def test_a_request_is_served_once(straight, tmp_path):
  preemption.request()  # e.g. from a launcher thread: stop at the next step
  with pytest.raises(preemption.Preempted) as e:
    train.train_and_evaluate(small_config(), str(tmp_path))
  assert e.value.step == 0 and checkpoint.complete_steps(str(tmp_path)) == [0]
  assert not preemption.requested()
  train.train_and_evaluate(small_config(), str(tmp_path))
  _assert_bitwise(_params(tmp_path), straight[1])


def test_sigterm_to_the_cli_saves_and_exits_0(tmp_path):
  args = [sys.executable, "-m", "ptft_jax.main", "--config=configs/digits.py",
          f"--workdir={tmp_path}", "--config.model.hidden_sizes=(32,)",
          "--config.train.steps=400", "--config.train.log_every=1",
          "--config.train.checkpoint_every=1000", "--config.train.eval_every=0",
          "--config.train.tensorboard=False", "--config.eval_splits=('validation',)"]
  proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  for line in proc.stdout:
    if line.startswith("step 5/"):
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  saved = checkpoint.complete_steps(str(tmp_path))
  assert len(saved) == 1 and 5 <= saved[0] < 400
  assert f"preempted: saved step {saved[0]} in {tmp_path}/checkpoints" in out
  assert "Traceback" not in err


def _nan_images(batch):
  return {**batch, "image": np.full_like(batch["image"], np.nan)}


def test_nan_stops_naming_the_step_and_never_saves_it(tmp_path, monkeypatch):
  _on_batch(monkeypatch, {3: _nan_images})
  c = small_config(log_every=8, checkpoint_every=2, eval_every=0)
  with pytest.raises(NonFiniteError) as e:  # raised before the save at step 4
    train.train_and_evaluate(c, str(tmp_path))
  msg = str(e.value)
  assert "non-finite loss or gradient at step 3 (loss nan)" in msg
  assert "config.train.nan_policy='skip'" in msg and "\n" not in msg
  assert checkpoint.complete_steps(str(tmp_path)) == [2]


def test_nan_skip_keeps_the_state_then_stops_after_too_many(tmp_path, monkeypatch):
  c = small_config(nan_policy="skip", max_consecutive_skips=2, log_every=2,
                   checkpoint_every=2, eval_every=0, steps=6)
  with monkeypatch.context() as m:
    _on_batch(m, {3: _nan_images, 4: _nan_images})
    train.train_and_evaluate(c, str(tmp_path / "a"))
  _assert_bitwise(_params(tmp_path / "a", 2), _params(tmp_path / "a", 4))  # 3, 4 skipped
  after = _params(tmp_path / "a", 6)
  assert all(np.isfinite(v).all() for v in after.values())
  kernel = "['params']['backbone']['layer_0']['kernel']"
  assert not np.array_equal(after[kernel], _params(tmp_path / "a", 4)[kernel])
  records = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
  assert [r["skipped_steps"] for r in records if r["split"] == "train"] == [0, 2, 0]

  with monkeypatch.context() as m:
    _on_batch(m, {3: _nan_images, 4: _nan_images, 5: _nan_images})
    with pytest.raises(NonFiniteError, match=r"3 non-finite steps in a row \(the last at step "
                       r"5\) exceed config.train.max_consecutive_skips=2"):
      train.train_and_evaluate(c, str(tmp_path / "b"))
  assert checkpoint.complete_steps(str(tmp_path / "b")) == [2, 4]


def test_nan_policy_is_checked(tmp_path):
  with pytest.raises(ConfigError, match="config.train.nan_policy='ignore': choose 'stop' or"):
    train.train_and_evaluate(small_config(nan_policy="ignore"), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


_KILL_DURING_SAVE = """
import os, sys
import jax, jax.numpy as jnp
from orbax.checkpoint._src.path import atomicity
from ptft_jax.train import checkpoint
manager = checkpoint.make_manager(sys.argv[1])
state = {"step": jnp.int32(1), "params": {"w": jnp.ones((64, 64))}, "model_state": {},
         "opt_state": {"m": jnp.zeros((64, 64))}, "rng": jax.random.PRNGKey(0)}
checkpoint.save(manager, state)
checkpoint.wait(manager)
async def die(self, *args, **kwargs):  # the moment between writing the data and the commit
  os._exit(9)
atomicity.AtomicRenameTemporaryPath.finalize = die
checkpoint.save(manager, {**state, "step": jnp.int32(2), "params": {"w": jnp.zeros((64, 64))}})
checkpoint.wait(manager)
"""


def test_kill_during_save_is_ignored_then_cleaned_up(tmp_path):
  r = subprocess.run([sys.executable, "-c", _KILL_DURING_SAVE, str(tmp_path)], cwd=REPO,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 9, r.stderr[-2000:]
  directory = tmp_path / "checkpoints"
  left = sorted(os.listdir(directory))
  assert left[0] == "1" and left[1].startswith("2.orbax-checkpoint-tmp") and len(left) == 2
  shutil.copytree(directory / "1", directory / "5")  # a deletion killed half way:
  os.remove(directory / "5" / checkpoint.COMMIT_FILE)  # no commit file left
  assert checkpoint.complete_steps(str(tmp_path)) == [1]
  params, step = checkpoint.load_params(str(tmp_path))  # reads never remove anything
  assert step == 1 and np.all(np.asarray(params["params"]["w"]) == 1)
  assert len(os.listdir(directory)) == 3
  checkpoint.make_manager(str(tmp_path)).close()  # a writable manager cleans up
  assert os.listdir(directory) == ["1"]


def test_failed_background_commit_surfaces_at_next_save_and_wait(tmp_path, monkeypatch):
  from orbax.checkpoint._src.path import atomicity

  manager = checkpoint.make_manager(str(tmp_path))
  state = {"step": jax.numpy.int32(1), "params": {"w": jax.numpy.ones(3)}, "model_state": {},
           "opt_state": {}, "rng": jax.random.PRNGKey(0)}
  checkpoint.save(manager, state)
  checkpoint.wait(manager)

  async def disk_full(self, *args, **kwargs):
    raise OSError("No space left on device")

  with monkeypatch.context() as m:
    m.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
    checkpoint.save(manager, {**state, "step": jax.numpy.int32(2)})
    with pytest.raises(CheckpointError, match=r"failed \(OSError: No space left on device\); "
                       r"it is not saved; the latest complete checkpoint: step 1"):
      checkpoint.save(manager, {**state, "step": jax.numpy.int32(3)})
    checkpoint.save(manager, {**state, "step": jax.numpy.int32(4)})
    with pytest.raises(CheckpointError, match="No space left"):
      checkpoint.wait(manager)
  assert checkpoint.complete_steps(str(tmp_path)) == [1]
  manager.close()


def test_overwrite_moves_the_old_run_aside(straight, tmp_path):
  old = tmp_path / "run"
  shutil.copytree(straight[0], old)
  changed = small_config(steps=2)
  changed.optim.lr = 0.01
  with pytest.raises(ConfigError, match=r"optim.lr: 0.001 -> 0.01\); use a new --workdir, or "
                     "pass --overwrite"):
    train.train_and_evaluate(changed, str(old))
  train.train_and_evaluate(changed, str(old), overwrite=True)
  aside = [p for p in os.listdir(tmp_path) if p.startswith("run.old-")]
  assert len(aside) == 1
  _assert_bitwise(_params(tmp_path / aside[0]), straight[1])  # untouched, just renamed
  assert json.load(open(old / "config.json"))["optim"]["lr"] == 0.01
  assert checkpoint.complete_steps(str(old)) == [2]
  train.train_and_evaluate(changed, str(old), overwrite=True)  # same config: resumes
  assert len([p for p in os.listdir(tmp_path) if p.startswith("run.old-")]) == 1


def test_a_run_that_failed_before_saving_does_not_block_the_fixed_one(tmp_path):
  bad = small_config(steps=2)
  bad.optim.name = "adamx"
  with pytest.raises(ConfigError, match="unknown optimizer 'adamx'"):
    train.train_and_evaluate(bad, str(tmp_path))
  assert os.path.exists(tmp_path / "config.json")
  train.train_and_evaluate(small_config(steps=2), str(tmp_path))
  assert checkpoint.complete_steps(str(tmp_path)) == [2]


def test_result_json_is_replaced_atomically(tmp_path):
  path = str(tmp_path / "eval_test.json")
  write_json_atomic(path, {"accuracy": 0.5})
  with pytest.raises(TypeError):
    write_json_atomic(path, {"accuracy": object()})  # fails half way through writing
  assert json.load(open(path)) == {"accuracy": 0.5}
  assert os.listdir(tmp_path) == ["eval_test.json"]
