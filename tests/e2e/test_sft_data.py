"""Instruction tuning: Hugging Face tokenizers and chat templates, SFT JSONL and its loss mask,
packing without attention across examples, the token-count normalization across
accumulation microbatches, chunked cross-entropy."""

import dataclasses
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ptft_jax import tasks
from ptft_jax.data import text
from ptft_jax.data.text import TextInfo, hf_vocab, load_hf_tokenizer, sft
from ptft_jax.errors import ConfigError, DataError
from ptft_jax.models import Model, gpt
from ptft_jax.models.heads import CausalLMHead
from ptft_jax.tasks import text as text_tasks
from ptft_jax.train import accumulate
from tests.helpers import FIXTURES

TINY = "pkg://sft_tiny"
QWEN2 = f"{FIXTURES}/hf_decoders/qwen2"  # byte-level BPE, <|bos|> 0 <|eos|> 1 <|pad|> 2, ChatML


@pytest.fixture(scope="module")
def tok():
  return load_hf_tokenizer(TINY)


def _decode(tok, ids):
  return tok.decode(ids, skip_special_tokens=False)


# --- tokenizers and chat templates ---------------------------------------------------------


def test_shipped_tokenizer_and_its_special_tokens(tok):
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id) == (1, 2, 0, None)
  assert tok.stop_ids == (2, 4)  # eos, then generation_config.json's <|im_end|>
  assert tok.size == 400 and tok.prefix_ids == () and tok.chat_template
  vocab = hf_vocab(tok)
  assert (vocab.size, vocab.sep_id, vocab.cls_id, vocab.exact) == (400, 2, 1, False)


def test_chat_ids_equal_transformers(tok):
  # transformers 5.24 AutoTokenizer.from_pretrained(<assets/sft_tiny>).apply_chat_template(...)
  chat = [{"role": "user", "content": "Reverse the letters: c a t"},
          {"role": "assistant", "content": "t a c"}]
  prompt = [1, 3, 276, 203, 317, 307, 316, 30, 333, 283, 281, 4, 203, 3, 278, 203]
  assert tok.chat_ids(chat) == prompt + [88, 283, 333, 4, 203]
  assert tok.chat_ids(chat[:1], add_generation_prompt=True) == prompt
  assert sft.prompt_ids(tok, "Reverse the letters: c a t") == prompt


# A template with what Hub templates use: set/tojson/raise_exception/loop controls/generation
# blocks, trim_blocks + lstrip_blocks whitespace. Expected texts: transformers 5.24.
TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{%- set sys = messages[0]['content'] %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set sys = 'default sys' %}{%- endif %}"
    "{{ bos_token }}<<{{ sys | tojson }}>>\n{% for m in messages %}\n"
    "  {% if m['role'] not in ['user','assistant'] %}"
    "{{ raise_exception('bad role ' + m['role']) }}{% endif %}\n"
    "  {% if m['role'] == 'assistant' %}{% generation %}A: {{ m['content'] }}{{ eos_token }}"
    "{% endgeneration %}\n{% else %}U: {{ m['content'] }}\n{% endif %}"
    "  {% if loop.index > 5 %}{% break %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}A:{% endif %}")


def test_chat_template_renders_as_transformers():
  tok = dataclasses.replace(load_hf_tokenizer(QWEN2), chat_template=TEMPLATE)
  chat = [{"role": "system", "content": 'be <nice> & "ok"'}, {"role": "user", "content": "q1"},
          {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2 é"}]
  assert tok.render_chat(chat, add_generation_prompt=True) == (
      '<|bos|><<"be <nice> & \\"ok\\"">>\nU: q1\n  A: a1<|eos|>  U: q2 é\n  A:')
  assert tok.render_chat(chat[1:3]) == '<|bos|><<"default sys">>\nU: q1\n  A: a1<|eos|>  '
  with pytest.raises(DataError, match="the chat template failed: bad role tool"):
    tok.render_chat([{"role": "tool", "content": "x"}])
  with pytest.raises(DataError, match="does not parse"):
    dataclasses.replace(tok, chat_template="{% if %}").render_chat(chat)


def test_tokenizer_files_and_their_errors(tmp_path):
  key = "config.data.tokenizer.path"
  with pytest.raises(DataError, match=f"^{key}: no tokenizer.json in '{tmp_path}'"):
    load_hf_tokenizer(str(tmp_path))
  with pytest.raises(DataError, match=f"^{key}: no file '{tmp_path}/x.json'"):
    load_hf_tokenizer(str(tmp_path / "x.json"))
  (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
  with pytest.raises(DataError, match=f"^{key}: '{tmp_path}/tokenizer.json' is not a "
                                      r"tokenizers JSON file \("):
    load_hf_tokenizer(str(tmp_path))
  shutil.copy(f"{QWEN2}/tokenizer.json", tmp_path / "tokenizer.json")
  # No token strings: ids from config.json, stop ids from generation_config.json too.
  (tmp_path / "config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 1}))
  (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 2]}))
  tok = load_hf_tokenizer(str(tmp_path / "tokenizer.json"))
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.stop_ids) == (0, 1, 1, (1, 2))
  assert tok.tokens["eos_token"] == "<|eos|>" and tok.chat_template is None
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<s>"}}))
  with pytest.raises(DataError, match=r"bos_token '<s>' of .* is not in .*tokenizer.json"):
    load_hf_tokenizer(str(tmp_path))
  (tmp_path / "tokenizer_config.json").write_text("{oops")
  with pytest.raises(DataError, match=r"tokenizer_config.json:1: not valid JSON"):
    load_hf_tokenizer(str(tmp_path))


# --- examples, loss mask, JSONL errors -----------------------------------------------------


def _trained(tok, example):
  ids, mask = sft.encode_example(tok, example)
  assert len(ids) == len(mask)
  return _decode(tok, ids[mask > 0]), _decode(tok, ids[mask == 0])


def test_loss_mask_covers_only_the_response_and_its_end(tok):
  example = {"prompt": "Sort: 3 1 2", "response": "1 2 3"}
  trained, rest = _trained(tok, example)
  assert trained == "1 2 3<|im_end|>"  # the reply and the template's end of turn
  assert rest == "<|bos|><|im_start|>user\nSort: 3 1 2<|im_end|>\n<|im_start|>assistant\n\n"
  plain = sft.with_template(tok, "none")  # no template: prompt + response + eos
  assert _trained(plain, example) == ("1 2 3<|eos|>", "Sort: 3 1 2")
  assert sft.prompt_ids(plain, example) == tok.encode("Sort: 3 1 2")
  chat = {"messages": [{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "Add 1 and 2."},
                       {"role": "assistant", "content": "3"},
                       {"role": "user", "content": "Largest: 4 9"},
                       {"role": "assistant", "content": "9"}]}
  trained, rest = _trained(tok, chat)
  assert trained == "3<|im_end|>9<|im_end|>"  # both assistant turns, nothing else
  assert "Be brief." in rest and "Largest: 4 9" in rest
  with pytest.raises(DataError, match="'messages' needs a chat template"):
    sft.encode_example(plain, chat, "f.jsonl:3")


@pytest.mark.parametrize("line,error", [
    ("{oops", r"f.jsonl:2: not valid JSON \(.*\); each line must be an object like"),
    ("[1, 2]", "f.jsonl:2: expected a JSON object like"),
    ('{"prompt": "p"}', "f.jsonl:2: no 'response' string field"),
    ('{"prompt": 3, "response": "r"}', "f.jsonl:2: no 'prompt' string field"),
    ('{"messages": []}', "f.jsonl:2: 'messages' must be a non-empty list"),
    ('{"messages": [{"role": "user"}]}', r"f.jsonl:2: messages\[0\] has no 'content' string"),
    ('{"messages": [{"role": "user", "content": "q"}]}', "f.jsonl:2: 'messages' has no "
                                                          "'assistant' turn"),
    ('{"messages": [], "prompt": "p", "response": "r"}', "f.jsonl:2: give 'messages' or"),
])
def test_jsonl_errors_name_the_line_and_the_key(tmp_path, line, error):
  path = tmp_path / "f.jsonl"
  path.write_text('{"prompt": "p", "response": "r"}\n' + line + "\n")
  with pytest.raises(DataError, match=f"^{tmp_path}/{error}"):
    sft.read_sft_jsonl(str(path), "config.data.files.train")


def test_missing_and_empty_files_and_truncation(tok, tmp_path):
  key = "config.data.files.train"
  with pytest.raises(DataError, match=f"^{key}: no file '{tmp_path}/none.jsonl'"):
    sft.read_sft_jsonl(str(tmp_path / "none.jsonl"), key)
  (tmp_path / "empty.jsonl").write_text("\n\n")
  with pytest.raises(DataError, match=f"^{key}: '{tmp_path}/empty.jsonl' has no examples"):
    sft.read_sft_jsonl(str(tmp_path / "empty.jsonl"), key)
  long = {"prompt": "Sort: 1 2", "response": " ".join("9" * 30)}
  short = {"prompt": "Sort: 1 2", "response": "1 2"}
  encoded, stats = sft.encode_split(tok, [("a:1", long), ("a:2", short)], 24)
  assert stats.examples == 2 and stats.truncated == 1 and len(encoded[0]["input_ids"]) == 24
  assert stats.loss_tokens == sum(int(e["loss_mask"][1:].sum()) for e in encoded) == 11 + 3
  with pytest.raises(DataError, match=r"^a:1: no response token within "
                                      r"config.data.seq_len=12 \(the example is 17 tokens\)"):
    sft.encode_split(tok, [("a:1", short)], 12)
  with pytest.raises(ConfigError, match="config.data.chat_template: 'chatml' is not one of"):
    sft.with_template(tok, "chatml")


def test_sft_data_bundle_holdout_and_config_errors(tmp_path):
  c = text.sft_config(train=f"{TINY}/validation.jsonl", tokenizer=TINY, seq_len=64,
                      batch_size=4)
  bundle = text.text_data(c, seed=0, shard_index=0, shard_count=1)
  assert bundle.info.format == "sft" and bundle.info.vocab.size == 400
  batch = next(bundle.train_iterator)
  assert {k: v.shape for k, v in batch.items()} == {k: (4, 64) for k in (
      "input_ids", "segment_ids", "positions", "attention_mask", "loss_mask")}
  held = [r for b in bundle.eval_batches("validation") for r in b["segment_ids"][b["valid"]]]
  examples = sft.read_sft_jsonl(f"{TINY}/validation.jsonl", "k")
  train, validation = sft.holdout(examples, 0.05)
  assert sum(len(set(r[r > 0].tolist())) for r in held) == len(validation) == 5
  assert {json.dumps(e) for _, e in train}.isdisjoint(json.dumps(e) for _, e in validation)
  assert sft.holdout(examples[::-1], 0.05)[1] == validation[::-1]  # by content, not order
  with pytest.raises(ConfigError, match=r"config.data.holdout=1.5: a fraction in \(0, 1\)"):
    sft.holdout(examples, 1.5)
  with pytest.raises(ConfigError, match="config.data.files.test: no JSONL file given"):
    next(iter(bundle.eval_batches("test")))
  bad = [(dict(tokenizer=dict(c.tokenizer, path="")), "config.data.tokenizer.path: format "
                                                     "'sft' needs a Hugging Face tokenizer"),
         (dict(source="corpus"), "config.data.source: format 'sft' reads 'jsonl'"),
         (dict(format="labeled"), "config.data.tokenizer.path: a Hugging Face tokenizer serves")]
  for change, error in bad:
    broken = ml_collections.ConfigDict(c.to_dict())
    broken.update(change)
    with pytest.raises(ConfigError, match=error):
      text.text_data(broken, seed=0, shard_index=0, shard_count=1)


# --- packing -------------------------------------------------------------------------------

EXAMPLES = [{"prompt": "Sort: 3 1 2", "response": "1 2 3"},
            {"prompt": "Uppercase: d o g", "response": "D O G"},
            {"prompt": "Add 12 and 7.", "response": "19"}]


def _rows(tok, seq_len=64):
  encoded, _ = sft.encode_split(tok, [(f"x:{i}", e) for i, e in enumerate(EXAMPLES)], seq_len)
  return encoded, sft.eval_rows(encoded, seq_len)


def test_packed_rows_restart_positions_per_example(tok):
  encoded, rows = _rows(tok)
  lengths = [len(e["input_ids"]) for e in encoded]
  assert rows["input_ids"].shape == (1, 64) and sum(lengths) <= 64
  seg, pos = rows["segment_ids"][0], rows["positions"][0]
  starts = np.cumsum([0] + lengths)
  for k, (a, b) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
    np.testing.assert_array_equal(seg[a:b], k + 1)
    np.testing.assert_array_equal(pos[a:b], np.arange(b - a))
    np.testing.assert_array_equal(rows["loss_mask"][0, a:b], encoded[k]["loss_mask"])
  assert not seg[starts[-1]:].any() and not rows["attention_mask"][0, starts[-1]:].any()
  # The task's targets: exactly the trained tokens of each example, never across examples.
  weights = np.asarray(text_tasks.SFT(vocab_size=400).target_weights(rows))[0]
  targets = rows["input_ids"][0, 1:][weights]
  assert _decode(tok, targets) == "1 2 3<|im_end|>D O G<|im_end|>19<|im_end|>"


def test_train_stream_is_seeded_and_resumes(tok):
  encoded, _ = _rows(tok, 32)
  make = lambda: sft.train_iterator(encoded * 4, seq_len=32, seed=3, batch_size=2)
  it = make()
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  after = [next(it) for _ in range(2)]
  again = make()
  again.set_state(state)
  for a, b in zip(after, [next(again) for _ in range(2)], strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  assert set(first[0]) == {"input_ids", "segment_ids", "positions", "attention_mask",
                           "loss_mask"} and first[0]["input_ids"].shape == (2, 32)


# --- the model and the loss ----------------------------------------------------------------

LLAMA = dict(vocab_size=400, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
             intermediate_size=32, max_position_embeddings=64, norm="rms",
             position_embedding="rope", gated_mlp=True, activation="silu", qkv_bias=False,
             out_bias=False, mlp_bias=False, dropout_rate=0.0, attention_dropout_rate=0.0)


def test_a_changed_token_leaves_the_other_examples_bit_identical(tok):
  encoded, rows = _rows(tok)
  batch = {k: jnp.asarray(v) for k, v in rows.items() if k != "loss_mask"}
  model = Model(gpt(**LLAMA), {"lm": CausalLMHead()})
  params = jax.jit(model.init)(jax.random.PRNGKey(0), batch)
  logits = jax.jit(lambda b: model.apply(params, b)["lm"])
  base = np.asarray(logits(batch))
  a, b, c = np.cumsum([len(e["input_ids"]) for e in encoded])
  changed = np.asarray(logits({**batch, "input_ids": batch["input_ids"].at[0, a + 2].set(7)}))
  np.testing.assert_array_equal(changed[0, :a], base[0, :a])  # example 1: bit-identical
  np.testing.assert_array_equal(changed[0, b:c], base[0, b:c])  # example 3 too
  assert not np.array_equal(changed[0, a + 2:b], base[0, a + 2:b])  # example 2 did change


class _Embedder(nn.Module):
  """A stand-in backbone (cheap to compile): embedding + dense, the features a decoder gives."""

  @nn.compact
  def __call__(self, batch, *, train):
    embed = nn.Embed(400, 16, name="word_embeddings")
    x = jnp.tanh(nn.Dense(16, name="dense")(embed(batch["input_ids"])))
    return {"sequence": x, "word_embeddings": embed.embedding}


def _sft_batch(tok, seq_len=24):
  """Four rows with 2, 10, 2 and 12 response tokens."""
  rows = [{"prompt": "Sort: 1", "response": "1"},
          {"prompt": "Reverse the letters: a", "response": " ".join("abcdefghij")},
          {"prompt": "Add 1 and 2.", "response": "3"},
          {"prompt": "Uppercase: a", "response": " ".join("ABCDEFGHIJK")}]
  encoded, _ = sft.encode_split(tok, [(f"x:{i}", e) for i, e in enumerate(rows)], seq_len)
  return {k: jnp.asarray(v) for k, v in sft.eval_rows(encoded, seq_len).items()}


def _setup(tok, *, tied=False, chunk=0):
  task = text_tasks.SFT(vocab_size=400, exact_vocab=False)
  model = Model(_Embedder(), {"lm": CausalLMHead(tied=tied, chunk=chunk)})
  batch = _sft_batch(tok)
  params = jax.jit(model.init)(jax.random.PRNGKey(1), task.inputs(batch, None, False))["params"]

  def loss_fn(params, ms, batch, rng):  # as train.steps' loss_fn
    inputs = task.inputs(batch, rng, True)
    outputs = model.apply({"params": params}, tasks.model_batch(task, inputs), train=True)
    loss, metrics = task.loss(outputs, inputs, batch)
    return loss, (metrics, ms)

  return task, model, batch, params, loss_fn


def test_accumulation_normalizes_by_the_whole_batch_token_count(tok):
  task, model, batch, params, loss_fn = _setup(tok)
  params = jax.tree_util.tree_map(lambda x: 30 * x, params)  # rows' losses far apart
  counts = np.asarray(task.target_weights(batch)).sum(1)
  assert counts.tolist() == [2, 10, 2, 12]  # rows (= microbatches) of unequal weight

  @jax.jit
  def both(params, batch):
    one, four = (accumulate.value_and_grad(loss_fn, params, {}, batch, jax.random.PRNGKey(0),
                                           steps=k) for k in (1, 4))
    per_row = task.eval_outputs(model.apply({"params": params}, task.inputs(batch, None, False)),
                                None, batch)
    return one, four, per_row["lm_nll"] / per_row["lm_count"]

  ((loss1, (m1, _)), g1), ((loss4, (m4, _)), g4), row_losses = both(params, batch)
  assert float(m4["loss_count"]) == float(m1["loss_count"]) == counts.sum()
  np.testing.assert_allclose(loss4, loss1, rtol=1e-6)
  np.testing.assert_allclose(m4["accuracy"], m1["accuracy"], rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g4), jax.tree_util.tree_leaves(g1), strict=True):
    # Float32 summation order differs between the two (and with XLA's optimization level):
    # entries near zero are compared at the scale of their leaf.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
  # A plain mean of the 4 microbatch (= row) losses would be measurably different.
  assert abs(float(np.mean(row_losses)) - float(loss1)) > 1e-2


@pytest.mark.parametrize("tied", [True, False])
def test_chunked_cross_entropy_equals_full_logits(tok, tied):
  task, full, batch, params, loss_fn = _setup(tok, tied=tied, chunk=0)
  chunked = Model(_Embedder(), {"lm": CausalLMHead(tied=tied, chunk=5)})  # 24 = 4 x 5 + 4

  def value_and_grad(model):
    def fn(p):
      inputs = task.inputs(batch, None, True)
      loss, metrics = task.loss(model.apply({"params": p}, inputs), inputs, batch)
      return loss, metrics
    return jax.value_and_grad(fn, has_aux=True)(params)

  (l0, m0), g0 = jax.jit(lambda: value_and_grad(full))()
  (l1, m1), g1 = jax.jit(lambda: value_and_grad(chunked))()
  np.testing.assert_allclose(l1, l0, atol=1e-5)
  assert float(m1["accuracy"]) == float(m0["accuracy"])
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)
  # Without lm_targets the head gives the logits, and the task's loss from them is the same.
  outputs = full.apply({"params": params}, tasks.model_batch(task, batch))
  assert outputs["lm"].shape == (4, 24, 400)
  np.testing.assert_allclose(task.loss(outputs, batch, batch)[0], l0, atol=1e-5)


def test_sft_task_builder_and_vocab_check(tok):
  info = TextInfo(name="x", format="sft", seq_len=32, vocab=hf_vocab(tok), lowercase=False)
  task, heads = tasks.BUILDERS["sft"]({"tied": False, "loss_chunk": 64}, info)
  assert task.kind == "sft" and not task.exact_vocab
  assert heads.chunk == 64 and not heads.tied
  with pytest.raises(ConfigError, match="config.task.name='sft' needs config.data.format"):
    tasks.BUILDERS["sft"]({}, dataclasses.replace(info, format="packed"))
  small = {"features": {"word_embeddings": jnp.zeros((300, 4))},
           "lm": {"nll": jnp.zeros((1, 4)), "correct": jnp.zeros((1, 4))}}
  batch = {"input_ids": jnp.zeros((1, 4), int), "attention_mask": jnp.ones((1, 4)),
           "loss_mask": jnp.ones((1, 4))}
  with pytest.raises(ConfigError, match="config.model.vocab_size=300 is smaller than the "
                                        "tokenizer's 400 tokens"):
    task.loss(small, batch, batch)
  bigger = {**small, "features": {"word_embeddings": jnp.zeros((512, 4))}}
  assert float(task.loss(bigger, batch, batch)[1]["loss_count"]) == 3
