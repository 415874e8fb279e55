"""The modern decoder (RMSNorm, rotary, SwiGLU, GQA, sliding window), its KV cache and the
generator: cached decoding equals the full forward, batched left-padded prompts equal
one-by-one greedy decoding, one compilation per length bucket, sharded equals unsharded.

Parity with Hugging Face weights is in test_hf_decoders.py."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptft_jax import models
from ptft_jax.convert import load_hf
from ptft_jax.inference.generator import Generator, sample_tokens
from ptft_jax.models import transformer
from ptft_jax.parallel import sharding
from tests.helpers import FIXTURES

LLAMA_LIKE = dict(
    name="gpt", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
    max_position_embeddings=64, dropout_rate=0.0, attention_dropout_rate=0.0, norm="rms",
    position_embedding="rope", activation="silu", gated_mlp=True, num_kv_heads=2,
    qkv_bias=False, out_bias=False, mlp_bias=False)


def _params(mc, scale=10.0, seed=1):
  """Random params, scaled up so that greedy argmaxes are far from ties."""
  backbone = models.build_backbone(ml_collections.ConfigDict(mc))
  params = backbone.init(jax.random.key(seed), {"input_ids": jnp.zeros((1, 4), jnp.int32)},
                         train=False)["params"]
  return {"backbone": jax.tree.map(lambda x: x * scale, params)}


def _greedy_without_cache(mc, params, prompt, steps, width=16):
  """Greedy tokens from full forwards over a fixed-width row (causal: the tail is unseen)."""
  seq = list(prompt)
  for _ in range(steps):
    row = jnp.asarray([seq + [0] * (width - len(seq))])
    logits = models.causal_lm_logits(mc, params, row)
    seq.append(int(jnp.argmax(logits[0, len(seq) - 1])))
  return seq[len(prompt):]


@pytest.mark.parametrize("scan", [False, True])
def test_prefill_then_one_token_steps_equal_the_full_forward(scan):
  mc = dict(LLAMA_LIKE, scan_layers=scan, sliding_window=5, rope_scaling="llama3",
            rope_factor=8.0, rope_original_max_positions=16)
  params = _params(mc, scale=1.0)
  backbone = models.build_backbone(ml_collections.ConfigDict(mc))
  ids = jax.random.randint(jax.random.key(0), (2, 12), 0, 64)
  full = models.causal_lm_logits(mc, params, ids)
  cache_len = 16
  valid = np.zeros((2, cache_len), np.int32)
  valid[:, :7] = 1
  batch = {"input_ids": ids[:, :7], "attention_mask": valid,
           "positions": jnp.broadcast_to(jnp.arange(7), (2, 7))}
  apply = jax.jit(functools.partial(backbone.apply, train=False, decode=True,
                                    mutable=["cache"]))
  feats, cache = apply({"params": params["backbone"]}, batch)
  got = [models.lm_logits(feats, None)]
  for t in range(7, 12):
    valid[:, t] = 1
    batch = {"input_ids": ids[:, t:t + 1], "attention_mask": valid,
             "positions": jnp.full((2, 1), t)}
    feats, cache = apply({"params": params["backbone"], **cache}, batch)
    got.append(models.lm_logits(feats, None))
  np.testing.assert_allclose(jnp.concatenate(got, axis=1), full, atol=2e-5)


def test_sliding_window_and_gqa_change_the_output():
  """The switches are live: a window shorter than the sequence and shared kv heads matter."""
  ids = jax.random.randint(jax.random.key(0), (1, 12), 0, 64)
  params = _params(LLAMA_LIKE, scale=1.0)
  base = models.causal_lm_logits(LLAMA_LIKE, params, ids)
  windowed = models.causal_lm_logits(dict(LLAMA_LIKE, sliding_window=4), params, ids)
  np.testing.assert_array_equal(windowed[:, :4], base[:, :4])  # within the window: unchanged
  assert float(jnp.abs(windowed[:, 4:] - base[:, 4:]).max()) > 1e-3


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies():
  config = transformer.TransformerConfig(
      hidden_size=64, num_heads=4, position_embedding="rope", rope_scaling="llama3",
      rope_factor=8.0, rope_original_max_positions=64)
  plain = transformer.rope_inverse_frequencies(dataclasses.replace(config, rope_scaling=""))
  scaled = transformer.rope_inverse_frequencies(config)
  wavelength = 2 * np.pi / plain
  high, low = wavelength < 64 / 4.0, wavelength > 64 / 1.0
  np.testing.assert_array_equal(scaled[high], plain[high])
  np.testing.assert_allclose(scaled[low], plain[low] / 8.0, rtol=1e-6)
  middle = ~high & ~low
  assert middle.any() and np.all((scaled[middle] < plain[middle])
                                 & (scaled[middle] > plain[middle] / 8.0))


def test_batched_left_padded_greedy_equals_one_prompt_at_a_time():
  params = _params(LLAMA_LIKE)
  generator = Generator(LLAMA_LIKE, params, eos_ids=[], pad_id=0)
  prompts = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 13], [1]]
  out = generator.generate(token_ids=prompts, max_new_tokens=6)
  assert [o.token_ids for o in out] == [_greedy_without_cache(LLAMA_LIKE, params, p, 6)
                                        for p in prompts]
  assert [o.finish_reason for o in out] == ["length"] * 3
  assert generator.compiles == 1
  # Another batch of the same size whose prompts fit the same buckets: no new compilation.
  generator.generate(token_ids=[[2] * 9, [5], [6, 7], [8]], max_new_tokens=5)
  assert generator.compiles == 1
  generator.generate(token_ids=[[2] * 20], max_new_tokens=5)  # prompt bucket 32, batch 1
  assert generator.compiles == 2


def test_end_of_sequence_stops_a_row_and_is_not_returned():
  params = _params(LLAMA_LIKE)
  first = Generator(LLAMA_LIKE, params, eos_ids=[], pad_id=0).generate(
      token_ids=[[3, 4, 5]], max_new_tokens=6)[0].token_ids
  eos = first[2]
  out = Generator(LLAMA_LIKE, params, eos_ids=[eos], pad_id=0).generate(
      token_ids=[[3, 4, 5]], max_new_tokens=6)[0]
  assert out.finish_reason == "eos"
  assert out.token_ids == first[:first.index(eos)]


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy():
  logits = jax.random.normal(jax.random.key(0), (64, 50))
  greedy = jnp.argmax(logits, -1)
  args = (jnp.float32(1.0), jnp.float32(1.0))
  a = sample_tokens(logits, *args, jax.random.key(1))
  np.testing.assert_array_equal(a, sample_tokens(logits, *args, jax.random.key(1)))
  assert not np.array_equal(a, sample_tokens(logits, *args, jax.random.key(2)))
  assert not np.array_equal(a, greedy)
  np.testing.assert_array_equal(
      sample_tokens(logits, jnp.float32(1.0), jnp.float32(1e-6), jax.random.key(1)), greedy)
  np.testing.assert_array_equal(
      sample_tokens(logits, jnp.float32(0.0), jnp.float32(1.0), jax.random.key(1)), greedy)


def test_eight_devices_fsdp_by_tensor_give_the_same_logits_and_tokens():
  mc = dict(LLAMA_LIKE, num_kv_heads=2)
  params = _params(mc)
  prompts = [[3, 4, 5], [7, 8, 9, 10, 11, 12, 13], [1], [9, 9]]
  ids = jnp.asarray([p[:1] * 6 for p in prompts])
  want_logits = models.causal_lm_logits(mc, params, ids)
  want = Generator(mc, params, eos_ids=[], pad_id=0).generate(token_ids=prompts,
                                                             max_new_tokens=5)
  mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
  placed = jax.device_put(params, sharding.param_shardings(params, mesh))
  kernel = placed["backbone"]["layer_0"]["mlp"]["gate"]["kernel"]
  assert kernel.sharding.shard_shape(kernel.shape) == (8, 32)  # [hidden/4, inter/2]
  np.testing.assert_allclose(models.causal_lm_logits(mc, placed, ids), want_logits,
                             rtol=1e-5, atol=1e-4)
  got = Generator(mc, placed, eos_ids=[], pad_id=0, mesh=mesh).generate(token_ids=prompts,
                                                                       max_new_tokens=5)
  assert [g.token_ids for g in got] == [w.token_ids for w in want]


def test_bad_generation_arguments_say_what_to_fix():
  generator = Generator(LLAMA_LIKE, _params(LLAMA_LIKE), eos_ids=[], pad_id=0)
  from ptft_jax.errors import UserError

  with pytest.raises(UserError, match="outside the vocabulary"):
    generator.generate(token_ids=[[1, 64]], max_new_tokens=2)
  with pytest.raises(UserError, match="no tokenizer"):
    generator.generate(["hello"], max_new_tokens=2)
  with pytest.raises(UserError, match="top_p"):
    generator.generate(token_ids=[[1]], top_p=0.0)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "qwen2", "gemma"])
def test_greedy_generation_equals_transformers_token_for_token(arch):
  """Three prompts of different lengths in ONE left-padded batch give exactly the tokens
  transformers' greedy `generate` gave for each prompt alone (tools/make_decoder_fixtures.py)."""
  model_dir = os.path.join(FIXTURES, "hf_decoders", arch)
  reference = np.load(os.path.join(model_dir, "reference.npz"))
  with open(os.path.join(model_dir, "config.json")) as f:
    hf = json.load(f)
  model_config, params = load_hf(model_dir)
  generator = Generator(model_config, params, eos_ids=[hf["eos_token_id"]],
                        pad_id=hf.get("pad_token_id") or 0)
  prompts = [reference[f"prompt_{k}"].tolist() for k in range(3)]
  out = generator.generate(token_ids=prompts, max_new_tokens=8)
  for k, (prompt, got) in enumerate(zip(prompts, out, strict=True)):
    want = reference[f"greedy_{k}"].tolist()[len(prompt):]
    eos = [hf["eos_token_id"]] if got.finish_reason == "eos" else []
    assert got.token_ids + eos == want, (arch, k)
