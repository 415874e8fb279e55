"""memory.estimate against XLA's own buffer assignment of the real compiled train step.

`compiled.memory_analysis()` on the 8 simulated CPU devices is per device:
arguments + outputs - aliased (the donated state) + temporaries is what one
step holds at once. The estimate (parallel/memory.py) must be within 20% of it
for a BERT and a GPT config at fsdp 1 and fsdp 8, looped and scanned. The steps are
traced with the mesh in context (sharding.traced_in, as the train loop does), so the
layers keep their activations split over the batch; Shardy (jax's default) and GSPMD
then give the same buffer sizes.
"""

import jax
import jax.numpy as jnp
import pytest

from ptft_jax import data, optim, tasks
from ptft_jax.errors import ConfigError
from ptft_jax.models import build_model
from ptft_jax.parallel import memory, sharding
from ptft_jax.train import loop, steps
from tests.helpers import load_config


def _setup(name: str, fsdp: int, **model):
  """The abstract state, layout, step and batch of `configs/<name>.py:tiny` on data x fsdp = 8.

  Built as ptft_jax/train/loop.py builds them, from shapes only (nothing is allocated).
  Returns (config, layout, trainable, example, state, jitted step, batch).
  """
  config = load_config(name, "tiny")
  config.model.update(model)
  config.mesh.data, config.mesh.fsdp = 8 // fsdp, fsdp
  mesh = sharding.make_mesh(config.mesh)
  bundle = data.make_data(config.data, seed=0)
  task, heads = tasks.build_task(config, bundle.info)
  model = build_model(optim.precision.model_config(config), heads)
  example = loop._example_inputs(task, bundle)
  layout = sharding.Layout.from_config(config, mesh)
  params, model_state = jax.eval_shape(
      lambda r: steps.init_variables(model, example, r), jax.random.PRNGKey(0))
  tx, groups = optim.make_optimizer(params, config.optim, 10)
  trainable = optim.trainable_mask(params, groups)
  state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
           "model_state": model_state, "opt_state": jax.eval_shape(tx.init, params),
           "rng": jax.eval_shape(jax.random.PRNGKey, 0)}
  shardings = layout.state_shardings(state)
  state = jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
           for k, v in tasks.model_batch(task, next(bundle.train_iterator)).items()}
  step = jax.jit(sharding.traced_in(mesh, steps.make_train_step(model, task, tx,
                                                                 trainable=trainable)),
                 donate_argnums=(0,), out_shardings=(shardings, None))
  return config, layout, trainable, example, state, step, batch


def _xla_bytes(step, state, batch) -> int:
  """What XLA's buffer assignment holds per device for one step."""
  m = step.lower(state, batch).compile().memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def _compare(name: str, fsdp: int, **model) -> tuple[int, int]:
  config, layout, trainable, example, state, step, batch = _setup(name, fsdp, **model)
  est = memory.estimate(state, layout, trainable, config=config, example=example)["total"]
  return est, _xla_bytes(step, state, batch)


@pytest.mark.parametrize("name,fsdp,scan", [
    ("bert", 1, False), ("gpt", 1, False), ("bert", 8, False), ("gpt", 8, False),
    ("bert", 8, True), ("gpt", 8, True)])
def test_estimate_within_20_percent_of_xla(name, fsdp, scan):
  # Measured (jax 0.10.2, CPU), estimate / XLA: looped bert 1.08 / 0.92, gpt 1.00 / 0.87 at
  # fsdp 1 / 8; scanned (model.scan_layers) at fsdp 8: bert 0.98, gpt 1.01. Scanned at fsdp
  # 8 was 0.20 / 0.19 before the layers constrained their activations to the batch split.
  est, xla = _compare(name, fsdp, scan_layers=scan)
  assert 0.8 <= est / xla <= 1.2, (
      f"{name} fsdp={fsdp} scan={scan}: estimate {est:,} B, XLA {xla:,} B")


def test_a_config_that_does_not_fit_says_so_and_what_would():
  config, layout, trainable, example, state, _, _ = _setup("gpt", 1)
  assert memory.device_limit_bytes(config) is None  # CPU reports no bytes_limit: no check
  assert memory.check_fits(state, layout, trainable, config=config, example=example) is None
  parts = memory.estimate(state, layout, trainable, config=config, example=example)
  limit = int(parts["total"] * 0.85)
  config.train.device_memory_gib = limit / memory.GIB
  with pytest.raises(ConfigError) as error:
    memory.check_fits(state, layout, trainable, config=config, example=example)
  message = str(error.value)
  assert "\n" not in message
  assert message.startswith(
      f"the train step needs ~{memory._fmt(parts['total'])} per device with fsdp=1, "
      "remat=none (logits ")
  assert f"but a device has {memory._fmt(limit)}" in message
  fits = memory.fitting_settings(state, layout, trainable, config=config, example=example,
                                 limit=limit)
  assert fits and "it would fit with --config.mesh.fsdp=" in message
  for fsdp, remat, total in fits:  # each suggestion checked on a real mesh of that shape
    assert f"--config.mesh.fsdp={fsdp} --config.mesh.data=-1 --config.model.remat={remat}" in (
        message)
    c, lay, tr, ex, st, _, _ = _setup("gpt", fsdp, remat=remat)
    assert memory.estimate(st, lay, tr, config=c, example=ex)["total"] == total <= limit
    if fsdp > 1:  # and it is the smallest fsdp that fits with that remat policy
      c, lay, tr, ex, st, _, _ = _setup("gpt", fsdp // 2, remat=remat)
      assert memory.estimate(st, lay, tr, config=c, example=ex)["total"] > limit

  config.train.device_memory_gib = 1e-4  # 105 KiB: nothing fits
  with pytest.raises(ConfigError, match=r"no fsdp up to 8 devices or remat fits: lower "
                                        r"config.data.batch_size"):
    memory.check_fits(state, layout, trainable, config=config, example=example)


def test_prediction_traced_in_the_mesh_keeps_activations_batch_split():
  """The predictor's forward (and the generator's) is traced with the mesh in context, as the
  train step is: without it a scanned stack at fsdp=8 runs every activation at the full batch.
  Measured: 34.2 MB of temporaries per device plain, 5.9 MB traced in the mesh."""
  import ml_collections
  import numpy as np

  from ptft_jax.models import heads

  config = ml_collections.ConfigDict(dict(
      name="bert", vocab_size=1024, hidden_size=128, num_layers=4, num_heads=4,
      intermediate_size=512, max_position_embeddings=128, scan_layers=True))
  model = build_model(config, {"classifier": heads.SequenceClassificationHead(2)})
  mesh = sharding.make_mesh({"fsdp": 8})
  ids = np.zeros((64, 128), np.int32)
  batch = {"input_ids": ids, "attention_mask": ids + 1, "token_type_ids": ids}
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))["params"]
  place = lambda tree, shardings: jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
  abstract_params = place(params, sharding.param_shardings(params, mesh))
  abstract_batch = place(batch, jax.tree_util.tree_map(
      lambda _: sharding.batch_sharding(mesh), batch))
  forward = lambda p, b: model.apply({"params": p}, b, train=False)["classifier"]
  temp = {name: jax.jit(fn).lower(abstract_params, abstract_batch).compile()
          .memory_analysis().temp_size_in_bytes
          for name, fn in (("plain", forward), ("traced", sharding.traced_in(mesh, forward)))}
  assert temp["traced"] < temp["plain"] / 3, temp
