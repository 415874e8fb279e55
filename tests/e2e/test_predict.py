"""Using a fine-tuned run: reloaded predictions, length buckets, bad inputs, label names,
and eval mode."""

import hashlib
import json
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from ptft_jax import base_config, data, tasks, train
from ptft_jax.data import text
from ptft_jax.errors import CheckpointError, ConfigError, DataError
from ptft_jax.inference import evaluate, predict
from ptft_jax.inference import predictor as inference
from ptft_jax.models import build_model
from ptft_jax.train import checkpoint
from tests.helpers import REPO


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A tiny digits MLP: 6 steps, evaluated at 3 and 6, best checkpoint kept by accuracy."""
  workdir = str(tmp_path_factory.mktemp("digits_run"))
  c = base_config()
  c.model.hidden_sizes = (32,)
  c.data.batch_size, c.data.eval_batch_size = 32, 64
  c.optim.lr, c.optim.warmup_steps = 3e-3, 2
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 6, 3, 3, 3
  c.train.tensorboard = False
  c.train.early_stopping.metric = "accuracy"
  c.eval_splits = ("test",)
  result = train.train_and_evaluate(c, workdir)
  return workdir, c, result


def _test_images(n=None):
  bundle = data.make_data(base_config().data, seed=0)
  batches = list(bundle.eval_batches("test"))
  images = np.concatenate([b["image"][b["valid"]] for b in batches])
  labels = np.concatenate([b["label"][b["valid"]] for b in batches])
  return (images, labels) if n is None else (images[:n], labels[:n])


def test_reloaded_predictions_equal_the_model_and_the_run_eval(digits_run):
  workdir, config, result = digits_run
  predictor = inference.load_predictor(workdir)
  images, labels = _test_images()
  out = predictor.predict(images)
  assert out.probabilities.shape == (len(images), 10)
  np.testing.assert_allclose(out.probabilities.sum(-1), 1.0, rtol=1e-5)
  # The same accuracy as the run's own final test evaluation (same step, same data).
  accuracy = np.mean(np.argmax(out.probabilities, -1) == labels)
  assert predictor.run.step == 6
  assert accuracy == pytest.approx(result["test"]["accuracy"], abs=1e-9)
  # ... and the same probabilities as a direct model.apply on the checkpoint's params.
  task, heads = tasks.build_task(config, data.dataset_info("digits"))
  model = build_model(config.model, heads)
  loaded, step = checkpoint.load_params(workdir)
  logits = model.apply({"params": loaded["params"], **loaded["model_state"]}, {"image": images},
                       train=False)["classifier"]
  np.testing.assert_allclose(out.probabilities, jax.nn.softmax(logits), atol=1e-6)
  assert out.labels[:5] == [predictor.label_names[i] for i in np.argmax(logits[:5], -1)]
  # One compiled shape for all 360 images (batches of 64 padded).
  assert predictor.traces == 1 and predictor.batch_size == 64


def test_best_and_step_checkpoints(digits_run, tmp_path):
  workdir, _, _ = digits_run
  best = json.load(open(os.path.join(workdir, "best.json")))
  p = inference.load_predictor(workdir, "best")
  assert p.run.step == best["step"] and p.run.tag == "best_"
  assert inference.load_predictor(workdir, 3).run.step == 3
  with pytest.raises(CheckpointError, match=r"no such complete step .* steps \[3, 6\]"):
    inference.load_run(workdir, 4)
  other = tmp_path / "no_best"
  other.mkdir()
  for name in ("config.json", "labels.json", "checkpoints"):
    os.symlink(os.path.join(workdir, name), other / name)
  with pytest.raises(CheckpointError, match="has no best checkpoint"):
    inference.load_run(str(other), "best")


def test_label_names_round_trip(digits_run, tmp_path):
  workdir, _, _ = digits_run
  record = json.load(open(os.path.join(workdir, "labels.json")))
  info = data.dataset_info("digits")
  assert record["label_names"] == list(info.label_names) and len(record["label_names"]) == 10
  assert record["image_shape"] == list(info.image_shape)
  images, labels = _test_images(3)
  np.save(tmp_path / "x.npy", (images * 16).round().astype(np.float32) / 16)
  assert predict.main(["--workdir", workdir, "--input", str(tmp_path / "x.npy"),
                       "--output", str(tmp_path / "out.jsonl")]) == 0
  rows = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
  assert [r["id"] for r in rows] == [0, 1, 2]
  assert all(set(r["probabilities"]) == set(info.label_names) for r in rows)
  assert all(r["label"] == max(r["probabilities"], key=r["probabilities"].get) for r in rows)


def _png(path, pixels):
  Image.fromarray(pixels.astype(np.uint8)).save(path)


def test_image_folder_bad_files_and_strict(digits_run, tmp_path, capsys):
  workdir, _, _ = digits_run
  images, _ = _test_images(2)
  folder = tmp_path / "images"
  folder.mkdir()
  gray = (images[..., 0] * 255).round()
  _png(folder / "a.png", gray[0])
  # An RGB image of another size: made grayscale and resized to 8 x 8.
  _png(folder / "b.png", np.repeat(np.kron(gray[1], np.ones((4, 4)))[..., None], 3, -1))
  (folder / "c.png").write_bytes(b"not a png")
  out = tmp_path / "out.jsonl"
  assert predict.main(["--workdir", workdir, "--input", str(folder), "--output", str(out)]) == 0
  err = capsys.readouterr().err
  assert f"skipped {folder / 'c.png'}: cannot read the image" in err
  rows = [json.loads(line) for line in open(out)]
  assert [r["id"] for r in rows] == ["a.png", "b.png"]
  predictor = inference.load_predictor(workdir)
  direct = predictor.predict(images[:2])
  np.testing.assert_allclose(list(rows[0]["probabilities"].values()), direct.probabilities[0],
                             atol=1e-5)  # PNG round trip of 0..16 / 16 pixels is exact
  resized = predict.load_image(folder / "b.png", (8, 8, 1))  # RGB 32 x 32 -> gray 8 x 8
  assert resized.shape == (8, 8, 1) and np.corrcoef(resized.ravel(), images[1].ravel())[0, 1] > 0.9
  np.testing.assert_allclose(list(rows[1]["probabilities"].values()),
                             predictor.predict(resized[None]).probabilities[0], atol=1e-5)
  assert predict.main(["--workdir", workdir, "--input", str(folder), "--output", str(out),
                       "--strict"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: {folder / 'c.png'}: cannot read")
  np.save(tmp_path / "bad.npy", np.zeros((4, 8, 9), np.float32))
  assert predict.main(["--workdir", workdir, "--input", str(tmp_path / "bad.npy"),
                       "--output", str(out)]) == 2
  assert "array of shape (4, 8, 9); this run takes [n, 8, 8, 1]" in capsys.readouterr().err
  with pytest.raises(DataError, match=r"of shape \(8, 9, 1\) per example; this run takes \(8, 8"):
    predictor.predict(np.zeros((2, 8, 9, 1), np.float32))


def _digest(root):
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      path = os.path.join(d, f)
      out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


def test_eval_mode_writes_metrics_and_changes_nothing_else(digits_run):
  workdir, _, result = digits_run
  before = _digest(workdir)
  r = subprocess.run([sys.executable, "-m", "ptft_jax.main", "--mode=eval", f"--workdir={workdir}",
                      "--split=test"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  after = _digest(workdir)
  assert set(after) - set(before) == {"eval_test_step6.json"}
  assert {k: after[k] for k in before} == before
  metrics = json.load(open(os.path.join(workdir, "eval_test_step6.json")))
  assert metrics["step"] == 6 and metrics["split"] == "test"
  assert metrics["accuracy"] == pytest.approx(result["test"]["accuracy"], abs=1e-9)
  assert f"accuracy={result['test']['accuracy']:.4f}" in r.stdout
  with pytest.raises(ConfigError, match=r"^--checkpoint='best2': use latest, best or a step"):
    evaluate.evaluate_checkpoint(workdir, "test", "best2")
  assert _digest(workdir) == after


# --- text ---------------------------------------------------------------------------------


_FILLER = "the a of is and value object name list type when it can be".split()
_TOPICS = ["integer float number arithmetic".split(), "string character text unicode".split()]


def _text_jsonl(path, n, seed):
  rng = np.random.default_rng(seed)
  filler, topics = _FILLER, _TOPICS
  names = ["numbers", "strings"]
  with open(path, "w") as f:
    for i in range(n):
      words = list(rng.choice(filler, 5)) + list(rng.choice(topics[i % 2], 2))
      f.write(json.dumps({"text": " ".join(rng.permutation(words)), "label": names[i % 2]}) + "\n")
  return str(path)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
  """A tiny BERT classifier on string labels (2 steps: only the plumbing matters here)."""
  root = tmp_path_factory.mktemp("text_run")
  c = base_config()
  c.data = text.default_config()
  c.data.source, c.data.dataset, c.data.format = "jsonl", "topics", "labeled"
  c.data.files = {s: _text_jsonl(root / f"{s}.jsonl", 64, i)
                  for i, s in enumerate(("train", "validation", "test"))}
  c.data.seq_len, c.data.batch_size, c.data.eval_batch_size = 128, 16, 32
  letters = [p + ch for p in ("", "##") for ch in "abcdefghijklmnopqrstuvwxyz"]
  vocab = list(dict.fromkeys([*text.SPECIAL_TOKENS, *_FILLER, *sum(_TOPICS, []), *letters]))
  (root / "vocab.txt").write_text("\n".join(vocab) + "\n")  # no vocabulary training
  c.data.tokenizer.vocab, c.data.tokenizer.vocab_size = str(root / "vocab.txt"), len(vocab)
  c.model = dict(name="bert", vocab_size=len(vocab), hidden_size=16, num_layers=1, num_heads=2,
                 intermediate_size=32, max_position_embeddings=128, dropout_rate=0.0,
                 attention_dropout_rate=0.0)
  c.task = dict(name="text_classification", pooling="mean", head_dropout_rate=0.0)
  c.optim.warmup_steps = 1
  c.train.steps, c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 2, 1, 0, 2
  c.train.tensorboard = False
  c.eval_splits = ()  # no final evaluation: saves a compilation
  workdir = str(root / "run")
  train.train_and_evaluate(c, workdir)
  return workdir


def test_text_labels_buckets_and_truncation(text_run, caplog):
  record = json.load(open(os.path.join(text_run, "labels.json")))
  assert record["label_names"] == ["numbers", "strings"] and record["kind"] == "text"
  predictor = inference.load_predictor(text_run, batch_size=8)
  assert predictor.buckets == (32, 64, 128)
  word = "integer "
  texts = [word * n for n in (3, 20, 5, 50, 100, 40, 2, 300, 7, 25, 90, 400)]
  with caplog.at_level(logging.WARNING, logger="ptft_jax"):
    out = predictor.predict(texts)
  assert "2 of 12 texts were longer than 128 tokens and were truncated" in caplog.text
  assert out.truncated == 2 and out.probabilities.shape == (12, 2)
  assert predictor.traces == 3  # one compilation per bucket, not per length or batch
  predictor.predict([word * n for n in (1, 33, 70, 10, 10, 10, 10, 10, 10, 10)])
  assert predictor.traces == 3
  # Padding to a bucket does not change the answer: the same text alone, in another bucket row.
  alone = predictor.predict([texts[3]])
  np.testing.assert_allclose(alone.probabilities[0], out.probabilities[3], atol=1e-5)
  assert set(out.labels) <= {"numbers", "strings"}


def test_text_jsonl_cli_bad_lines_pairs_and_strict(text_run, tmp_path, capsys):
  src = tmp_path / "in.jsonl"
  src.write_text("\n".join([
      json.dumps({"text": "integer float number", "id": "q1"}),
      json.dumps({"txt": "no text field"}),
      "{not json",
      json.dumps({"text": "string text", "text_b": "unicode character"}),
  ]) + "\n")
  out = tmp_path / "out.jsonl"
  assert predict.main(["--workdir", text_run, "--input", str(src), "--output", str(out)]) == 0
  err = capsys.readouterr().err
  assert f'skipped {src}:2: no "text" string field' in err
  assert f"skipped {src}:3: not valid JSON" in err
  rows = [json.loads(line) for line in open(out)]
  assert [r.get("id", r.get("line")) for r in rows] == ["q1", 4]
  predictor = inference.load_predictor(text_run)
  expected = predictor.predict(["integer float number", ("string text", "unicode character")])
  got = np.asarray([list(r["probabilities"].values()) for r in rows])
  np.testing.assert_allclose(got, expected.probabilities, atol=1e-5)
  assert [r["label"] for r in rows] == expected.labels
  assert predict.main(["--workdir", text_run, "--input", str(src), "--output", str(out),
                       "--strict"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f'error: {src}:2: no "text" string field (and 1 more); fix the input or drop '
                 "--strict to skip bad inputs"]
