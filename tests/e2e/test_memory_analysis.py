"""memory.estimate against XLA's own buffer assignment of the real compiled train step.

`compiled.memory_analysis()` on the 8 simulated CPU devices is per device:
arguments + outputs - aliased (the donated state) + temporaries is what one
step holds at once. The estimate (parallel/memory.py) must be within 20% of it
for a BERT and a GPT config at fsdp 1 and fsdp 8.
"""

import contextlib

import jax
import jax.numpy as jnp
import pytest

from ptft_jax import data, optim, tasks
from ptft_jax.errors import ConfigError
from ptft_jax.models import build_model
from ptft_jax.parallel import memory, sharding
from ptft_jax.train import loop, steps
from tests.helpers import load_config


@contextlib.contextmanager
def _gspmd():
  """GSPMD instead of Shardy for the fsdp=8 step (why: the test of that name below)."""
  old = jax.config.jax_use_shardy_partitioner
  jax.config.update("jax_use_shardy_partitioner", False)
  try:
    yield
  finally:
    jax.config.update("jax_use_shardy_partitioner", old)


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
  step = jax.jit(steps.make_train_step(model, task, tx, trainable=trainable),
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


@pytest.mark.parametrize("name,fsdp", [("bert", 1), ("gpt", 1), ("bert", 8), ("gpt", 8)])
def test_estimate_within_20_percent_of_xla(name, fsdp):
  # Measured (jax 0.10.2, CPU): bert 1.04 / 0.85, gpt 0.97 / 0.87 of XLA at fsdp 1 / 8.
  with _gspmd() if fsdp > 1 else contextlib.nullcontext():
    est, xla = _compare(name, fsdp)
  assert 0.8 <= est / xla <= 1.2, f"{name} fsdp={fsdp}: estimate {est:,} B, XLA {xla:,} B"


@pytest.mark.xfail(reason="Shardy all-gathers the activations over the batch", strict=False)
def test_shardy_fsdp_step_keeps_activations_sharded():
  # With the default partitioner (Shardy, jax 0.10.2) the fsdp=8 GPT step all-gathers its
  # activations over the batch (an f32[32, 128, 4096] all-gather of the logits) instead of
  # the weights: 216 MB of temporaries against 47 MB under GSPMD, which gathers the weights
  # as FSDP should. Activation sharding constraints in the model would fix it; until then
  # the estimate (which assumes FSDP) is low for fsdp > 1 under Shardy.
  est, xla = _compare("gpt", 8)
  assert 0.8 <= est / xla <= 1.2, f"estimate {est:,} B, XLA {xla:,} B"


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
