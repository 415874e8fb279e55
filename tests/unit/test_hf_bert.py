"""HF BERT import/export against real all-MiniLM-L6-v2 weights and bad files.

The reference comes from HF transformers + torch (tools/make_bert_fixture.py);
torch is not needed here.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
import safetensors.numpy
import tokenizers

from ptft_jax.convert import __main__ as cli
from ptft_jax.convert.hf_bert import export_hf_bert, load_hf_bert, load_hf_bert_heads
from ptft_jax.convert.minilm import minilm_dir
from ptft_jax.errors import CheckpointError, UserError
from ptft_jax.models.transformer import BertEncoder, TransformerConfig, bert_encode
from tests.helpers import FIXTURES

FIXTURE = os.path.join(FIXTURES, "minilm_reference.npz")
TINY = TransformerConfig(vocab_size=12, hidden_size=8, num_layers=1, num_heads=2,
                         intermediate_size=16, max_position_embeddings=16)


@pytest.fixture(scope="module")
def reference():
  with np.load(FIXTURE, allow_pickle=False) as f:
    return dict(f)


@pytest.fixture(scope="module")
def minilm():
  return load_hf_bert(minilm_dir())


def test_minilm_matches_hf_reference(minilm, reference):
  config, params = minilm
  assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
  assert config.pooler and load_hf_bert_heads(minilm_dir()) == {}
  inputs = {k: reference[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
  out = bert_encode(config, params, **inputs)
  assert np.max(np.abs(np.asarray(out) - reference["last_hidden_state"])) <= 1e-4
  config = dataclasses.replace(config, attention_impl="einsum")
  pooled = BertEncoder(config).apply({"params": params}, inputs, train=False)["pooled"]
  assert np.max(np.abs(np.asarray(pooled) - reference["pooler_output"])) <= 1e-4


def test_wordpiece_tokenizer_matches_hf(reference):
  vocab = os.path.join(minilm_dir(), "vocab.txt")
  tokenizer = tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)
  for i, (a, b) in enumerate(zip(reference["text_a"], reference["text_b"], strict=True)):
    enc = tokenizer.encode(str(a), str(b)) if b else tokenizer.encode(str(a))
    n = int(reference["attention_mask"][i].sum())
    assert enc.ids == reference["input_ids"][i, :n].tolist()
    assert enc.type_ids == reference["token_type_ids"][i, :n].tolist()


def test_minilm_export_roundtrip(minilm, tmp_path):
  config, params = minilm
  export_hf_bert(config, params, tmp_path, vocab_file=os.path.join(minilm_dir(), "vocab.txt"))
  assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertModel"]
  config2, params2 = load_hf_bert(tmp_path)
  assert config2 == config
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)


def _tiny_params(seed=0):
  shapes = jax.eval_shape(lambda: BertEncoder(TINY).init(
      jax.random.key(0), {"input_ids": np.zeros((1, 1), np.int32)}, train=False))["params"]
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _tiny_heads():
  rng = np.random.default_rng(1)
  r = lambda *shape: rng.normal(size=shape).astype(np.float32)
  return {"mlm": {"bias": r(12), "transform": {"dense": {"kernel": r(8, 8), "bias": r(8)},
                                                "layer_norm": {"scale": r(8), "bias": r(8)}}},
          "nsp": {"dense": {"kernel": r(8, 2), "bias": r(2)}}}


@pytest.fixture
def tiny_dir(tmp_path):
  vocab = tmp_path / "vocab_src.txt"
  vocab.write_text("".join(f"tok{i}\n" for i in range(TINY.vocab_size)))
  export_hf_bert(TINY, _tiny_params(), tmp_path / "bert", vocab_file=vocab)
  return tmp_path / "bert"


def test_tiny_roundtrip_with_heads(tmp_path):
  params, heads = _tiny_params(), _tiny_heads()
  export_hf_bert(TINY, params, tmp_path, heads=heads)
  names = safetensors.numpy.load_file(tmp_path / "model.safetensors")
  assert "bert.embeddings.word_embeddings.weight" in names
  assert names["cls.seq_relationship.weight"].shape == (2, 8)
  config, params2 = load_hf_bert(tmp_path)
  assert config == TINY
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, params2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, heads, load_hf_bert_heads(tmp_path))


def _rewrite(model_dir, edit):
  path = model_dir / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  edit(tensors)
  safetensors.numpy.save_file(tensors, path)


QUERY = "encoder.layer.0.attention.self.query.weight"


def _add_untied_mlm(tensors):
  ones = lambda *shape: np.ones(shape, np.float32)
  tensors.update({"cls.predictions.transform.dense.weight": ones(8, 8),
                  "cls.predictions.transform.dense.bias": ones(8),
                  "cls.predictions.transform.LayerNorm.weight": ones(8),
                  "cls.predictions.transform.LayerNorm.bias": ones(8),
                  "cls.predictions.bias": ones(12),
                  "cls.predictions.decoder.weight": ones(12, 8)})

BAD_FILES = {
    "missing": (lambda t: t.pop(QUERY), f"missing tensors: {QUERY}"),
    "extra": (lambda t: t.update({"classifier.weight": np.ones((3, 8), np.float32)}),
              "unexpected tensors: classifier.weight"),
    "shape": (lambda t: t.update({QUERY: np.ones((8, 7), np.float32)}),
              f"'{QUERY}' has shape (8, 7), expected (8, 8)"),
    "int_dtype": (lambda t: t.update({QUERY: np.ones((8, 8), np.int32)}),
                  f"'{QUERY}' has dtype I32"),
    "dotdot": (lambda t: t.update({"../escape.weight": np.ones(2, np.float32)}),
               "unsafe tensor name '../escape.weight'"),
    "absolute": (lambda t: t.update({"/etc/x": np.ones(2, np.float32)}),
                 "unsafe tensor name '/etc/x'"),
    "untied": (_add_untied_mlm, "untied MLM output layers are not supported"),
    "partial_head": (lambda t: t.update({"cls.predictions.bias": np.ones(12, np.float32)}),
                     "missing tensors: cls.predictions.transform.LayerNorm.bias"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_safetensors_give_one_line_errors(tiny_dir, case):
  edit, message = BAD_FILES[case]
  _rewrite(tiny_dir, edit)
  with pytest.raises(CheckpointError) as info:
    load_hf_bert(tiny_dir)
  text = str(info.value)
  assert "\n" not in text and message in text and str(tiny_dir) in text


def test_bad_vocab_and_config(tiny_dir, tmp_path):
  config, _ = load_hf_bert(tiny_dir)
  assert config == TINY
  (tiny_dir / "vocab.txt").write_text("a\nb\n")
  with pytest.raises(CheckpointError, match=r"vocab.txt: 2 lines but config vocab_size is 12$"):
    load_hf_bert(tiny_dir)
  (tiny_dir / "vocab.txt").unlink()
  hf = json.loads((tiny_dir / "config.json").read_text())
  (tiny_dir / "config.json").write_text(json.dumps({**hf, "hidden_act": "gelu_new"}))
  with pytest.raises(CheckpointError, match="hidden_act 'gelu_new' is not supported"):
    load_hf_bert(tiny_dir)
  with pytest.raises(UserError, match="pre_norm=True"):
    export_hf_bert(dataclasses.replace(TINY, pre_norm=True), _tiny_params(), tmp_path / "x")
  bad = _tiny_params()
  bad["layer_0"]["mlp"]["output"]["kernel"] = np.ones((16, 9), np.float32)
  with pytest.raises(CheckpointError, match=r"layer_0/mlp/output/kernel has HF shape \(9, 16\)"):
    export_hf_bert(TINY, bad, tmp_path / "x")


def test_unprefixed_and_legacy_names_load(tiny_dir):
  def legacy(tensors):
    for name in [n for n in tensors if "LayerNorm.weight" in n]:
      tensors["bert." + name.replace("weight", "gamma")] = tensors.pop(name)
    for name in [n for n in tensors if not n.startswith("bert.")]:
      tensors["bert." + name] = tensors.pop(name)
    tensors["bert.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
  _rewrite(tiny_dir, legacy)
  config, params = load_hf_bert(tiny_dir)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, _tiny_params())


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
  assert cli.main(["hf-bert", "--src", str(tmp_path / "nope"), "--workdir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "config.json: not found" in err
