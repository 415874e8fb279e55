"""LSTM / GRU backbones: shapes, masked padding, packed documents, the rnn config end to end."""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptft_jax.errors import ConfigError
from ptft_jax.models import build_backbone, build_model
from ptft_jax.models.heads import CausalLMHead, ClassifierHead, SequenceClassificationHead
from ptft_jax.models.rnn import MaskedRnn, RnnBackbone
from tests.helpers import count_params

pytestmark = pytest.mark.usefixtures("fast_prng_compile")


# Per layer (flax cells): LSTM 4 * (in * h) + 4 * (h * h + h); GRU 3 * (in * h + h) + 3 * h * h + h.
@pytest.mark.parametrize("cell,bidirectional,layers", [
    ("lstm", False, [525_312, 525_312]),
    ("lstm", True, [2 * 525_312, 2 * 787_456]),  # layer 1 reads 512 = both directions
    ("gru", False, [394_240, 394_240]),
    ("gru", True, [2 * 394_240, 2 * 590_848]),
])
def test_shapes_and_parameter_counts(cell, bidirectional, layers):
  config = ml_collections.ConfigDict(dict(name="rnn", vocab_size=4096, cell=cell,
                                          bidirectional=bidirectional))
  model = build_model(config, {"lm": CausalLMHead(tied=not bidirectional),
                               "classifier": SequenceClassificationHead(num_classes=2),
                               "mlp": ClassifierHead(num_classes=3, hidden_sizes=(16,))})
  batch = {"input_ids": jnp.zeros((2, 7), jnp.int32), "attention_mask": jnp.ones((2, 7))}
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch, train=False))
  backbone = variables["params"]["backbone"]
  assert count_params(backbone["embed"]) == 4096 * 256
  for i, size in enumerate(layers):
    assert count_params({k: v for k, v in backbone.items() if k.startswith(f"layer_{i}_")}) == size
  out = jax.eval_shape(lambda v: model.apply(v, batch, train=False), variables)
  width = 512 if bidirectional else 256
  assert out["features"]["sequence"].shape == (2, 7, width)
  assert out["features"]["features"].shape == out["features"]["pooled"].shape == (2, width)
  assert out["features"]["word_embeddings"].shape == (4096, 256)
  assert out["classifier"].shape == (2, 2) and out["mlp"].shape == (2, 3)
  if not bidirectional:
    assert out["lm"].shape == (2, 7, 4096)


def test_bad_cell_is_a_config_error():
  with pytest.raises(ConfigError, match="config.model.cell: 'rnn' is not one of"):
    build_backbone(ml_collections.ConfigDict(dict(name="rnn", vocab_size=10, cell="rnn")))


def random_variables(module, *args, **kwargs):
  """Variables of `module`'s shapes filled with numpy normals (no init program to compile)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **kwargs))
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype), shapes)


def _pad_rows(x):
  """Pads row 0 of `x` [3, n, ...] on the right, row 1 on the left, row 2 in the middle.

  Returns (padded [3, n + 3, ...], attention mask int32 [3, n + 3]).
  """
  n = x.shape[1]
  real = np.ones(n, np.int32)
  masks = np.stack([np.r_[real, 0, 0, 0], np.r_[0, 0, 0, real],
                    np.r_[real[:2], 0, 0, 0, real[2:]]])
  index = np.stack([np.nonzero(m)[0] for m in masks])  # where each real step goes
  padded = jnp.zeros((3, n + 3) + x.shape[2:], x.dtype)
  padded = padded.at[np.arange(3)[:, None], index].set(x)
  return padded, jnp.asarray(masks)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_padded_steps_change_nothing(cell):
  """Right, left and middle padding: real-step outputs and final states as without padding."""
  models = [RnnBackbone(vocab_size=50, cell=cell, hidden_size=8, num_layers=2,
                        bidirectional=bi) for bi in (False, True)]
  layer = MaskedRnn(cell, 8)
  ids = jax.random.randint(jax.random.PRNGKey(0), (3, 6), 1, 50)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 4))
  padded_ids, mask = _pad_rows(ids)
  padded_x, _ = _pad_rows(x)

  @jax.jit
  def run(model_vars, layer_vars):
    out = {}
    for i, (model, variables) in enumerate(zip(models, model_vars, strict=True)):
      out[f"plain_{i}"] = model.apply(variables, {"input_ids": ids}, train=False)
      out[f"padded_{i}"] = model.apply(
          variables, {"input_ids": padded_ids, "attention_mask": mask}, train=False)
    out["carry"] = layer.apply(layer_vars, x, jnp.ones((3, 6), bool))[0]
    out["padded_carry"] = layer.apply(layer_vars, padded_x, mask.astype(bool))[0]
    return out

  out = run([random_variables(m, {"input_ids": ids}, train=False) for m in models],
            random_variables(layer, x, jnp.ones((3, 6), bool)))
  real = np.asarray(mask).astype(bool)
  # Equal up to float rounding (XLA may order a longer sequence's matmuls differently):
  # a padded step is a no-op, not a perturbation of the state.
  close = dict(rtol=1e-5, atol=1e-7)
  for i in range(2):
    plain, got = out[f"plain_{i}"], out[f"padded_{i}"]
    for row in range(3):
      np.testing.assert_allclose(got["sequence"][row, real[row]], plain["sequence"][row],
                                 err_msg=f"bidirectional={i} row {row}", **close)
      assert not np.any(got["sequence"][row, ~real[row]])
    np.testing.assert_allclose(got["features"], plain["features"], **close)
  for a, b in zip(jax.tree_util.tree_leaves(out["padded_carry"]),
                  jax.tree_util.tree_leaves(out["carry"]), strict=True):
    np.testing.assert_allclose(a, b, err_msg="final state (c, h)", **close)


def test_packed_documents_do_not_see_each_other():
  model = RnnBackbone(vocab_size=50, cell="gru", hidden_size=8, num_layers=2, bidirectional=True)
  a, b = jnp.array([[5, 6, 7]]), jnp.array([[8, 9]])
  packed = {"input_ids": jnp.array([[5, 6, 7, 8, 9, 0, 0]]),
            "segment_ids": jnp.array([[1, 1, 1, 2, 2, 0, 0]]),
            "attention_mask": jnp.array([[1, 1, 1, 1, 1, 0, 0]])}

  @jax.jit
  def run(variables):
    apply = lambda batch: model.apply(variables, batch, train=False)["sequence"]
    return apply(packed), apply({"input_ids": a}), apply({"input_ids": b})

  seq, seq_a, seq_b = run(random_variables(model, {"input_ids": a}, train=False))
  np.testing.assert_allclose(seq[:, :3], seq_a, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(seq[:, 3:5], seq_b, rtol=1e-5, atol=1e-7)


