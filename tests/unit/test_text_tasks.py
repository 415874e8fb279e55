"""Text tasks: BERT masking, causal-LM targets on packed rows, metrics, configs, and a tiny
MLM+NSP pretraining -> classification fine-tuning run through the real train loop."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import tensorflow_datasets as tfds

from ptft_jax import data, tasks
from ptft_jax.data import text
from ptft_jax.data.text.tokenizer import Vocab
from ptft_jax.errors import ConfigError
from ptft_jax.models import Model, build_model
from ptft_jax.models.transformer import GptDecoder, TransformerConfig
from ptft_jax.tasks import metrics
from ptft_jax.tasks import text as tasks_text
from tests.helpers import load_config


def test_masking_statistics():
  rng = np.random.default_rng(0)
  b, seq, special = 2048, 48, (0, 1, 2, 3, 4)
  lengths = rng.integers(6, seq + 1, b)
  ids = rng.integers(5, 500, (b, seq))
  ids[:, 0] = 2
  ids[np.arange(b), lengths - 1] = 3
  ids[np.arange(seq)[None] >= lengths[:, None]] = 0
  ids[rng.random((b, seq)) < 0.02] = 1  # a few [UNK]s, never chosen either
  ids = jnp.asarray(ids, jnp.int32)
  task = tasks_text.MaskedLM(vocab_size=500, mask_id=4, special_ids=special, max_predictions=5)
  batch = {"input_ids": ids, "attention_mask": jnp.asarray(np.arange(seq) < lengths[:, None])}
  out = jax.jit(task.inputs, static_argnums=2)(batch, jax.random.PRNGKey(1), True)
  new, pos, labels, w = (np.asarray(out[k]) for k in (
      "input_ids", "masked_positions", "masked_ids", "masked_weights"))
  ids = np.asarray(ids)
  candidates = (np.arange(seq) < lengths[:, None]) & ~np.isin(ids, special)
  n_cand = candidates.sum(1)
  assert pos.shape == (b, 5)
  np.testing.assert_array_equal(w.sum(1), np.minimum(np.clip(np.round(0.15 * n_cand), 1, 5),
                                                     n_cand))
  rows = np.repeat(np.arange(b)[:, None], 5, 1)
  assert candidates[rows[w], pos[w]].all()  # never special tokens or padding
  assert len({(r, p) for r, p in zip(rows[w], pos[w], strict=True)}) == w.sum()
  np.testing.assert_array_equal(labels[w], ids[rows[w], pos[w]])
  chosen = np.zeros_like(candidates)
  chosen[rows[w], pos[w]] = True
  np.testing.assert_array_equal(new[~chosen], ids[~chosen])  # the rest is untouched
  unlimited = n_cand <= 33  # round(0.15 n) <= 5 predictions: the rate is not capped
  assert abs(chosen[unlimited].sum() / n_cand[unlimited].sum() - 0.15) < 0.01
  picked, original = new[chosen], ids[chosen]
  assert abs(np.mean(picked == 4) - 0.8) < 0.015
  assert abs(np.mean((picked != 4) & (picked != original)) - 0.1) < 0.012
  assert abs(np.mean(picked == original) - 0.1) < 0.012
  assert picked.min() >= 4  # random replacements are never special tokens but [MASK]


GPT = TransformerConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                        intermediate_size=32, max_position_embeddings=16, type_vocab_size=0,
                        dropout_rate=0.0, attention_dropout_rate=0.0, causal=True,
                        pre_norm=True, pooler=False)


def test_causal_lm_on_packed_rows_ignores_padding_and_other_documents():
  vocab = Vocab(path="", size=50, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)
  docs = [[np.arange(10, 15, dtype=np.int32)], [np.arange(20, 24, dtype=np.int32)]]
  rows = text.pretraining_eval_set(docs, format="packed", seq_len=16, vocab=vocab, nsp=False,
                                   max_examples=8)
  np.testing.assert_array_equal(rows["segment_ids"][0], [1] * 6 + [2] * 5 + [0] * 5)
  task = tasks_text.CausalLM(vocab_size=50)
  np.testing.assert_array_equal(task.target_weights(rows)[0],
                                [1] * 5 + [0] + [1] * 4 + [0] * 5)
  model = Model(GptDecoder(GPT), {"lm": tasks.BUILDERS["causal_lm"]({}, _info("packed"))[1]})
  batch = {k: jnp.asarray(v) for k, v in rows.items()}
  params = model.init(jax.random.PRNGKey(0), batch)

  @jax.jit
  def run(ids):
    b = batch | {"input_ids": ids}
    logits = model.apply(params, b)["lm"]
    return task.eval_outputs({"lm": logits, "features": {}}, b, b), logits

  ids = batch["input_ids"]
  base, logits = run(ids)
  nll = -jax.nn.log_softmax(logits[0, :-1])[jnp.arange(15), ids[0, 1:]]
  np.testing.assert_allclose(base["lm_nll"][0], jnp.sum(nll * task.target_weights(batch)[0]),
                             rtol=1e-5)
  assert float(base["lm_count"][0]) == 9
  other_doc, other_logits = run(ids.at[0, :6].set(7))  # document 1 changed
  np.testing.assert_allclose(other_logits[0, 6:11], logits[0, 6:11], atol=1e-5)
  assert not np.allclose(other_doc["lm_nll"], base["lm_nll"])
  padding, _ = run(ids.at[0, 11:].set(9))
  np.testing.assert_allclose(padding["lm_nll"], base["lm_nll"], rtol=1e-6)


def _info(fmt, **kw):
  vocab = Vocab(path="", size=50, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)
  return text.TextInfo(name="x", format=fmt, seq_len=16, vocab=vocab, **kw)


def test_task_builders_check_the_data():
  with pytest.raises(ConfigError, match="config.task.name='causal_lm' needs config.data.format"):
    tasks.BUILDERS["causal_lm"]({}, _info("labeled"))
  with pytest.raises(ConfigError, match="needs float labels but dataset 'x' has class"):
    tasks.BUILDERS["text_regression"]({}, _info("labeled", label_type="class"))
  with pytest.raises(ConfigError, match="needs text data: set config.data.kind='text'"):
    tasks.BUILDERS["masked_lm"]({}, object())
  task, heads = tasks.BUILDERS["masked_lm"]({"max_predictions_per_seq": 3}, _info(
      "sentence_pairs", nsp=True))
  assert sorted(heads) == ["mlm", "nsp"] and task.max_predictions == 3 and task.nsp
  outputs = {"features": {"word_embeddings": jnp.zeros((40, 8))}, "lm": jnp.zeros((1, 4, 40))}
  with pytest.raises(ConfigError, match="config.model.vocab_size=40 but the tokenizer has 50"):
    tasks_text.CausalLM(vocab_size=50).loss(outputs, {}, {"input_ids": jnp.zeros((1, 4), int),
                                                           "attention_mask": jnp.ones((1, 4))})


def test_regression_metrics_against_scipy():
  rng = np.random.default_rng(0)
  labels = np.round(rng.uniform(0, 5, 200), 1)  # many ties
  predictions = labels + rng.normal(0, 1, 200)
  predictions[:20] = predictions[0]  # ties in the predictions too
  got = metrics.regression_metrics(labels, predictions)
  assert got["pearson"] == pytest.approx(scipy.stats.pearsonr(labels, predictions)[0], abs=1e-12)
  assert got["spearman"] == pytest.approx(
      scipy.stats.spearmanr(labels, predictions)[0], abs=1e-12)
  assert got["mse"] == pytest.approx(np.mean((labels - predictions) ** 2))
  np.testing.assert_array_equal(metrics.ranks([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
  assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0
  summary = tasks_text.TextRegression(vocab_size=5).summarize(
      {"loss": np.array([1.0, 3.0]), "label": np.array([0.0, 1.0]),
       "prediction": np.array([0.2, 0.4])}, None)
  assert summary["loss"] == 2.0 and summary["pearson"] == pytest.approx(1.0)
  binary = tasks_text.TextClassification(num_classes=2, vocab_size=5).summarize(
      {"loss": np.zeros(5), "label": np.array([1, 1, 1, 0, 0]),
       "prediction": np.array([1, 1, 0, 1, 0])}, None)
  assert binary["f1"] == pytest.approx(2 / 3) and binary["accuracy"] == pytest.approx(0.6)


@pytest.mark.parametrize("task,head", [("sst2", 2), ("stsb", 1)])
def test_glue_config_builds_with_mock_data(tmp_path, task, head):
  config = load_config("glue", f"task={task},model=tiny,data_dir={tmp_path},seq_len=32,batch=8")
  config.data.eval_batch_size = 16
  with tfds.testing.mock_data(num_examples=20):
    bundle = data.make_data(config.data, seed=0)
    batch = next(bundle.train_iterator)
    evals = list(bundle.eval_batches("validation"))
  assert batch["input_ids"].shape == (8, 32) and (batch["input_ids"][:, 0] == 2).all()
  assert sum(int(b["valid"].sum()) for b in evals) == 20
  task_obj, heads = tasks.build_task(config, bundle.info)
  if head == 1:
    assert batch["label"].dtype == np.float32 and task_obj.kind == "text_regression"
  else:
    assert bundle.info.label_names == ("negative", "positive") and batch["label"].dtype == np.int32
  model = build_model(config.model, heads)
  inputs = {k: jnp.asarray(v) for k, v in batch.items() if k != "label"}
  out = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), inputs)[0])
  assert out[task_obj.head_name].shape == (8, head)
  assert config.eval_splits == ("validation",) and config.model.vocab_size == 4096


def test_minilm_text_config():
  config = load_config("minilm_text", "tiny")
  assert list(config.stage_order) == ["minilm", "pretrained", "scratch"]
  assert os.path.isfile(os.path.join(config.stages.minilm.import_hf_bert, "model.safetensors"))
  pretrained, scratch = config.stages.pretrained, config.stages.scratch
  assert pretrained.init.pretrained_workdir == "@minilm" and not scratch.init.pretrained_workdir
  assert pretrained.model == scratch.model and pretrained.data == scratch.data
  assert (pretrained.model.num_layers, pretrained.model.hidden_size,
          pretrained.model.vocab_size) == (6, 384, 30522)
  assert text.vocab_file_size(pretrained.data.tokenizer.vocab) == 30522
