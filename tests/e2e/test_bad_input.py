"""The bad-input catalogue: every user mistake is one `error: ...` line and exit status 2.

Each case runs the real CLI entry point (`ptft_jax.main.main` / `ptft_jax.convert`)
in-process with its argv (absl flags are reset between cases); one case also goes
through a real `python -m ptft_jax.main` process to check that nothing else
reaches stderr (no traceback, no library logging).
"""

import contextlib
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import safetensors.numpy
import tensorflow_datasets as tfds
from absl import flags

from ptft_jax import main as cli
from ptft_jax.convert import __main__ as convert_cli
from ptft_jax.train import checkpoint
from tests.helpers import REPO, write_tiny_hf_bert

pytestmark = pytest.mark.usefixtures("compile_cache", "fast_prng_compile")

FAST = ["--config.model.hidden_sizes=(32,)", "--config.train.steps=2",
        "--config.train.eval_every=0", "--config.train.log_every=1",
        "--config.train.checkpoint_every=2", "--config.train.tensorboard=False",
        "--config.data.batch_size=32", "--config.eval_splits=('validation',)"]
DIGITS = ["--config=configs/digits.py", *FAST]
PRETRAIN = [*DIGITS, "--config.task.name=autoencoder"]
QUERY = "encoder.layer.0.attention.self.query.weight"


def _reset_flags():
  """Forgets the last parse, including the `--config.<key>` flags it defined."""
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)


def run_main(argv: list[str]) -> int:
  """`python -m ptft_jax.main ARGV` in this process; returns the exit status."""
  _reset_flags()
  old = sys.argv
  sys.argv = ["ptft_jax.main", *argv]
  try:
    cli.main()
  except SystemExit as e:
    return 0 if e.code is None else e.code
  finally:
    sys.argv = old
    _reset_flags()
  return 0


def _truncate(pattern: str):
  files = glob.glob(pattern, recursive=True)
  assert files
  for f in files:
    with open(f, "r+b") as fh:
      fh.truncate(16)


def _hf_dir(path, edit=None, vocab_lines=None) -> str:
  """A tiny HF BERT directory (`tests.helpers.write_tiny_hf_bert`), then `edit`ed."""
  write_tiny_hf_bert(path, vocab_lines)
  if edit:
    tensors = safetensors.numpy.load_file(path / "model.safetensors")
    edit(tensors)
    safetensors.numpy.save_file(tensors, path / "model.safetensors")
  return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Shared inputs: a tiny pretrained run (made by the CLI) and damaged copies of it."""
  root = tmp_path_factory.mktemp("bad_input")
  pre = str(root / "pretrain")
  assert run_main([*PRETRAIN, f"--workdir={pre}"]) == 0
  corrupt = str(root / "corrupt_params")
  shutil.copytree(pre, corrupt)
  _truncate(f"{corrupt}/checkpoints/2/params/**/d/*")
  corrupt_train = str(root / "corrupt_train")
  shutil.copytree(pre, corrupt_train)
  _truncate(f"{corrupt_train}/checkpoints/2/train/**/d/*")
  garbled = str(root / "garbled_config")
  shutil.copytree(pre, garbled)
  with open(f"{garbled}/config.json", "w") as f:
    f.write('{"model": ')
  (root / "freeze.py").write_text(
      "from ptft_jax.config.defaults import base_config\n\n\n"
      "def get_config():\n"
      "  c = base_config()\n"
      "  c.optim.groups = [('backbone/layer_9/.*', {'frozen': True})]\n"
      "  return c\n")
  (root / "train.jsonl").write_text('{"text": "a good movie", "label": "pos"}\n'
                                    '{"text": "a bad movie", "label": "neg"}\n')
  (root / "val.jsonl").write_text('{"text": "a fine film", "label": "meh"}\n')
  return {"root": str(root), "pre": pre, "corrupt": corrupt, "corrupt_train": corrupt_train,
          "garbled": garbled}


# name -> (argv given env and a fresh workdir, words the one line must hold[, context])
CASES = {
    "unknown_override_key": (
        lambda e, w: [*DIGITS, w, "--config.optim.lrr=0.1"],
        ["unknown config key 'optim.lrr'; did you mean 'optim.lr'?"]),
    "wrong_value_type": (
        lambda e, w: [*DIGITS, w, "--config.train.steps=abc"],
        ["config.train.steps: cannot use 'abc'", "int"]),
    "unknown_model": (
        lambda e, w: [*DIGITS, w, "--config.model.name=transformr"],
        ["config.model.name", "unknown model 'transformr'", "mlp"]),
    "unknown_task": (
        lambda e, w: [*DIGITS, w, "--config.task.name=clasification"],
        ["config.task.name", "unknown task 'clasification'", "classification"]),
    "unknown_dataset": (
        lambda e, w: [*DIGITS, w, "--config.data.dataset=mnistt"],
        ["dataset 'mnistt' not found", "config.data.data_dir"]),
    "unknown_optimizer": (
        lambda e, w: [*DIGITS, w, "--config.optim.name=adamx"],
        ["config.optim.name", "unknown optimizer 'adamx'", "adamw"]),
    "missing_data_dir": (
        lambda e, w: [*DIGITS, w, "--config.data.dataset=mnist",
                      "--config.data.data_dir=/nonexistent/tfds"],
        ["'mnist' not found in data_dir '/nonexistent/tfds'", "tfds build mnist"]),
    "batch_not_divisible_by_devices": (
        lambda e, w: [*DIGITS, w, "--config.data.batch_size=12"],
        ["config.data.batch_size=12 is not divisible by the 8 data-parallel devices"]),
    "mesh_not_matching_devices": (
        lambda e, w: [*DIGITS, w, "--config.mesh.data=3"],
        ["config.mesh", "needs 3 devices but 8 are available"]),
    "label_fraction_out_of_range": (
        lambda e, w: [*DIGITS, w, "--config.data.label_fraction=1.5"],
        ["label_fraction=1.5", "(0, 1]"]),
    "empty_split": (
        lambda e, w: [*DIGITS, w, "--config.data.dataset=mnist",
                      f"--config.data.data_dir={e['root']}"],
        ["split 'train' of dataset 'mnist'", "is empty"],
        lambda: tfds.testing.mock_data(num_examples=0)),
    "freeze_regex_matches_nothing": (
        lambda e, w: [f"--config={e['root']}/freeze.py", *FAST, w],
        ["config.optim.groups[0]", "'backbone/layer_9/.*'", "matches no parameter"]),
    "unknown_nan_policy": (
        lambda e, w: [*DIGITS, w, "--config.train.nan_policy=ignore"],
        ["config.train.nan_policy='ignore'", "'stop' or 'skip'"]),
    "diverging_learning_rate": (
        lambda e, w: [*DIGITS, w, "--config.optim.lr=1e38", "--config.optim.warmup_steps=0"],
        ["non-finite loss or gradient at step 2", "config.optim.lr"]),
    "unsupported_remote_workdir": (  # gs:// is supported: tests/e2e/test_gcs_workdir.py
        lambda e, w: [*DIGITS, "--workdir=s3://bucket/run"],
        ["--workdir=s3://bucket/run: s3:// workdirs are not supported", "gs://bucket/path"]),
    "whole_bucket_workdir": (
        lambda e, w: [*DIGITS, "--workdir=gs://bucket"],
        ["--workdir=gs://bucket: name a path inside the bucket", "gs://BUCKET/PATH"]),
    "missing_pretrained_path": (
        lambda e, w: [*DIGITS, w, f"--config.init.pretrained_workdir={e['root']}/nope"],
        ["no checkpoints in", "nope", "config.init.pretrained_workdir"]),
    "checkpoint_from_another_model": (
        lambda e, w: [*[a for a in DIGITS if "hidden_sizes" not in a], w,  # a tuple flag
                      "--config.model.hidden_sizes=(16,)",  # given twice would concatenate
                      f"--config.init.pretrained_workdir={e['pre']}"],
        ["2 parameter shape mismatch",
         "params/backbone/layer_0/bias: checkpoint (32,) vs model (16,)",
         "params/backbone/layer_0/kernel: checkpoint (64, 32) vs model (64, 16)"]),
    "corrupt_pretrained_checkpoint": (
        lambda e, w: [*DIGITS, w, f"--config.init.pretrained_workdir={e['corrupt']}"],
        ["cannot read checkpoint", "corrupt_params/checkpoints/2", "corrupt or incomplete"]),
    "corrupt_checkpoint_on_resume": (
        lambda e, w: [*PRETRAIN, f"--workdir={e['corrupt_train']}"],
        ["cannot read checkpoint", "corrupt_train/checkpoints/2", "corrupt or incomplete"]),
    "changed_config_in_existing_workdir": (
        lambda e, w: [*PRETRAIN, f"--workdir={e['pre']}", "--config.optim.lr=0.5"],
        ["holds a run with a different config", "optim.lr: 0.001 -> 0.5", "--overwrite"]),
    "garbled_config_json_in_workdir": (
        lambda e, w: [*PRETRAIN, f"--workdir={e['garbled']}"],
        ["garbled_config/config.json: unreadable", "use a new --workdir"]),
    "finetune_into_the_pretrained_workdir": (
        lambda e, w: [*DIGITS, f"--workdir={e['pre']}/finetune",
                      f"--config.init.pretrained_workdir={e['pre']}"],
        ["is config.init.pretrained_workdir or inside it", "its own workdir"]),
    "missing_workdir": (
        lambda e, w: DIGITS,
        ["--workdir is required"]),
    "missing_config_file": (
        lambda e, w: ["--config=configs/nope.py", w],
        ["--config: cannot load configs/nope.py"]),
    "unknown_config_variant": (
        lambda e, w: ["--config=configs/digits.py:foo", w],
        ["unknown variant 'foo'; choose mlp or cnn"]),
    "sequence_longer_than_positions": (
        lambda e, w: ["--config=configs/bert.py:tiny", w, "--config.train.steps=1",
                      "--config.model.max_position_embeddings=32"],
        ["seq length 64 > max_position_embeddings 32"]),
    "label_not_in_the_classes": (
        lambda e, w: [f"--config=configs/glue.py:task=jsonl,train={e['root']}/train.jsonl,"
                      f"validation={e['root']}/val.jsonl,model=tiny,steps=1", w],
        ["val.jsonl: example 1: label 'meh' is not one of the classes ['neg', 'pos']"]),
}

# name -> (edit of the safetensors dict | vocab line count, words)
HF_CASES = {
    "weights_missing_tensor": (lambda t: t.pop(QUERY), [f"missing tensors: {QUERY}"]),
    "weights_extra_tensor": (
        lambda t: t.update({"classifier.weight": np.ones((3, 8), np.float32)}),
        ["unexpected tensors: classifier.weight"]),
    "weights_wrong_dtype": (
        lambda t: t.update({QUERY: np.ones((8, 8), np.int32)}), [f"'{QUERY}' has dtype I32"]),
    "weights_wrong_shape": (
        lambda t: t.update({QUERY: np.ones((8, 7), np.float32)}),
        [f"'{QUERY}' has shape (8, 7), expected (8, 8)"]),
    "weights_name_with_dotdot": (
        lambda t: t.update({"../escape.weight": np.ones(2, np.float32)}),
        ["unsafe tensor name '../escape.weight'"]),
    "weights_absolute_name": (
        lambda t: t.update({"/etc/passwd": np.ones(2, np.float32)}),
        ["unsafe tensor name '/etc/passwd'"]),
    "vocab_not_matching_embeddings": (7, ["vocab.txt: 7 lines but config vocab_size is 12"]),
}


def _one_error_line(err: str, words: list[str]):
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
  for w in words:
    assert w in lines[0], (w, lines[0])


@pytest.mark.parametrize("name", list(CASES))
def test_cli_bad_input(name, env, tmp_path, capsys):
  make_argv, words, *context = CASES[name]
  with (context[0]() if context else contextlib.nullcontext()):
    status = run_main(make_argv(env, f"--workdir={tmp_path / 'run'}"))
  out, err = capsys.readouterr()
  assert status == 2, (out[-2000:], err[-2000:])
  _one_error_line(err, words)
  assert checkpoint.complete_steps(str(tmp_path / "run")) == []  # nothing was saved


@pytest.mark.parametrize("name", list(HF_CASES))
def test_convert_bad_input(name, tmp_path, capsys):
  edit, words = HF_CASES[name]
  if isinstance(edit, int):
    src = _hf_dir(tmp_path / "bert", vocab_lines=edit)
  else:
    src = _hf_dir(tmp_path / "bert", edit)
  status = convert_cli.main(["hf-bert", "--src", src, "--workdir", str(tmp_path / "out")])
  assert status == 2
  _one_error_line(capsys.readouterr().err, [src, *words])
  assert not os.path.exists(tmp_path / "out")


def test_debug_shows_the_traceback(env, tmp_path):
  with pytest.raises(Exception, match="unknown optimizer 'adamx'"):
    run_main([*DIGITS, f"--workdir={tmp_path}", "--config.optim.name=adamx", "--debug"])


def test_real_process_prints_only_the_error_line(env, tmp_path):
  """A corrupt checkpoint fails deep inside Orbax / TensorStore; stderr is still one line."""
  r = subprocess.run(
      [sys.executable, "-m", "ptft_jax.main", *DIGITS, f"--workdir={tmp_path}",
       f"--config.init.pretrained_workdir={env['corrupt']}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2
  _one_error_line(r.stderr, ["cannot read checkpoint", "corrupt or incomplete"])
