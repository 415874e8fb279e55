"""A text run is self-contained and predicts what its evaluation saw.

One tiny classifier on the shipped reviews (configs/glue.py:task=sentiment, its vocabulary
trained on the shipped train file into a private data dir): predict gives the run's own eval
probabilities and accuracy, whatever the length bucket; moved to another path with its data
dir gone, it still predicts (API and CLI) and resumes.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from ptft_jax import data, tasks, train
from ptft_jax.data.text import examples, sources
from ptft_jax.inference import predictor as inference
from ptft_jax.train import checkpoint, steps
from tests.helpers import REPO, load_config

pytestmark = pytest.mark.usefixtures("compile_cache")

SEQ_LEN = 48  # buckets (32, 48): reviews land in both, and the longest are truncated


def tiny_text_config(*, train_steps: int = 3, seq_len: int = SEQ_LEN):
  """glue.py:task=sentiment shrunk: a 512-token vocabulary trained on the shipped train file,
  a 1-layer BERT of width 16, no dropout, evaluated on test at the end only."""
  c = load_config("glue", f"task=sentiment,model=tiny,seq_len={seq_len},steps={train_steps},"
                          "batch=16,lr=3e-3")
  c.data.eval_batch_size = 64
  c.data.tokenizer.vocab_size = 512
  c.data.tokenizer.train_files = (sources.example_name("sentiment", "train"),)
  c.model.update(vocab_size=512, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                 max_position_embeddings=64, dropout_rate=0.0, attention_dropout_rate=0.0)
  c.task.head_dropout_rate = 0.0
  c.train.log_every, c.train.eval_every, c.train.tensorboard = 1, 0, False
  c.eval_splits = ("test",)
  return c


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, config, private data dir) of the tiny sentiment run."""
  root = tmp_path_factory.mktemp("portable")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("PTFT_DATA_DIR", str(root / "data"))
    config = tiny_text_config()
    workdir = str(root / "run")
    train.train_and_evaluate(config, workdir)
    yield workdir, config, str(root / "data")


def _test_file() -> tuple[list[str], list[str]]:
  path = sources.resolve_path(sources.example_name("sentiment", "test"))
  rows = [json.loads(line) for line in open(path, encoding="utf-8")]
  return [r["text"] for r in rows], [r["label"] for r in rows]


def _eval_pass(workdir: str, split: str = "test"):
  """Per-example (probabilities, label) of the run's evaluation pass over `split`.

  The eval pipeline's batches through the eval step (its loss is -log p[label]) and through
  the model (the whole probability vector).
  """
  config = inference.read_config(workdir)
  bundle = data.make_data(config.data, seed=config.seed)
  run = inference.load_run(workdir, info=bundle.info)
  eval_step = jax.jit(steps.make_eval_step(run.model, run.task))
  apply = jax.jit(lambda v, b: jax.nn.softmax(
      run.model.apply(v, b, train=False)[run.task.head_name], axis=-1))
  variables = dict(run.variables)
  params = variables.pop("params")
  probs, labels = [], []
  for batch in bundle.eval_batches(split):
    out = eval_step(params, variables, batch)
    p = np.asarray(apply(run.variables, tasks.model_batch(run.task, batch)))
    valid = batch["valid"]
    label = batch["label"][valid]
    np.testing.assert_allclose(np.exp(-np.asarray(out["loss"])[valid]),
                               p[valid][np.arange(len(label)), label], atol=1e-5)
    probs.append(p[valid])
    labels.append(label)
  return np.concatenate(probs), np.concatenate(labels)


def test_predict_gives_the_eval_probabilities_in_every_bucket(run):
  workdir, _, _ = run
  texts, _ = _test_file()
  predictor = inference.load_predictor(workdir, batch_size=16)
  assert predictor.buckets == (32, SEQ_LEN)  # the run's seq_len, not max_position_embeddings
  lengths = [len(e.ids) for e in predictor.tokenizer.encode_batch(texts)]
  assert min(lengths) <= 32 < max(lengths) and max(lengths) > SEQ_LEN
  assert any(32 < n <= SEQ_LEN for n in lengths)
  out = predictor.predict(texts)
  assert predictor.traces == 2 and out.truncated == sum(n > SEQ_LEN for n in lengths) > 0
  expected, _ = _eval_pass(workdir)
  np.testing.assert_allclose(out.probabilities, expected, atol=1e-5)
  # The same text alone (another batch, another row) and among long ones: the same answer.
  short = int(np.argmin(lengths))
  alone = predictor.predict([texts[short]]).probabilities[0]
  np.testing.assert_allclose(alone, expected[short], atol=1e-5)
  longest = int(np.argmax(lengths))
  mixed = predictor.predict([texts[longest], texts[short]]).probabilities
  np.testing.assert_allclose(mixed, expected[[longest, short]], atol=1e-5)


def test_predict_and_eval_encode_with_one_function(run):
  workdir, _, _ = run
  predictor = inference.load_predictor(workdir)
  words = "the screen was truly amazing and the packaging was grim".split()
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(words, n)) for n in (3, 20, 40, 70)]
  pairs = [" ".join(rng.choice(words, n)) for n in (2, 30, 5, 60)]
  for second in (None, pairs):
    encoded, _ = predictor.encode_texts(texts, second)
    want = examples.encode_labeled(predictor.tokenizer, predictor.vocab, texts, second, SEQ_LEN)
    for rows, columns in encoded:
      width = columns["input_ids"].shape[1]
      for name, column in columns.items():
        np.testing.assert_array_equal(column, want[name][rows, :width])
        assert not want[name][rows, width:].any()  # only padding beyond the bucket


def test_predict_cli_accuracy_equals_eval_test_json(run, tmp_path):
  workdir, _, _ = run
  texts, labels = _test_file()
  out = tmp_path / "preds.jsonl"
  path = sources.resolve_path(sources.example_name("sentiment", "test"))
  r = subprocess.run([sys.executable, "-m", "ptft_jax.predict", f"--workdir={workdir}",
                      f"--input={path}", f"--output={out}"], cwd=REPO, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  predicted = [json.loads(line)["label"] for line in open(out)]
  assert len(predicted) == len(texts)
  accuracy = float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
  saved = json.load(open(os.path.join(workdir, "eval_test.json")))
  assert accuracy == pytest.approx(saved["accuracy"], abs=1e-9)


def test_moved_run_without_its_data_dir_predicts_and_resumes(run, tmp_path, monkeypatch):
  workdir, config, data_dir = run
  saved = json.load(open(os.path.join(workdir, "config.json")))
  assert saved["data"]["files"] == {s: f"pkg://sentiment/{s}.jsonl"
                                    for s in ("train", "validation", "test")}
  assert saved["data"]["tokenizer"]["train_files"] == ["pkg://sentiment/train.jsonl"]
  record = json.load(open(os.path.join(workdir, "labels.json")))
  assert record["vocab"] == "vocab.txt" and record["seq_len"] == SEQ_LEN
  texts = _test_file()[0][:20]
  before = inference.load_predictor(workdir).predict(texts).probabilities

  moved = str(tmp_path / "elsewhere" / "run")
  shutil.copytree(workdir, moved)
  hidden = workdir + ".hidden"
  os.rename(workdir, hidden)  # nothing may still point at the old path
  shutil.rmtree(data_dir)  # the vocabulary cache is gone
  fresh = tmp_path / "fresh_data"
  monkeypatch.setenv("PTFT_DATA_DIR", str(fresh))
  try:
    after = inference.load_predictor(moved).predict(texts).probabilities
    np.testing.assert_allclose(after, before, atol=1e-6)
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    r = subprocess.run([sys.executable, "-m", "ptft_jax.predict", f"--workdir={moved}",
                        f"--input={src}", f"--output={out}"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = [list(json.loads(line)["probabilities"].values()) for line in open(out)]
    np.testing.assert_allclose(got, before, atol=1e-5)
    assert not fresh.exists()  # predicting trained no vocabulary

    longer = config.copy_and_resolve_references()
    longer.train.steps = config.train.steps + 1  # resume in the moved workdir
    train.train_and_evaluate(longer, moved)
    assert checkpoint.complete_steps(moved)[-1] == config.train.steps + 1
  finally:
    os.rename(hidden, workdir)
