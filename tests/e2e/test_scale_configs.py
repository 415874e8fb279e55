"""configs/bert.py:large and configs/decoder_1b.py: shapes at full size, a tiny run each.

Full size is never allocated: `jax.eval_shape` gives the parameter shapes and
memory.estimate the per-device bytes on an abstract 8-device mesh, which must
match the figures the configs' docstrings state.
"""

import importlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType

from ptft_jax import optim
from ptft_jax.models import build_model
from ptft_jax.models.heads import CausalLMHead, MaskedLMHead, NextSentenceHead
from ptft_jax.parallel import memory, sharding
from ptft_jax.train import loop, steps
from tests.helpers import load_config

pytestmark = pytest.mark.usefixtures("fast_prng_compile")


def abstract_run(config, devices: int = 8):
  """(state, layout, example) of `config` as ShapeDtypeStructs on an abstract fsdp mesh.

  The heads are the task's (masked LM + NSP, or the tied causal-LM layer); nothing
  is allocated and no data is read.
  """
  seq = config.data.seq_len
  example = {"input_ids": jax.ShapeDtypeStruct((2, seq), jnp.int32),
             "attention_mask": jax.ShapeDtypeStruct((2, seq), jnp.int32)}
  if config.task.name == "masked_lm":
    heads = {"mlm": MaskedLMHead(), "nsp": NextSentenceHead()}
    example["token_type_ids"] = jax.ShapeDtypeStruct((2, seq), jnp.int32)
    example["masked_positions"] = jax.ShapeDtypeStruct(
        (2, config.task.max_predictions_per_seq), jnp.int32)
  else:
    heads = {"lm": CausalLMHead(tied=config.task.tied)}
  model = build_model(optim.precision.model_config(config), heads)
  params, model_state = jax.eval_shape(
      lambda r, b: steps.init_variables(model, b, r), jax.random.PRNGKey(0), example)
  tx, _ = optim.make_optimizer(params, config.optim, int(config.train.steps))
  state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params,
           "model_state": model_state, "opt_state": jax.eval_shape(tx.init, params),
           "rng": jax.eval_shape(jax.random.PRNGKey, 0)}
  sizes = sharding.mesh_shape(config.mesh, devices)
  mesh = AbstractMesh(sizes, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return state, sharding.Layout.from_config(config, mesh), example


def _params_formula(layers, hidden, ffn, vocab, positions, *, bert: bool) -> int:
  """Parameters of the transformer layout (every kernel with its bias, LayerNorms 2h)."""
  h = hidden
  layer = 4 * (h * h + h) + (h * ffn + ffn) + (ffn * h + h) + 2 * 2 * h
  total = layers * layer + vocab * h + positions * h + 2 * h  # + embedding or final norm
  if bert:  # token types; pooler; MLM transform, its norm, output bias; NSP
    total += 2 * h + (h * h + h) + (h * h + h) + 2 * h + vocab + (2 * h + 2)
  return total


def _doc_gib(name: str) -> float:
  """The '~X GiB per device' figure of configs/<name>.py's Expected line."""
  doc = importlib.import_module(f"configs.{name}").__doc__
  return float(re.search(r"gives ~([\d.]+) GiB per device", doc).group(1))


@pytest.mark.parametrize("name,arg,expected_params", [
    ("bert", "large", _params_formula(24, 1024, 4096, 30522, 512, bert=True)),
    ("decoder_1b", "", _params_formula(18, 2048, 8192, 32000, 2048, bert=False))])
def test_full_size_shapes_and_memory_without_allocating(name, arg, expected_params):
  config = load_config(name, arg)
  state, layout, example = abstract_run(config)
  n = memory.tree_size(state["params"])
  assert n == expected_params
  assert (330e6 < n < 340e6) if name == "bert" else (0.95e9 < n < 1.05e9)
  assert dict(layout.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  assert config.model.remat == "full" and config.train.compute_dtype == "bfloat16"
  total = memory.estimate(state, layout, config=config, example=example)["total"]
  assert round(total / memory.GIB, 1) == _doc_gib(name)  # the docstring says what is computed
  config.train.device_memory_gib = 16.0
  assert memory.check_fits(state, layout, config=config, example=example) == total


@pytest.mark.parametrize("name,arg", [("bert", "large,tiny"), ("decoder_1b", "tiny")])
def test_tiny_variant_runs_two_steps_on_fsdp_8(name, arg, tmp_path, capsys):
  config = load_config(name, arg)
  full = load_config(name, arg.replace("tiny", "").strip(","))
  for key in ("remat",):  # the family: remat, mesh, compute dtype, sharding rules
    assert config.model[key] == full.model[key]
  assert config.mesh == full.mesh and config.sharding == full.sharding
  assert config.train.compute_dtype == full.train.compute_dtype
  assert config.train.steps == 2
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in out
  assert re.search(r"per device: params .* = ~[\d.]+ [KM]iB per step \(batch 2/device, "
                   r"remat=full\)", out), out
  assert np.isfinite(result["validation"]["loss"])
