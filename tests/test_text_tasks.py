"""Text tasks: BERT masking, causal-LM targets on packed rows, metrics, configs, and a tiny
MLM+NSP pretraining -> classification fine-tuning run through the real train loop."""

import dataclasses
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import tensorflow_datasets as tfds

from ptft_jax import data, tasks, train
from ptft_jax.convert.hf_bert import export_hf_bert
from ptft_jax.data import text
from ptft_jax.data.text.tokenizer import Vocab
from ptft_jax.errors import ConfigError
from ptft_jax.models import Model, build_model
from ptft_jax.models.transformer import BertEncoder, GptDecoder, TransformerConfig
from ptft_jax.tasks import metrics
from ptft_jax.tasks import text as tasks_text
from ptft_jax.train import reports

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def _config(name, arg=""):
  spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


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


def _stage_data(dc):
  dc.seq_len, dc.batch_size, dc.eval_batch_size, dc.max_eval_examples = 32, 32, 64, 64
  dc.tokenizer.vocab_size = 1024  # trained on the shipped corpus
  return dc


def _tiny_stage(c, steps, lr):
  c.model = dict(name="bert", vocab_size=1024, hidden_size=32, num_layers=1, num_heads=2,
                 intermediate_size=64, max_position_embeddings=32, dropout_rate=0.0,
                 attention_dropout_rate=0.0)
  c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = lr, 2, 0.01
  c.train.steps, c.train.log_every, c.train.eval_every = steps, 1, 0
  c.train.checkpoint_every, c.train.tensorboard = steps, False
  return c


def _topic_jsonl(path, n, seed):
  """Numbers vs text: which topic words a line holds (words of the shipped corpus)."""
  rng = np.random.default_rng(seed)
  filler = "the a of is and value object name list type when it can be".split()
  topics = ["integer float number arithmetic".split(), "string character text unicode".split()]
  with open(path, "w") as f:
    for i in range(n):
      words = list(rng.choice(filler, 5)) + list(rng.choice(topics[i % 2], 2))
      f.write(json.dumps({"text": " ".join(rng.permutation(words)), "label": i % 2}) + "\n")
  return path


def test_pretrain_mlm_nsp_then_finetune_classification(tmp_path):
  pretrain = _config("bert", "tiny")
  pretrain.data = _stage_data(pretrain.data)
  pretrain.task.max_predictions_per_seq = 5
  pretrain = _tiny_stage(pretrain, 30, 3e-3)
  pretrain.eval_splits = ("validation",)
  files = {s: _topic_jsonl(tmp_path / f"{s}.jsonl", n, i) for i, (s, n) in enumerate(
      {"train": 192, "validation": 64, "test": 64}.items())}
  finetune = _config("glue", "task=jsonl,model=tiny,pooling=mean,train={train},"
                     "validation={validation},test={test}".format(**files))
  finetune.data = _stage_data(finetune.data)
  finetune = _tiny_stage(finetune, 30, 3e-3)
  finetune.init.pretrained_workdir = str(tmp_path / "run" / "pretrain")
  finetune.eval_splits = ("test",)
  result = {name: train.train_and_evaluate(c, str(tmp_path / "run" / name))
            for name, c in (("pretrain", pretrain), ("finetune", finetune))}

  logged = lambda stage, key: [r[key] for r in reports.read_metrics(tmp_path / "run" / stage,
                                                                  "train")]
  mlm = logged("pretrain", "mlm_loss")
  assert np.mean(mlm[-5:]) < np.mean(mlm[:5]) - 0.5  # from ln(1024) = 6.9 down
  ev = result["pretrain"]["validation"]
  assert ev["mlm_perplexity"] == pytest.approx(np.exp(ev["mlm_loss"]))
  assert 0 < ev["mlm_accuracy"] < 1 and 0 < ev["nsp_accuracy"] < 1

  report = json.loads((tmp_path / "run" / "finetune" / "transfer_report.json").read_text())
  assert report["initialized"] == ["params/heads/classifier/classifier/bias",
                                   "params/heads/classifier/classifier/kernel"]
  assert report["loaded"] and all(p.startswith("params/backbone/") for p in report["loaded"])
  assert "params/backbone/pooler/dense/kernel" in report["loaded"]
  assert {p.split("/")[2] for p in report["ignored"]} == {"mlm", "nsp"}
  loss = logged("finetune", "loss")
  assert np.mean(loss[-5:]) < np.mean(loss[:5]) - 0.2
  test = result["finetune"]["test"]
  assert test["num_examples"] == 64 and test["accuracy"] > 0.8


def test_import_stage_and_glue_config_from_an_imported_workdir(tmp_path, capsys):
  tiny = TransformerConfig(vocab_size=12, hidden_size=8, num_layers=1, num_heads=2,
                           intermediate_size=16, max_position_embeddings=16)
  params = jax.tree_util.tree_map(
      lambda s: np.full(s.shape, 0.1, np.float32),
      jax.eval_shape(lambda: text_model_init(tiny)))
  vocab = tmp_path / "vocab_src.txt"
  vocab.write_text("".join(f"{t}\n" for t in text.SPECIAL_TOKENS + tuple("abcdefg")))
  export_hf_bert(tiny, params, tmp_path / "hf", vocab_file=vocab)
  config = type(_config("bert", "tiny"))({"stages": {"hf": {"import_hf_bert": str(
      tmp_path / "hf")}}})
  for _ in range(2):  # the second run keeps the first import
    train.run(config, str(tmp_path / "run"))
  assert "imported weights already in" in capsys.readouterr().out
  imported = tmp_path / "run" / "hf"
  assert {"model_config.json", "vocab.txt", "checkpoints"} <= set(os.listdir(imported))
  glue = _config("glue", f"task=jsonl,train=a.jsonl,validation=b.jsonl,init={imported}")
  assert glue.model.to_dict() == {"name": "bert", **dataclasses.asdict(tiny)}
  assert glue.data.tokenizer.vocab == str(imported / "vocab.txt")
  assert glue.data.tokenizer.lowercase and glue.init.pretrained_workdir == str(imported)
  assert glue.eval_splits == ("validation",) and glue.task.name == "text_classification"
  with pytest.raises(ValueError, match="neither model_config.json"):
    _config("glue", f"task=sst2,init={tmp_path}")


def text_model_init(config):
  batch = {"input_ids": jnp.zeros((1, 4), jnp.int32)}
  return BertEncoder(config).init(jax.random.PRNGKey(0), batch, train=False)["params"]


@pytest.mark.parametrize("task,head", [("sst2", 2), ("stsb", 1)])
def test_glue_config_builds_with_mock_data(tmp_path, task, head):
  config = _config("glue", f"task={task},model=tiny,data_dir={tmp_path},seq_len=32,batch=8")
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
  config = _config("minilm_text", "tiny")
  assert list(config.stage_order) == ["minilm", "pretrained", "scratch"]
  assert os.path.isfile(os.path.join(config.stages.minilm.import_hf_bert, "model.safetensors"))
  pretrained, scratch = config.stages.pretrained, config.stages.scratch
  assert pretrained.init.pretrained_workdir == "@minilm" and not scratch.init.pretrained_workdir
  assert pretrained.model == scratch.model and pretrained.data == scratch.data
  assert (pretrained.model.num_layers, pretrained.model.hidden_size,
          pretrained.model.vocab_size) == (6, 384, 30522)
  assert text.vocab_file_size(pretrained.data.tokenizer.vocab) == 30522
