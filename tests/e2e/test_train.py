"""The train loop end to end: transfer, freezing, resume after SIGKILL, sharding, the CLI."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptft_jax import data, models, tasks, train
from ptft_jax.errors import CheckpointError
from ptft_jax.parallel import sharding
from ptft_jax.train import checkpoint, steps
from tests import helpers
from tests.helpers import REPO, flat, xla_flags


def tiny_config(task="classification", hidden=(32,)):
  return helpers.tiny_config(steps=6, every=3, task=task, hidden=hidden)


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrain"))
  with pytest.MonkeyPatch.context():
    train.train_and_evaluate(tiny_config("autoencoder"), workdir)
  return workdir


def test_pretraining_writes_config_metrics_and_checkpoints(pretrained_dir):
  with open(os.path.join(pretrained_dir, "config.json")) as f:
    assert json.load(f)["task"]["name"] == "autoencoder"
  records = [json.loads(line) for line in open(os.path.join(pretrained_dir, "metrics.jsonl"))]
  assert [r["step"] for r in records if r["split"] == "train"] == [3, 6]
  assert all("mse" in r for r in records if r["split"] == "validation")
  assert checkpoint.make_manager(pretrained_dir, read_only=True).all_steps() == [3, 6]
  with open(os.path.join(pretrained_dir, "eval_test.json")) as f:
    assert json.load(f)["mse"] > 0


def test_transfer_loads_backbone_and_frozen_stays_bitwise(pretrained_dir, tmp_path):
  c = tiny_config()
  c.init.pretrained_workdir = pretrained_dir
  c.optim.groups = [("backbone/.*", {"frozen": True})]
  c.optim.weight_decay = 0.1  # decay must not touch frozen leaves either
  result = train.train_and_evaluate(c, str(tmp_path))
  report = json.load(open(tmp_path / "transfer_report.json"))
  assert report["loaded"] == [
      "params/backbone/layer_0/bias", "params/backbone/layer_0/kernel"]
  assert report["initialized"] == [
      "params/heads/classifier/logits/bias", "params/heads/classifier/logits/kernel"]
  assert report["ignored"] == [
      "params/heads/decoder/out/bias", "params/heads/decoder/out/kernel"]
  before, _ = checkpoint.load_params(pretrained_dir)
  after, _ = checkpoint.load_params(str(tmp_path))
  b, a = flat(before["params"]["backbone"]), flat(after["params"]["backbone"])
  for path in b:
    np.testing.assert_array_equal(b[path], a[path], err_msg=path)
  head_before = np.asarray(after["params"]["heads"]["classifier"]["logits"]["kernel"])
  assert np.abs(head_before).sum() > 0
  assert 0 <= result["test"]["accuracy"] <= 1 and len(result["test"]["confusion_matrix"]) == 10


def test_transfer_shape_mismatch_lists_every_path(pretrained_dir, tmp_path):
  c = tiny_config(hidden=(16,))
  c.init.pretrained_workdir = pretrained_dir
  with pytest.raises(CheckpointError) as e:
    train.train_and_evaluate(c, str(tmp_path))
  msg = str(e.value)
  assert "2 parameter shape mismatch" in msg
  assert "params/backbone/layer_0/kernel: checkpoint (64, 32) vs model (64, 16)" in msg
  assert "params/backbone/layer_0/bias: checkpoint (32,) vs model (16,)" in msg
  assert "\n" not in msg


def test_missing_pretrained_workdir_is_one_line(tmp_path):
  c = tiny_config()
  c.init.pretrained_workdir = str(tmp_path / "nope")
  with pytest.raises(CheckpointError, match="no checkpoints in .*nope.*pretrained_workdir"):
    train.train_and_evaluate(c, str(tmp_path / "run"))


def test_sharded_step_on_8_devices_equals_1_device():
  assert jax.device_count() == 8
  bundle_info = data.dataset_info("digits")
  task, heads = tasks.build_task(tiny_config(), bundle_info)
  model = models.build_model(tiny_config().model, heads)
  batch = next(data.eval_batches("digits", split="validation", global_batch_size=64))
  batch = {k: v for k, v in batch.items() if k != "valid"}
  params, model_state = steps.init_variables(model, batch, jax.random.PRNGKey(0))
  from ptft_jax import optim

  tx, _ = optim.make_optimizer(params, tiny_config().optim, 10)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sharding.make_mesh({"data": -1}, devices)
    rep = sharding.replicated(mesh)
    state = jax.device_put({"step": jnp.zeros((), jnp.int32), "params": params,
                            "model_state": model_state, "opt_state": tx.init(params),
                            "rng": jax.random.PRNGKey(1)}, rep)
    step = jax.jit(steps.make_train_step(model, task, tx))
    losses = []
    for _ in range(3):
      state, m = step(state, sharding.host_to_global(batch, mesh))
      losses.append(float(m["loss"]))
    assert len(state["params"]["backbone"]["layer_0"]["kernel"].sharding.device_set) == len(
        devices)
    results.append((losses, flat(state["params"])))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  for k in results[0][1]:
    np.testing.assert_allclose(results[0][1][k], results[1][1][k], atol=1e-5, err_msg=k)


def _cli(*args, env_extra=None, **kw):
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run([sys.executable, "-m", "ptft_jax.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, **kw)


def test_resume_after_sigkill_is_bitwise_equal(tmp_path):
  args = ["--config=configs/digits.py", "--config.train.steps=40",
          "--config.train.checkpoint_every=4", "--config.train.eval_every=0",
          "--config.train.log_every=4", "--config.train.tensorboard=False",
          "--config.data.batch_size=32"]
  env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
  _cli(*args, f"--workdir={tmp_path / 'straight'}", env_extra=env).check_returncode()
  killed = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-m", "ptft_jax.main", *args, f"--workdir={killed}",
                           "--config.train.log_every=1"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True)
  for line in proc.stdout:  # kill mid-run, after some checkpoint has been written
    if line.startswith("step 14/"):
      os.kill(proc.pid, signal.SIGKILL)
      break
  proc.wait()
  assert proc.returncode == -signal.SIGKILL
  steps_left = checkpoint.make_manager(str(killed), read_only=True).all_steps()
  assert steps_left and max(steps_left) < 40
  resumed = _cli(*args, f"--workdir={killed}", env_extra=env)
  resumed.check_returncode()
  assert f"resumed from {killed}/checkpoints at step" in resumed.stdout
  a, _ = checkpoint.load_params(str(tmp_path / "straight"))
  b, _ = checkpoint.load_params(str(killed))
  fa, fb = flat(a), flat(b)
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def test_quickstart_tiny_through_cli(tmp_path):
  r = _cli("--config=configs/quickstart.py:tiny", f"--workdir={tmp_path}")
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.load(open(tmp_path / "summary.json"))
  assert set(summary) == {"pretrained", "scratch"}
  for s in summary.values():
    assert 0 <= s["test_accuracy"] <= 1 and 0 <= s["test_macro_f1"] <= 1
  assert (tmp_path / "validation_curves.png").stat().st_size > 1000
  assert "pretrained" in r.stdout and "test accuracy" in r.stdout
  report = json.load(open(tmp_path / "pretrained" / "transfer_report.json"))
  assert "params/backbone/conv_0/kernel" in report["loaded"]
  assert not os.path.exists(tmp_path / "scratch" / "transfer_report.json")


def test_cli_typo_key_suggests_the_right_one(tmp_path):
  r = _cli("--config=configs/digits.py", f"--workdir={tmp_path}", "--config.optim.lrr=0.1")
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      "error: unknown config key 'optim.lrr'; did you mean 'optim.lr'?")
  assert not os.path.exists(tmp_path / "config.json")


def test_cli_changed_config_in_existing_workdir_is_refused(pretrained_dir):
  r = _cli("--config=configs/digits.py", f"--workdir={pretrained_dir}",
           "--config.optim.lr=0.5")
  assert r.returncode == 2
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: workdir {pretrained_dir} holds a run with a different config")
  assert "Traceback" not in r.stderr
