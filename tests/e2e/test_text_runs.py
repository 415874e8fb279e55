"""Text tasks: BERT masking, causal-LM targets on packed rows, metrics, configs, and a tiny
MLM+NSP pretraining -> classification fine-tuning run through the real train loop."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptft_jax import train
from ptft_jax.convert.hf_bert import export_hf_bert
from ptft_jax.data import text
from ptft_jax.models.transformer import BertEncoder, TransformerConfig
from ptft_jax.train import reports
from tests.helpers import load_config

GPT = TransformerConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2,
                        intermediate_size=32, max_position_embeddings=16, type_vocab_size=0,
                        dropout_rate=0.0, attention_dropout_rate=0.0, causal=True,
                        pre_norm=True, pooler=False)


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
  pretrain = load_config("bert", "tiny")
  pretrain.data = _stage_data(pretrain.data)
  pretrain.task.max_predictions_per_seq = 5
  pretrain = _tiny_stage(pretrain, 30, 3e-3)
  pretrain.eval_splits = ("validation",)
  files = {s: _topic_jsonl(tmp_path / f"{s}.jsonl", n, i) for i, (s, n) in enumerate(
      {"train": 192, "validation": 64, "test": 64}.items())}
  finetune = load_config("glue", "task=jsonl,model=tiny,pooling=mean,train={train},"
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
  config = type(load_config("bert", "tiny"))({"stages": {"hf": {"import_hf_bert": str(
      tmp_path / "hf")}}})
  for _ in range(2):  # the second run keeps the first import
    train.run(config, str(tmp_path / "run"))
  assert "imported weights already in" in capsys.readouterr().out
  imported = tmp_path / "run" / "hf"
  assert {"model_config.json", "vocab.txt", "checkpoints"} <= set(os.listdir(imported))
  glue = load_config("glue", f"task=jsonl,train=a.jsonl,validation=b.jsonl,init={imported}")
  assert glue.model.to_dict() == {"name": "bert", **dataclasses.asdict(tiny)}
  assert glue.data.tokenizer.vocab == str(imported / "vocab.txt")
  assert glue.data.tokenizer.lowercase and glue.init.pretrained_workdir == str(imported)
  assert glue.eval_splits == ("validation",) and glue.task.name == "text_classification"
  with pytest.raises(ValueError, match="neither model_config.json"):
    load_config("glue", f"task=sst2,init={tmp_path}")


def text_model_init(config):
  batch = {"input_ids": jnp.zeros((1, 4), jnp.int32)}
  return BertEncoder(config).init(jax.random.PRNGKey(0), batch, train=False)["params"]


