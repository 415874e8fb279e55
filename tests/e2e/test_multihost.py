"""Multi-host: 2 local processes x 4 devices (real CLI, jax.distributed on localhost) against
1 process x 8 devices, and their checkpoint restored on 4 devices with explicit shardings."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from ptft_jax import data, models, optim, tasks, train
from ptft_jax.parallel import sharding
from ptft_jax.train import checkpoint, reports, steps
from tests.helpers import REPO, load_config

# One experiment, the same in both runs: fine-tunes a digits MLP from a params-only
# checkpoint (so the 2-process run also restores on 2 processes) on data=2 x fsdp=2 x
# tensor=2. SGD with big steps: the two runs sum in different orders (rows interleave
# over processes, Gloo all-reduces), and Adam's first steps would blow that float noise in
# near-zero gradients up to ~lr; SGD keeps it at noise level, so the comparison is tight.
OVERRIDES = {
    "model.hidden_sizes": (32,), "data.batch_size": 32, "data.eval_batch_size": 64,
    "train.steps": 4, "train.log_every": 1, "train.eval_every": 0, "train.checkpoint_every": 2,
    "train.tensorboard": False, "mesh.fsdp": 2, "mesh.tensor": 2,
    "eval_splits": ("validation",), "optim.name": "sgd", "optim.lr": 0.1,
    "optim.warmup_steps": 0,
}


def _digits_config(pretrained: str):
  c = load_config("digits", "mlp")
  for key, value in {**OVERRIDES, "init.pretrained_workdir": pretrained}.items():
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _train_losses(workdir) -> dict[int, tuple[float, float]]:
  return {r["step"]: (r["loss"], r["grad_norm"]) for r in reports.read_metrics(str(workdir),
                                                                             "train")}


def _model_and_tx(config):
  task, heads = tasks.build_task(config, data.dataset_info("digits"))
  model = models.build_model(config.model, heads)
  batch = {"image": np.zeros((2, 8, 8, 1), np.float32)}
  return model, (lambda params: optim.make_optimizer(params, config.optim, 4)[0]), batch


def test_two_processes_match_one_and_their_checkpoint_restores_on_4_devices(tmp_path):
  # A params-only "pretrained" checkpoint (an init with another seed) for both runs to load.
  config = _digits_config(str(tmp_path / "pretrained"))
  model, make_tx, batch = _model_and_tx(config)
  params, model_state = steps.init_variables(model, batch, jax.random.PRNGKey(7))
  checkpoint.save_pretrained(str(tmp_path / "pretrained"), params, model_state=model_state)

  single = tmp_path / "single"
  train.train_and_evaluate(config, str(single))  # 1 process x 8 devices

  multi = tmp_path / "multi"
  args = [f"--config.{k}={v}" for k, v in OVERRIDES.items()]
  proc = subprocess.run(
      ["bash", "launch/local_multiprocess.sh", "2", "--config=configs/digits.py:mlp",
       f"--workdir={multi}", f"--config.init.pretrained_workdir={tmp_path / 'pretrained'}",
       *args],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, "PYTHON": sys.executable, "PTFT_LOCAL_DEVICES": "4",
           "PTFT_LOG_DIR": str(tmp_path / "logs")})
  logs = proc.stdout + proc.stderr + "".join(
      open(tmp_path / "logs" / n).read() for n in os.listdir(tmp_path / "logs"))
  assert proc.returncode == 0, logs[-3000:]
  assert "mesh {'data': 2, 'fsdp': 2, 'tensor': 2}" in proc.stdout  # 2 x 4 devices

  # The same experiment (config.json), the same transfer, losses and evaluation.
  read = lambda d, n: json.load(open(d / n))
  assert read(multi, "config.json") == read(single, "config.json")
  assert read(multi, "transfer_report.json") == read(single, "transfer_report.json")
  losses, reference = _train_losses(multi), _train_losses(single)
  assert sorted(losses) == [1, 2, 3, 4] and reference[4][0] < reference[1][0] - 0.03  # trains
  np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                             [reference[s] for s in sorted(losses)], rtol=1e-5)
  ev, ev_ref = read(multi, "eval_validation.json"), read(single, "eval_validation.json")
  assert ev["accuracy"] == ev_ref["accuracy"] and ev["confusion_matrix"] == ev_ref[
      "confusion_matrix"]  # every validation example once, gathered from both processes
  np.testing.assert_allclose(ev["loss"], ev_ref["loss"], rtol=1e-5)

  # Its checkpoint (written by both processes, 8 devices) restores on 4 devices into
  # explicit target shardings (fsdp=2 x tensor=2 there).
  mesh4 = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 2}, jax.devices()[:4])
  layout = sharding.Layout.from_config(config, mesh4)
  tx = make_tx(params)
  abstract = {"step": jnp.int32(0), "params": params, "model_state": model_state,
              "opt_state": jax.eval_shape(tx.init, params), "rng": jax.random.PRNGKey(0)}
  target = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=s),
      abstract, layout.state_shardings(abstract))
  manager = checkpoint.make_manager(str(multi), read_only=True)
  assert manager.all_steps() == [2, 4]
  restored = checkpoint.restore(manager, target)
  manager.close()
  assert int(restored["step"]) == 4
  kernel = restored["params"]["backbone"]["layer_0"]["kernel"]  # [64, 32]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert kernel.sharding.shard_shape(kernel.shape) == (32, 16)
  assert len(kernel.sharding.device_set) == 4
  final, _ = checkpoint.load_params(str(single))
  for got, want in zip(jax.tree_util.tree_leaves(restored["params"]),
                       jax.tree_util.tree_leaves(final["params"]), strict=True):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
