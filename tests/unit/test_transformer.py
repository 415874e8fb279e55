"""Masking, attention implementations and heads of the transformer backbones."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptft_jax.errors import ConfigError, UserError
from ptft_jax.models import attention
from ptft_jax.models.base import Model
from ptft_jax.models.transformer import (
  BertEncoder,
  CausalLMHead,
  GptDecoder,
  MaskedLMHead,
  NextSentenceHead,
  SequenceClassificationHead,
  TransformerConfig,
  bert_encode,
  gelu_exact,
)

BERT = TransformerConfig(
    vocab_size=37, hidden_size=16, num_layers=2, num_heads=4, intermediate_size=32,
    max_position_embeddings=24, type_vocab_size=2, attention_impl="einsum")
GPT = dataclasses.replace(BERT, type_vocab_size=0, causal=True, pre_norm=True, pooler=False)


def _ids(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(1, BERT.vocab_size, shape), jnp.int32)


def _init(module, *args):
  """Random params from numpy (shapes via eval_shape): no init program to compile."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, train=False))
  rng = np.random.default_rng(0)
  def fill(path, leaf):
    noise = rng.normal(size=leaf.shape).astype(np.float32)
    return 1.0 + 0.1 * noise if path[-1].key == "scale" else 0.2 * noise
  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_padding_is_never_attended(impl):
  config = dataclasses.replace(BERT, attention_impl=impl)
  ids = _ids((2, 10))
  mask = jnp.array([[1] * 10, [1] * 6 + [0] * 4], jnp.int32)
  model = BertEncoder(config)
  params = _init(model, {"input_ids": ids, "attention_mask": mask})
  out = lambda i: model.apply(params, {"input_ids": i, "attention_mask": mask}, train=False)
  a, b = out(ids), out(ids.at[1, 6:].set(3))
  np.testing.assert_allclose(a["sequence"][1, :6], b["sequence"][1, :6], atol=1e-6)
  np.testing.assert_allclose(a["pooled"], b["pooled"], atol=1e-6)
  assert not np.allclose(a["sequence"][1, 6:], b["sequence"][1, 6:])


@pytest.mark.parametrize("impl", ["einsum", "xla"])
def test_causal_never_looks_ahead(impl):
  config = dataclasses.replace(GPT, attention_impl=impl)
  ids = _ids((2, 12))
  model = GptDecoder(config)
  params = _init(model, {"input_ids": ids})
  a = model.apply(params, {"input_ids": ids}, train=False)["sequence"]
  b = model.apply(params, {"input_ids": ids.at[:, 7].set(5)}, train=False)["sequence"]
  np.testing.assert_allclose(a[:, :7], b[:, :7], atol=1e-6)
  assert not np.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("config", [GPT, BERT], ids=["gpt", "bert"])
def test_packed_segments_do_not_see_each_other(config):
  module = GptDecoder(config) if config.causal else BertEncoder(config)
  ids = _ids((1, 12))
  segments = jnp.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 0, 0]])
  params = _init(module, {"input_ids": ids})
  packed = module.apply(params, {"input_ids": ids, "segment_ids": segments},
                        train=False)["sequence"]
  # Segment 2 alone, unpacked: same outputs (positions restart per segment).
  alone = module.apply(params, {"input_ids": ids[:, 5:9]}, train=False)["sequence"]
  np.testing.assert_allclose(packed[:, 5:9], alone, atol=1e-5)
  changed = module.apply(params, {"input_ids": ids.at[:, :5].set(4), "segment_ids": segments},
                         train=False)["sequence"]
  np.testing.assert_allclose(packed[:, 5:], changed[:, 5:], atol=1e-6)


def test_attention_implementations_agree():
  q, k, v = np.random.default_rng(1).normal(size=(3, 2, 9, 3, 8)).astype(np.float32)
  mask = attention.padding_mask(jnp.array([[1] * 9, [1] * 5 + [0] * 4]))
  mask = mask & attention.causal_mask(9)
  einsum = attention.dot_product_attention(q, k, v, mask=mask, implementation="einsum")
  xla = attention.dot_product_attention(q, k, v, mask=mask, implementation="xla")
  assert einsum.shape == (2, 9, 3, 8)
  np.testing.assert_allclose(einsum, xla, atol=1e-5)
  # Whole models agree too.
  ids = _ids((2, 9))
  batch = {"input_ids": ids, "attention_mask": jnp.array([[1] * 9, [1] * 5 + [0] * 4])}
  params = _init(BertEncoder(BERT), batch)
  outs = [BertEncoder(dataclasses.replace(BERT, attention_impl=impl)).apply(
      params, batch, train=False)["sequence"] for impl in ("einsum", "xla", "auto")]
  np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
  np.testing.assert_allclose(outs[0], outs[2], atol=1e-5)


def test_attention_dropout_needs_einsum():
  q = jnp.ones((1, 4, 2, 8))
  rng = jax.random.key(0)
  out = attention.dot_product_attention(q, q, q, dropout_rng=rng, dropout_rate=0.5)
  assert out.shape == q.shape
  with pytest.raises(ConfigError, match="attention dropout"):
    attention.dot_product_attention(q, q, q, dropout_rng=rng, dropout_rate=0.5,
                                    implementation="xla")
  with pytest.raises(ConfigError, match="not one of"):
    TransformerConfig(attention_impl="flash")


def test_masked_lm_logits_only_at_masked_positions():
  ids = _ids((2, 10))
  positions = jnp.array([[1, 4, 7], [0, 2, 9]])
  model = Model(BertEncoder(BERT), {"mlm": MaskedLMHead(), "nsp": NextSentenceHead()})
  batch = {"input_ids": ids, "masked_positions": positions}
  params = _init(model, batch)
  out = model.apply(params, batch, train=False)
  assert out["mlm"].shape == (2, 3, BERT.vocab_size)
  assert out["nsp"].shape == (2, 2)
  every = jnp.broadcast_to(jnp.arange(10), (2, 10))
  full = model.apply(params, {**batch, "masked_positions": every}, train=False)["mlm"]
  np.testing.assert_allclose(out["mlm"], jnp.take_along_axis(full, positions[..., None], 1),
                             atol=1e-5)
  # Layout that HF cls.predictions.* loads into.
  mlm = jax.tree_util.tree_map(jnp.shape, params["params"]["heads"]["mlm"])
  assert mlm == {"bias": (37,), "transform": {
      "dense": {"kernel": (16, 16), "bias": (16,)},
      "layer_norm": {"scale": (16,), "bias": (16,)}}}
  with pytest.raises(UserError, match="masked_positions"):
    model.apply(params, {"input_ids": ids}, train=False)


def test_backbone_param_layout():
  params = _init(BertEncoder(BERT), {"input_ids": _ids((1, 4))})["params"]
  assert set(params) == {"embeddings", "layer_0", "layer_1", "pooler"}
  assert set(params["embeddings"]) == {
      "word_embeddings", "position_embeddings", "token_type_embeddings", "layer_norm"}
  assert set(params["layer_0"]) == {"attention", "attention_norm", "mlp", "output_norm"}
  assert set(params["layer_0"]["attention"]) == {"query", "key", "value", "out"}
  assert set(params["layer_0"]["mlp"]) == {"intermediate", "output"}
  assert params["pooler"]["dense"]["kernel"].shape == (16, 16)
  gpt = _init(GptDecoder(GPT), {"input_ids": _ids((1, 4))})["params"]
  assert set(gpt) == {"embeddings", "layer_0", "layer_1", "final_norm"}
  assert set(gpt["embeddings"]) == {"word_embeddings", "position_embeddings"}


def test_causal_lm_and_classification_heads():
  ids = _ids((2, 8))
  mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3])
  heads = {"lm": CausalLMHead(), "untied": CausalLMHead(tied=False),
           "mean": SequenceClassificationHead(3, pooling="mean"),
           "reg": SequenceClassificationHead(1)}
  model = Model(GptDecoder(GPT), heads)
  batch = {"input_ids": ids, "attention_mask": mask}
  params = _init(model, batch)
  out = model.apply(params, batch, train=False)
  assert out["lm"].shape == out["untied"].shape == (2, 8, 37)
  assert "lm" not in params["params"]["heads"]
  assert params["params"]["heads"]["untied"]["output"]["kernel"].shape == (16, 37)
  table = params["params"]["backbone"]["embeddings"]["word_embeddings"]["embedding"]
  np.testing.assert_allclose(out["lm"], out["features"]["sequence"] @ table.T, atol=1e-5)
  assert out["mean"].shape == (2, 3) and out["reg"].shape == (2, 1)
  # Mean pooling ignores padding; the causal padded tail cannot change real tokens.
  changed = model.apply(params, {**batch, "input_ids": ids.at[1, 5:].set(2)}, train=False)
  np.testing.assert_allclose(out["mean"], changed["mean"], atol=1e-5)


def test_dropout_only_in_train_and_bfloat16_compute():
  ids = _ids((2, 8))
  model = BertEncoder(BERT)
  params = _init(model, {"input_ids": ids})
  evals = [model.apply(params, {"input_ids": ids}, train=False)["sequence"] for _ in range(2)]
  np.testing.assert_array_equal(evals[0], evals[1])
  trained = model.apply(params, {"input_ids": ids}, train=True,
                        rngs={"dropout": jax.random.key(3)})["sequence"]
  assert not np.allclose(trained, evals[0])
  bf16 = BertEncoder(dataclasses.replace(BERT, dtype="bfloat16"))
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), {"input_ids": ids}, train=False))
  assert {x.dtype for x in jax.tree_util.tree_leaves(shapes)} == {jnp.dtype(jnp.float32)}
  low = bf16.apply(params, {"input_ids": ids}, train=False)["sequence"]
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), evals[0], atol=0.1)


def test_bert_encode_and_input_checks():
  ids = _ids((2, 8))
  params = _init(BertEncoder(BERT), {"input_ids": ids})["params"]
  out = bert_encode(BERT, params, ids)
  ref = BertEncoder(BERT).apply({"params": params}, {"input_ids": ids}, train=False)
  np.testing.assert_allclose(out, ref["sequence"], atol=1e-6)
  no_pooler = {k: v for k, v in params.items() if k != "pooler"}
  assert bert_encode(BERT, no_pooler, ids).shape == (2, 8, 16)
  with pytest.raises(UserError, match="max_position_embeddings"):
    bert_encode(BERT, params, _ids((1, 30)))
  with pytest.raises(ConfigError, match="divisible"):
    TransformerConfig(hidden_size=10, num_heads=4)
  assert attention.segment_mask(jnp.array([[1, 1, 2]])).shape == (1, 1, 3, 3)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 1e-2)])
def test_gelu_exact_values_and_gradient_are_flax_exact_gelu(dtype, tol):
  import flax.linen as nn

  x = jnp.linspace(-6.0, 6.0, 1001).astype(dtype)
  ours = lambda t: jnp.sum(gelu_exact(t).astype(jnp.float32) * jnp.cos(t.astype(jnp.float32)))
  flax_ = lambda t: jnp.sum(nn.gelu(t, approximate=False).astype(jnp.float32)
                            * jnp.cos(t.astype(jnp.float32)))
  np.testing.assert_allclose(np.asarray(gelu_exact(x), np.float32),
                             np.asarray(nn.gelu(x, approximate=False), np.float32),
                             atol=tol, rtol=tol)
  np.testing.assert_allclose(np.asarray(jax.grad(ours)(x), np.float32),
                             np.asarray(jax.grad(flax_)(x), np.float32), atol=tol, rtol=tol)
  assert gelu_exact(x).dtype == dtype
