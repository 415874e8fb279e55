"""Scanned transformer layers (`model.scan_layers`): same model, stacked params.

Scanned and looped stacks give the same outputs and gradients on converted
params; `models.layout` converts both ways, HF import / export and the transfer
from a pretrained run convert to the target's layout. Compile time is measured
by `python -m ptft_jax.bench --workload compile_scan`, not asserted here.
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptft_jax.convert.hf_bert import export_hf_bert, load_hf_bert
from ptft_jax.convert.minilm import minilm_dir
from ptft_jax.errors import CheckpointError
from ptft_jax.models import bert, build_backbone, gpt, layout
from ptft_jax.models.transformer import bert_encode
from ptft_jax.optim import strategies
from ptft_jax.parallel import sharding
from ptft_jax.train import checkpoint, finetune
from tests.helpers import flat

SMALL = dict(vocab_size=50, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32,
             max_position_embeddings=16, dropout_rate=0.0, attention_dropout_rate=0.0)
BATCH = {"input_ids": (np.arange(16).reshape(2, 8) * 7 % 50).astype(np.int32),
         "attention_mask": np.array([[1] * 8, [1] * 5 + [0] * 3], np.int32)}


def _init(model):
  return model.init(jax.random.key(0), BATCH, train=False)["params"]


def _assert_close(a, b, atol, rtol=0.0):
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_allclose(np.asarray(fa[k]), np.asarray(fb[k]), atol=atol, rtol=rtol,
                               err_msg=k)


@pytest.mark.parametrize(("family", "remat"), [("bert", "none"), ("gpt", "full")])
def test_scanned_matches_looped(family, remat):
  make = {"bert": bert, "gpt": gpt}[family]
  looped, scanned = make(remat=remat, **SMALL), make(remat=remat, scan_layers=True, **SMALL)
  params = _init(looped)
  stacked = layout.loop_to_scan(params)
  # The scanned module's own init has the converted tree's paths and shapes.
  assert jax.tree_util.tree_map(np.shape, stacked) == jax.tree_util.tree_map(
      np.shape, _init(scanned))
  assert stacked["layers"]["attention"]["query"]["kernel"].shape == (3, 16, 16)
  assert not any(k.startswith("layer_") for k in stacked)
  probe = np.random.default_rng(0).normal(size=(2, 8, 16)).astype(np.float32)

  def loss(model):
    def f(p):
      out = model.apply({"params": p}, BATCH, train=True, rngs={"dropout": jax.random.key(1)})
      return jnp.sum(out["sequence"] * probe), out["sequence"]
    return jax.jit(jax.value_and_grad(f, has_aux=True))

  (y_loop, seq_loop), g_loop = loss(looped)(params)
  (y_scan, seq_scan), g_scan = loss(scanned)(stacked)
  np.testing.assert_allclose(seq_scan, seq_loop, atol=1e-5)
  np.testing.assert_allclose(y_scan, y_loop, rtol=1e-5, atol=1e-5)
  _assert_close(g_scan, layout.loop_to_scan(g_loop), atol=1e-5, rtol=1e-5)
  _assert_close(layout.scan_to_loop(g_scan, 3), g_loop, atol=1e-5, rtol=1e-5)


def test_round_trip_and_errors():
  params = {"backbone": _init(bert(**SMALL)), "heads": {"c": {"kernel": np.ones((16, 2))}}}
  stacked = layout.loop_to_scan(params)
  assert layout.is_scanned(stacked) and not layout.is_scanned(params)
  assert "layers" in stacked["backbone"] and "heads" in stacked
  back = layout.scan_to_loop(stacked, 3)
  _assert_close(back, params, atol=0)
  _assert_close(layout.scan_to_loop(stacked), params, atol=0)  # depth from the leading axis
  with pytest.raises(CheckpointError, match=r"expected \[4\]"):
    layout.scan_to_loop(stacked, 4)
  # match_layout converts a source to the target's layout, either way, and is a no-op on a match.
  _assert_close(layout.match_layout(params, stacked), stacked, atol=0)
  _assert_close(layout.match_layout(stacked, params), params, atol=0)
  _assert_close(layout.match_layout(params, params), params, atol=0)


def test_config_key_and_sharding_rules():
  model = build_backbone(ml_collections.ConfigDict(dict(name="bert", scan_layers=True, **SMALL)))
  assert model.config.scan_layers
  assert sharding.logical_axes("backbone/layers/attention/query/kernel", 3) == (
      None, "embed", "heads")
  assert sharding.logical_axes("backbone/layers/mlp/output/kernel", 3) == (None, "mlp", "embed")
  assert sharding.logical_axes("backbone/layer_0/mlp/output/kernel", 2) == ("mlp", "embed")


def test_per_layer_strategies_give_the_looped_groups():
  """Presets address layer k of a scanned stack by its looped name (training on both
  layouts is compared in tests/unit/test_scanned_groups.py)."""
  looped = {"backbone": _init(bert(**SMALL)), "heads": {"c": {"kernel": np.ones((16, 2))}}}
  scanned = layout.loop_to_scan(looped)
  for name in ("layer_decay", "freeze_layers", "gradual_unfreeze", "linear_probe"):
    strategy = ml_collections.ConfigDict(dict(name=name, freeze_layers=2))
    assert (strategies.preset_groups(scanned, strategy)
            == strategies.preset_groups(looped, strategy))


@pytest.fixture(scope="module")
def minilm():
  return load_hf_bert(minilm_dir())


def test_hf_import_into_scanned_model(minilm, tmp_path):
  config, params = minilm
  config_s, params_s = load_hf_bert(minilm_dir(), scan_layers=True)
  assert config_s == dataclasses.replace(config, scan_layers=True)
  assert params_s["layers"]["attention"]["query"]["kernel"].shape == (6, 384, 384)
  _assert_close(params_s, layout.loop_to_scan(params), atol=0)
  ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], np.int32)
  np.testing.assert_allclose(bert_encode(config_s, params_s, ids), bert_encode(config, params, ids),
                             atol=1e-5)
  # Export splits the stack again: the same HF tensors as the looped export.
  export_hf_bert(config_s, params_s, tmp_path / "scanned")
  export_hf_bert(config, params, tmp_path / "looped")
  _, again = load_hf_bert(tmp_path / "scanned")
  _assert_close(again, params, atol=0)
  assert (tmp_path / "scanned" / "model.safetensors").read_bytes() == (
      tmp_path / "looped" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("source_scanned", [False, True])
def test_transfer_between_layouts(tmp_path, source_scanned):
  """A pretrained run of one layout loads into a model of the other (and the same one)."""
  looped = {"backbone": _init(bert(**SMALL))}
  scanned = {"backbone": layout.loop_to_scan(looped["backbone"])}
  source, target_like = (scanned, looped) if source_scanned else (looped, scanned)
  checkpoint.save_pretrained(str(tmp_path / "run"), source,
                             config={"model": {"scan_layers": source_scanned}})
  for target in (target_like, source):
    fresh = jax.tree_util.tree_map(jnp.zeros_like, target)
    pretrained, _ = finetune.load_pretrained(str(tmp_path / "run"), like=fresh)
    loaded, report = checkpoint.transfer({"params": fresh, "model_state": {}}, pretrained)
    assert not report["initialized"] and not report["ignored"]
    _assert_close(loaded["params"], target, atol=0)
