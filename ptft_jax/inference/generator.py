"""Text generation from a decoder: jitted prefill + one-token decode over a KV cache.

  generator = pj.load_generator("runs/sft")            # a run, an imported workdir or a HF dir
  out = generator.generate(["Add 2 and 3."], max_new_tokens=16)
  out[0].text, out[0].token_ids, out[0].finish_reason  # "5", [...], "eos"
  generator.generate(token_ids=[[1, 17, 42]], temperature=0.8, top_p=0.9, seed=0)

How it runs: prompts of different lengths are padded on the LEFT to one length bucket
(16, 32, 64, ...), so every row's last prompt token sits in the same cache slot and one
decode step serves the whole batch; positions count real tokens only, so padding changes
nothing. One jitted function does the prefill (the whole prompt through the decoder,
filling a KV cache of `prompt bucket + new-token bucket` slots) and a `lax.while_loop`
of one-token decode steps that stops when every row has produced an end-of-sequence
token or `max_new_tokens` are done. It compiles once per (batch bucket, prompt bucket,
new-token bucket): `Generator.compiles` counts them. Sampling is greedy at temperature
0 (the default), else softmax(logits / temperature) restricted to the smallest set of
tokens whose probability reaches `top_p` (nucleus sampling).

With a mesh, params are placed by the sharding rules, the batch is split over the
data-parallel axes and the KV cache over batch and (when they divide) key/value heads.
"""

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ptft_jax.errors import ConfigError, UserError
from ptft_jax.models import build_backbone, lm_head_params, lm_logits
from ptft_jax.parallel import sharding
from ptft_jax.utils import absolute_path, is_file, read_json

MIN_PROMPT_BUCKET = 16
MIN_NEW_BUCKET = 8


@dataclasses.dataclass
class Generation:
  """One prompt's continuation: new token ids (end-of-sequence excluded) and their text."""

  token_ids: list[int]
  text: str | None
  finish_reason: str  # "eos" (an end-of-sequence token came) | "length" (max_new_tokens)
  prompt_tokens: int


def decoder_config(model_config: Any) -> ml_collections.ConfigDict:
  """`config.model` of a decoder from a ConfigDict, a dict or a TransformerConfig."""
  if dataclasses.is_dataclass(model_config):
    model_config = dict(dataclasses.asdict(model_config), name="gpt")
  model_config = ml_collections.ConfigDict(dict(model_config))
  if model_config.get("name") != "gpt" or not model_config.get("causal", True):
    raise ConfigError(f"generation needs a decoder (config.model.name='gpt'), not "
                      f"{model_config.get('name')!r}")
  return model_config


def bucket(n: int, smallest: int) -> int:
  """The smallest power of two >= max(n, smallest)."""
  return max(smallest, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def sample_tokens(logits: jax.Array, temperature: jax.Array, top_p: jax.Array,
                  rng: jax.Array) -> jax.Array:
  """`[batch, vocab]` logits -> `[batch]` int32 tokens: argmax at temperature <= 0, else
  nucleus sampling from softmax(logits / temperature) over the top-`top_p` mass."""
  logits = logits.astype(jnp.float32)
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits / jnp.maximum(temperature, 1e-6)
  ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
  probs = jax.nn.softmax(ordered, axis=-1)
  # A token stays if the tokens ranked above it hold less than top_p (the first always stays).
  kept = (jnp.cumsum(probs, axis=-1) - probs) < top_p
  threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
  sampled = jax.random.categorical(rng, jnp.where(scaled >= threshold, scaled, -jnp.inf))
  return jnp.where(temperature <= 0, greedy, sampled.astype(jnp.int32))


def _cache_spec(leaf: jax.Array, mesh: Mesh) -> P:
  """[(layers,) batch, cache_len, kv_heads, head_dim]: batch on the data axes, heads on tensor
  (the sharding rules' choice for attention heads) when they divide; the index replicated."""
  if leaf.ndim < 4:
    return P()
  lead = (None,) * (leaf.ndim - 4)
  heads = "tensor" if leaf.shape[-2] % mesh.shape["tensor"] == 0 else None
  return P(*lead, sharding.BATCH_AXES, None, heads, None)


class Generator:
  """Generates continuations of prompts (text or token ids) from a decoder's params.

  Args:
    model_config: the decoder's `config.model` (ConfigDict / dict / TransformerConfig).
    params: `{"backbone": ..., "heads": {"lm": ...}}` (no `heads/lm/output`: tied).
    tokenizer: optional `ptft_jax.data.text.hf_tokenizer.HfTokenizer` (text prompts are
      encoded as transformers' tokenizer(text) does: its `prefix_ids`, e.g. bos, then
      the text); without one, only `token_ids=` works.
    eos_ids: tokens that end a row (default: the tokenizer's `stop_ids`).
    pad_id: the id written after a row has ended and used for left padding.
    mesh: place the batch and KV cache on it (params should already be placed).
    chat_prompts: text prompts are user turns of the tokenizer's chat template (with the
      generation prompt), as an instruction-tuned run (`config.data.format="sft"`) saw
      them; otherwise plain text.
  """

  def __init__(self, model_config: Any, params: Mapping[str, Any], *, tokenizer: Any = None,
               eos_ids: Sequence[int] | None = None, pad_id: int | None = None,
               mesh: Mesh | None = None, chat_prompts: bool = False):
    self.model_config = decoder_config(model_config)
    self.model_config.dropout_rate = 0.0
    self.model_config.attention_dropout_rate = 0.0
    self.backbone = build_backbone(self.model_config)
    self.params = {"backbone": params["backbone"], "head": lm_head_params(params)}
    self.tokenizer = tokenizer
    if eos_ids is None:
      eos_ids = list(getattr(tokenizer, "stop_ids", None) or [])
    self.eos_ids = tuple(int(i) for i in eos_ids)
    if pad_id is None:
      pad_id = getattr(tokenizer, "pad_id", None)
    self.pad_id = int(pad_id if pad_id is not None else (self.eos_ids or (0,))[0])
    self.mesh = mesh
    self.chat_prompts = chat_prompts
    self.compiles = 0
    # With a mesh, traced in its context so the layers keep their activations batch-split
    # (sharding.constrain_batch), as in training.
    generate = self._generate if mesh is None else sharding.traced_in(mesh, self._generate)
    self._run = jax.jit(generate, static_argnames=("new_bucket",))

  # -- the jitted program ---------------------------------------------------------------

  def _decoder(self, params, cache, batch):
    variables = {"params": params["backbone"], **cache}
    features, cache = self.backbone.apply(variables, batch, train=False, decode=True,
                                          mutable=["cache"])
    last = dict(features, sequence=features["sequence"][:, -1:])
    return lm_logits(last, params["head"])[:, 0], cache

  def _constrain(self, tree):
    if self.mesh is None:
      return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
        x, NamedSharding(self.mesh, _cache_spec(x, self.mesh))), tree)

  def _generate(self, params, ids, valid, max_new, temperature, top_p, rng, *, new_bucket):
    self.compiles += 1  # runs at trace time only: counts compilations
    batch, prompt_len = ids.shape
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    key_valid = jnp.zeros((batch, prompt_len + new_bucket), jnp.int32)
    key_valid = key_valid.at[:, :prompt_len].set(valid)
    logits, cache = self._decoder(params, {}, {"input_ids": ids, "attention_mask": key_valid,
                                               "positions": positions})
    cache = self._constrain(cache)
    eos = jnp.asarray(self.eos_ids or (-1,), jnp.int32)
    out = jnp.full((batch, new_bucket), self.pad_id, jnp.int32)
    state = (jnp.int32(0), logits, cache, key_valid, positions[:, -1] + 1, out,
             jnp.zeros((batch,), bool), rng)

    def keep_going(state):
      step, *_, done, _ = state
      return (step < max_new) & ~jnp.all(done)

    def one_token(state):
      step, logits, cache, key_valid, position, out, done, rng = state
      rng, key = jax.random.split(rng)
      token = jnp.where(done, self.pad_id, sample_tokens(logits, temperature, top_p, key))
      out = jax.lax.dynamic_update_slice(out, token[:, None], (0, step))
      done = done | jnp.isin(token, eos)
      key_valid = jax.lax.dynamic_update_slice(
          key_valid, jnp.ones((batch, 1), jnp.int32), (0, prompt_len + step))
      logits, cache = self._decoder(params, cache, {
          "input_ids": token[:, None], "attention_mask": key_valid,
          "positions": position[:, None]})
      return step + 1, logits, self._constrain(cache), key_valid, position + 1, out, done, rng

    state = jax.lax.while_loop(keep_going, one_token, state)
    return state[5], state[0]

  # -- the public call ------------------------------------------------------------------

  def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
    if self.tokenizer is None:
      raise UserError("this generator has no tokenizer: pass token_ids= (lists of ints)")
    if self.chat_prompts:
      from ptft_jax.data.text import sft

      return [sft.prompt_ids(self.tokenizer, p) for p in prompts]
    prefix = list(self.tokenizer.prefix_ids)
    return [prefix + list(self.tokenizer.encode(p)) for p in prompts]

  def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """A chat ([{"role", "content"}, ...]) through the chat template, generation prompt on."""
    if self.tokenizer is None:
      raise UserError("this generator has no tokenizer: pass token_ids= (lists of ints)")
    return self.tokenizer.chat_ids(messages, add_generation_prompt=True)

  def generate(self, prompts: Sequence[str] | None = None, *,
               token_ids: Sequence[Sequence[int]] | None = None, max_new_tokens: int = 32,
               temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0) -> list[Generation]:
    """Continues each prompt (texts, or `token_ids`: lists of ints) by up to
    `max_new_tokens` tokens; greedy unless `temperature` > 0. Returns one Generation each."""
    if (prompts is None) == (token_ids is None):
      raise UserError("generate: pass either prompts (texts) or token_ids, not both")
    if max_new_tokens < 1:
      raise UserError(f"max_new_tokens={max_new_tokens}: use 1 or more")
    if not 0.0 < top_p <= 1.0:
      raise UserError(f"top_p={top_p}: use a value in (0, 1]")
    rows = self.encode_prompts(prompts) if prompts is not None else [
        [int(t) for t in row] for row in token_ids]
    if not rows:
      return []
    vocab = int(self.model_config.vocab_size)
    for i, row in enumerate(rows):
      if not row:
        raise UserError(f"prompt {i} has no tokens")
      bad = [t for t in row if not 0 <= t < vocab]
      if bad:
        raise UserError(f"prompt {i}: token id {bad[0]} is outside the vocabulary [0, {vocab})")
    longest = max(len(r) for r in rows)
    prompt_bucket = bucket(longest, MIN_PROMPT_BUCKET)
    new_bucket = bucket(max_new_tokens, MIN_NEW_BUCKET)
    if self.model_config.get("position_embedding", "learned") == "learned":
      limit = int(self.model_config.max_position_embeddings)
      if longest + max_new_tokens > limit:
        raise UserError(f"prompt ({longest} tokens) + max_new_tokens {max_new_tokens} > the "
                        f"model's {limit} positions; shorten one")
      prompt_bucket = min(prompt_bucket, limit)
    split = sharding.batch_divisor(self.mesh) if self.mesh is not None else 1
    batch = -(-bucket(len(rows), 1) // split) * split  # a power of two the mesh divides
    ids = np.full((batch, prompt_bucket), self.pad_id, np.int32)
    valid = np.zeros((batch, prompt_bucket), np.int32)
    for i, row in enumerate(rows):
      ids[i, prompt_bucket - len(row):] = row
      valid[i, prompt_bucket - len(row):] = 1
    valid[len(rows):, -1] = 1  # filler rows: one "token" so nothing attends to nothing
    if self.mesh is not None:
      spec = sharding.batch_sharding(self.mesh)
      ids, valid = jax.device_put(ids, spec), jax.device_put(valid, spec)
    out, _ = self._run(self.params, ids, valid, jnp.int32(max_new_tokens),
                       jnp.float32(temperature), jnp.float32(top_p), jax.random.key(seed),
                       new_bucket=new_bucket)
    out = np.asarray(jax.device_get(out))
    results = []
    for i, row in enumerate(rows):
      tokens = out[i, :max_new_tokens].tolist()
      ends = [k for k, t in enumerate(tokens) if t in self.eos_ids]
      reason = "eos" if ends else "length"
      tokens = tokens[:ends[0]] if ends else tokens
      text = self.tokenizer.decode(tokens) if self.tokenizer is not None else None
      results.append(Generation(tokens, text, reason, len(row)))
    return results


# --- loading ------------------------------------------------------------------------------


def _load_tokenizer(path: str, run_config: ml_collections.ConfigDict | None):
  """The directory's tokenizer.json, else the one the run's data config names, else None;
  an instruction-tuned run's with the chat template it trained with."""
  from ptft_jax.data.text import hf_tokenizer, sft

  data = run_config.get("data", {}) if run_config is not None else {}
  named = data.get("tokenizer", "")
  if hasattr(named, "get"):
    named = named.get("path", "")
  tokenizer = None
  if is_file(os.path.join(path, hf_tokenizer.TOKENIZER_FILE)):
    tokenizer = hf_tokenizer.load_hf_tokenizer(path, "--workdir")
  elif named:
    tokenizer = hf_tokenizer.load_hf_tokenizer(str(named), "config.data.tokenizer.path")
  if tokenizer is not None and data.get("format") == "sft":
    tokenizer = sft.with_template(tokenizer, data.get("chat_template", "auto"))
  return tokenizer


def load_generator(path: str | os.PathLike, checkpoint: str | int = "latest", *,
                   mesh: Mesh | None = None, rules: Mapping[str, Any] | None = None) -> Generator:
  """A Generator for a decoder: a ptft_jax run (its `checkpoint`: latest, best or a step;
  LoRA adapters merged), an imported workdir (`python -m ptft_jax.convert hf`) or a
  Hugging Face model directory. The tokenizer is the directory's `tokenizer.json`, else
  the one the run's data config names; an instruction-tuned run's text prompts go
  through the chat template it trained with. With a mesh every leaf is created in its
  sharding."""
  from ptft_jax.train import checkpoint as ckpt
  from ptft_jax.train import placement

  path = absolute_path(path)  # a local run, or a gs:// one
  run_config = None
  config_file = os.path.join(path, "config.json")
  if is_file(config_file):
    record = read_json(config_file)
    if isinstance(record, dict) and "model" in record and "model_type" not in record:
      run_config = ml_collections.ConfigDict(record)
  target = placement.layout(mesh, rules) if mesh is not None else None
  if run_config is not None:
    from ptft_jax.optim import lora

    where, step, _ = ckpt.resolve_checkpoint(path, checkpoint)
    loaded, _ = ckpt.load_params(where, step=step, sharding=target)
    model_config, params = run_config.model, lora.merge_loaded(loaded["params"], path)
  else:
    if checkpoint != "latest":
      raise UserError(f"{path} is not a ptft_jax run: --checkpoint {checkpoint} does not apply")
    model_config, params = placement.load_params(path, mesh=mesh, rules=rules)
  tokenizer = _load_tokenizer(path, run_config)
  chat = (run_config is not None and run_config.get("data", {}).get("format") == "sft"
          and tokenizer is not None and tokenizer.chat_template is not None)
  return Generator(model_config, params, tokenizer=tokenizer, mesh=mesh, chat_prompts=chat)

