"""HF decoder imports sharded on fsdp=8 (8 simulated devices, tests/conftest.py): each device
reads its slice of the safetensors file; values equal the host load exactly and logits match
transformers'. Also the scanned-layer layout and the workdir import on a mesh.
"""

import os

import jax
import numpy as np
import pytest

import ptft_jax as pj
from ptft_jax.convert import hf_decoder
from ptft_jax.convert import workdir as convert_workdir
from ptft_jax.models import causal_lm_logits
from ptft_jax.parallel import sharding
from ptft_jax.train import placement
from tests.helpers import FIXTURES, flat

ARCHS = ("gpt2", "llama", "mistral", "qwen2", "gemma")


def _dir(arch: str) -> str:
  return os.path.join(FIXTURES, "hf_decoders", arch)


def _reference(arch: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(_dir(arch), "reference.npz"), allow_pickle=False) as f:
    return dict(f)


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh({"fsdp": 8})


def _check_sharded(tree, host):
  """Leaf by leaf equal to the host load; device 0 holds 1/8 of every matrix (1-D leaves,
  norm scales and biases, replicate under the default rules)."""
  got, want = flat(tree), flat(host)
  assert sorted(got) == sorted(want)
  for path, value in want.items():
    np.testing.assert_array_equal(got[path], value, err_msg=path)
  bound = sum(v.nbytes / 8 if v.ndim > 1 else v.nbytes for v in want.values())
  assert placement.bytes_on(tree, jax.devices()[0]) <= bound


@pytest.mark.parametrize("arch", ARCHS)
def test_sharded_load_gives_the_same_params_and_logits(mesh, arch):
  config, host = hf_decoder.load_hf_decoder(_dir(arch))
  _, params = hf_decoder.load_hf_decoder(
      _dir(arch), placement=placement.placer(placement.layout(mesh)))
  assert params["backbone"]["layer_0"]["mlp"]["output"]["kernel"].sharding.spec[1] == "fsdp"
  _check_sharded(params, host)
  ref = _reference(arch)
  logits = np.asarray(causal_lm_logits(config, params, ref["input_ids"]))
  host_logits = np.asarray(causal_lm_logits(config, host, ref["input_ids"]))
  assert np.max(np.abs(logits - host_logits)) <= 1e-5
  assert np.max(np.abs(logits - ref["logits"])) <= 1e-4


def test_packed_qkv_split_across_tensor_parallel_columns():
  """GPT-2's c_attn [hidden, 3 * hidden] on fsdp=2 x tensor=4: each device reads a column
  block of q, k or v, offset into the packed tensor."""
  mesh = sharding.make_mesh({"fsdp": 2, "tensor": 4})
  config, host = hf_decoder.load_hf_decoder(_dir("gpt2"))
  _, params = hf_decoder.load_hf_decoder(
      _dir("gpt2"), placement=placement.placer(placement.layout(mesh)))
  for part in ("query", "key", "value"):
    for leaf in ("kernel", "bias"):
      value = params["backbone"]["layer_1"]["attention"][part][leaf]
      assert value.sharding.spec[-1] == "tensor", (part, leaf, value.sharding.spec)
      np.testing.assert_array_equal(value, host["backbone"]["layer_1"]["attention"][part][leaf])
  ref = _reference("gpt2")
  logits = np.asarray(causal_lm_logits(config, params, ref["input_ids"]))
  assert np.max(np.abs(logits - ref["logits"])) <= 1e-4


def test_scanned_layers(mesh):
  config, params = hf_decoder.load_hf_decoder(
      _dir("llama"), scan_layers=True, placement=placement.placer(placement.layout(mesh)))
  assert params["backbone"]["layers"]["attention"]["key"]["kernel"].shape == (2, 32, 16)
  ref = _reference("llama")
  logits = np.asarray(causal_lm_logits(config, params, ref["input_ids"]))
  assert np.max(np.abs(logits - ref["logits"])) <= 1e-4


def test_import_on_a_mesh_and_load_params(mesh, tmp_path):
  out = str(tmp_path / "w")
  config, task = convert_workdir.import_hf_decoder(_dir("gemma"), out, mesh=mesh)
  assert (config.name, task.name, task.tied) == ("gpt", "causal_lm", True)
  assert convert_workdir.read_task_config(out) == task
  _, host = hf_decoder.load_hf_decoder(_dir("gemma"))
  loaded_config, params = pj.load_params(out, mesh=mesh)
  assert loaded_config == config
  _check_sharded(params, host)
  _, params = pj.load_params(_dir("gemma"), mesh=mesh)  # the HF directory itself
  _check_sharded(params, host)
