"""Export to Hugging Face: `python -m ptft_jax.convert export-hf` and `ptft_jax.models.bert_encode`.

The reference in tests/fixtures/hf_export/ comes from transformers + torch
(tools/make_hf_export_fixture.py): a tiny text classifier run's params, what export-hf
wrote for them, and the logits `AutoModelForSequenceClassification.from_pretrained` of
that directory computed. Torch is not needed here.
"""

import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from ptft_jax import models
from ptft_jax.convert import __main__ as cli
from ptft_jax.data.text import load_tokenizer
from ptft_jax.inference import load_run
from ptft_jax.models import transformer
from ptft_jax.train import checkpoint
from ptft_jax.utils import unflatten_paths
from tests.helpers import FIXTURES, REPO

FIXTURE = os.path.join(FIXTURES, "hf_export")
EXPORT = os.path.join(FIXTURE, "export")
JSON_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json")


def test_bert_encode_is_public_in_models():
  assert "bert_encode" in models.__all__
  config = transformer.TransformerConfig(vocab_size=12, hidden_size=8, num_layers=1,
                                         num_heads=2, intermediate_size=16,
                                         max_position_embeddings=16)
  ids = jnp.asarray([[2, 5, 7, 3, 0], [2, 9, 3, 0, 0]], jnp.int32)
  mask = (ids > 0).astype(jnp.int32)
  types = jnp.zeros_like(ids)
  params = transformer.BertEncoder(config).init(
      jax.random.key(0), {"input_ids": ids}, train=False)["params"]
  ours = models.bert_encode(config, params, ids, mask, types)
  np.testing.assert_array_equal(ours, transformer.bert_encode(config, params, ids, mask, types))
  assert ours.shape == (2, 5, 8) and ours.dtype == jnp.float32


def test_torch_is_no_requirement():
  names = []
  requirement = re.compile(r"^\s*\"?([A-Za-z0-9_.-]+)", re.M)  # a line's first name
  for rel in ("requirements.txt", "pyproject.toml"):
    with open(os.path.join(REPO, rel)) as f:
      names += [m.group(1).lower() for m in requirement.finditer(f.read())]
  assert not {"torch", "pytorch", "transformers"} & set(names)


def _write_run(workdir, *, params=True, **changes) -> str:
  """The fixture's run in `workdir` (config.json, labels.json, vocab.txt, a checkpoint).

  `changes`: `section__key=value` edits of config.json (e.g. `task__name="masked_lm"`).
  """
  workdir = str(workdir)
  os.makedirs(workdir)
  with open(os.path.join(FIXTURE, "run", "config.json")) as f:
    config = json.load(f)
  for key, value in changes.items():
    section, leaf = key.split("__")
    config[section][leaf] = value
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  vocab = os.path.join(workdir, "vocab.txt")
  shutil.copyfile(os.path.join(EXPORT, "vocab.txt"), vocab)
  with open(os.path.join(FIXTURE, "run", "labels.json")) as f:
    labels = json.load(f)
  with open(os.path.join(workdir, "labels.json"), "w") as f:
    json.dump({**labels, "vocab": vocab}, f)  # absolute: read the same by old and new runs
  if params:
    with np.load(os.path.join(FIXTURE, "run", "params.npz"), allow_pickle=False) as f:
      checkpoint.save_pretrained(workdir, unflatten_paths(dict(f)))
  return workdir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(run workdir, export dir): the fixture's params exported again through the CLI."""
  root = tmp_path_factory.mktemp("hf_export")
  workdir = _write_run(root / "run")
  out = str(root / "out")
  assert cli.main(["export-hf", "--workdir", workdir, "--out", out]) == 0
  return workdir, out


def _tensors(directory: str) -> tuple[dict, dict]:
  path = os.path.join(directory, "model.safetensors")
  with safetensors.safe_open(path, framework="numpy") as f:
    metadata = f.metadata()
  return safetensors.numpy.load_file(path), metadata


def test_export_equals_the_fixture(exported):
  _, out = exported
  assert sorted(os.listdir(out)) == sorted(os.listdir(EXPORT))
  for name in JSON_FILES:
    with open(os.path.join(out, name)) as a, open(os.path.join(EXPORT, name)) as b:
      assert json.load(a) == json.load(b), name
  with open(os.path.join(out, "vocab.txt"), "rb") as a, open(os.path.join(EXPORT, "vocab.txt"),
                                                              "rb") as b:
    assert a.read() == b.read()
  ours, ours_meta = _tensors(out)
  theirs, theirs_meta = _tensors(EXPORT)
  assert ours_meta == theirs_meta == {"format": "pt"}
  assert sorted(ours) == sorted(theirs)
  for name, value in theirs.items():
    np.testing.assert_allclose(ours[name], value, rtol=0, atol=1e-7, err_msg=name)


def test_export_has_what_transformers_expects(exported):
  _, out = exported
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  assert config["architectures"] == ["BertForSequenceClassification"]
  assert config["id2label"] == {"0": "negative", "1": "positive"}
  assert config["label2id"] == {"negative": 0, "positive": 1}
  tensors, _ = _tensors(out)
  h = config["hidden_size"]
  assert tensors["bert.pooler.dense.weight"].shape == (h, h)
  assert tensors["classifier.weight"].shape == (2, h)
  assert tensors["classifier.bias"].shape == (2,)
  assert all(n.startswith(("bert.", "classifier.")) for n in tensors)


def test_our_logits_and_tokens_match_transformers(exported):
  workdir, out = exported
  with np.load(os.path.join(FIXTURE, "hf_outputs.npz"), allow_pickle=False) as f:
    hf = dict(f)
  # The exported tokenizer settings make HF tokenize as ptft_jax does.
  with open(os.path.join(out, "tokenizer_config.json")) as f:
    lowercase = json.load(f)["do_lower_case"]
  tokenizer, _ = load_tokenizer(os.path.join(out, "vocab.txt"), lowercase)
  for i, (a, b) in enumerate(zip(hf["text_a"], hf["text_b"], strict=True)):
    enc = tokenizer.encode(str(a), str(b)) if b else tokenizer.encode(str(a))
    n = int(hf["attention_mask"][i].sum())
    assert enc.ids == hf["input_ids"][i, :n].tolist()
    assert enc.type_ids == hf["token_type_ids"][i, :n].tolist()

  run = load_run(workdir)
  batch = {k: jnp.asarray(hf[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
  logits = run.model.apply(run.variables, batch, train=False, heads=(run.task.head_name,))
  ours = np.asarray(logits[run.task.head_name])
  assert ours.shape == hf["logits"].shape and np.abs(hf["logits"]).max() > 0.5
  np.testing.assert_allclose(ours, hf["logits"], rtol=0, atol=1e-4)


@pytest.mark.parametrize(("changes", "args", "message"), [
    (dict(task__name="masked_lm"), [], r"task 'masked_lm' is not 'text_classification'"),
    (dict(model__name="gpt"), [], r"model 'gpt' is not 'bert'"),
    (dict(task__pooling="mean"), [], r"config.task.pooling='mean' has no HF"),
    (dict(params=False), [], r"no complete checkpoint in .*checkpoints"),
    ({}, ["--checkpoint=best"], r"--checkpoint=best: .* has no best checkpoint"),
    ({}, ["--checkpoint=7"], r"--checkpoint=7: no such complete step .* it has steps \[0\]"),
], ids=["not-a-classifier", "not-bert", "mean-pooling", "no-checkpoint", "no-best", "no-step"])
def test_export_errors_are_one_line(tmp_path, capsys, changes, args, message):
  workdir = _write_run(tmp_path / "run", **changes)
  code = cli.main(["export-hf", "--workdir", workdir, "--out", str(tmp_path / "out"), *args])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
  assert re.search(message, err), err
  assert not os.path.exists(tmp_path / "out")


def test_export_refuses_to_write_into_the_run(tmp_path, capsys):
  workdir = _write_run(tmp_path / "run", params=False)
  assert cli.main(["export-hf", "--workdir", workdir, "--out", workdir]) == 2
  assert "is a run directory" in capsys.readouterr().err
  assert not os.path.exists(os.path.join(workdir, "model.safetensors"))
