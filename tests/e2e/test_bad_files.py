"""Bad-input catalogue, files part: every reader of a user file fails with one line naming it.

Bytes that are not UTF-8 in a training or predict JSONL, a vocab.txt, a text corpus or a
tokenizer training file; a folder image that is no image or a truncated PNG (with --strict);
an .npy that is no .npy, holds Python objects or strings. Each case runs the CLI
(`ptft_jax.main` or `ptft_jax.predict`) in-process and expects exit status 2 and exactly one
stderr line that names the file (and the line, for text); see tests/e2e/test_bad_input.py.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image

from ptft_jax import train
from ptft_jax.data import text
from ptft_jax.inference import predict
from tests.e2e.test_bad_input import _one_error_line, run_main
from tests.e2e.test_portable_runs import tiny_text_config
from tests.helpers import FIXTURES

pytestmark = pytest.mark.usefixtures("compile_cache", "fast_prng_compile")

IMAGE_RUN = f"{FIXTURES}/run_before_layout"  # a digits MLP: 8 x 8 x 1 images
BAD_LINE = b'{"text": "a \xff\xfe b", "label": "neg"}\n'


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """Good and bad input files, and a tiny text run to predict with."""
  root = tmp_path_factory.mktemp("bad_files")
  good = b'{"text": "a good movie", "label": "pos"}\n{"text": "a bad movie", "label": "neg"}\n'
  (root / "good.jsonl").write_bytes(good)
  (root / "bad.jsonl").write_bytes(good + BAD_LINE)  # line 3
  vocab = [*text.SPECIAL_TOKENS, "a", "good", "bad", "movie"]
  (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
  (root / "bad_vocab.txt").write_bytes("\n".join(vocab).encode() + b"\nmovi\xe9\n")  # line 10
  (root / "bad_corpus.txt").write_bytes(b"One sentence here.\n\nAnother one \xc3(.\n")  # line 3
  (root / "predict.jsonl").write_bytes(b'{"text": "fine"}\n' + BAD_LINE)  # line 2
  images = root / "images"
  images.mkdir()
  png = io.BytesIO()
  Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(png, format="PNG")
  (images / "a.png").write_bytes(png.getvalue())
  (images / "b.png").write_bytes(b"this is a text file")
  truncated = root / "truncated"
  truncated.mkdir()
  noise = io.BytesIO()  # incompressible, so that half the file is half the pixel data
  Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8)).save(
      noise, format="PNG")
  (truncated / "a.png").write_bytes(noise.getvalue()[:len(noise.getvalue()) // 2])
  (root / "not_npy.npy").write_text("1 2 3\n")
  np.save(root / "objects.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
  np.save(root / "strings.npy", np.full((2, 8, 8), "x"))
  run = str(root / "text_run")
  c = tiny_text_config(train_steps=1)
  c.data.tokenizer.vocab, c.model.vocab_size = str(root / "vocab.txt"), len(vocab)
  c.eval_splits = ()
  train.train_and_evaluate(c, run)
  return {"root": str(root), "text_run": run}


def _glue(root: str, train_file: str = "good.jsonl", *extra: str) -> list[str]:
  return [f"--config=configs/glue.py:task=jsonl,train={root}/{train_file},"
          f"validation={root}/good.jsonl,model=tiny,steps=1", *extra]


# name -> (CLI, argv given the root and the text run, words the one line must hold)
CASES = {
    "train_jsonl_not_utf8": (
        "main", lambda r, t: _glue(r, "bad.jsonl", f"--config.data.tokenizer.vocab={r}/vocab.txt"),
        ["bad.jsonl:3: not UTF-8", "byte 0xff"]),
    "vocab_not_utf8": (
        "main", lambda r, t: _glue(r, "good.jsonl",
                                   f"--config.data.tokenizer.vocab={r}/bad_vocab.txt"),
        ["bad_vocab.txt:10: not UTF-8", "byte 0xe9"]),
    "corpus_not_utf8": (
        "main", lambda r, t: [f"--config=configs/bert.py:tiny,corpus={r}/bad_corpus.txt,"
                              f"vocab={r}/vocab.txt,steps=1"],
        ["bad_corpus.txt:3: not UTF-8", "byte 0xc3", "config.data.corpus_files"]),
    "tokenizer_train_file_not_utf8": (
        "main", lambda r, t: _glue(r, "good.jsonl",
                                   f"--config.data.tokenizer.train_files=('{r}/bad.jsonl',)"),
        ["bad.jsonl:3: not UTF-8"]),
    "predict_jsonl_not_utf8": (
        "predict", lambda r, t: ["--workdir", t, "--input", f"{r}/predict.jsonl"],
        ["predict.jsonl:2: not UTF-8", "byte 0xff"]),
    "image_not_an_image": (
        "predict", lambda r, t: ["--workdir", IMAGE_RUN, "--input", f"{r}/images", "--strict"],
        ["images/b.png: cannot read the image"]),
    "image_truncated_png": (
        "predict", lambda r, t: ["--workdir", IMAGE_RUN, "--input", f"{r}/truncated", "--strict"],
        ["truncated/a.png: cannot read the image"]),
    "npy_not_npy": (
        "predict", lambda r, t: ["--workdir", IMAGE_RUN, "--input", f"{r}/not_npy.npy"],
        ["not_npy.npy: not a NumPy .npy file"]),
    "npy_object_array": (
        "predict", lambda r, t: ["--workdir", IMAGE_RUN, "--input", f"{r}/objects.npy"],
        ["objects.npy: holds Python objects", "numeric array"]),
    "npy_string_array": (
        "predict", lambda r, t: ["--workdir", IMAGE_RUN, "--input", f"{r}/strings.npy"],
        ["strings.npy: an array of dtype <U1", "numeric array"]),
    "predict_garbled_config_json": (
        "predict", lambda r, t: ["--workdir", f"{r}/garbled", "--input", f"{r}/predict.jsonl"],
        ["garbled/config.json: unreadable"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_file(name, env, tmp_path, capsys):
  cli, make_argv, words = CASES[name]
  if name == "predict_garbled_config_json":
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "config.json").write_bytes(b'{"model": ')
    env = {**env, "root": str(tmp_path)}
  argv = make_argv(env["root"], env["text_run"])
  capsys.readouterr()
  if cli == "main":
    status = run_main([*argv, f"--workdir={tmp_path / 'run'}"])
  else:
    status = predict.main([*argv, "--output", str(tmp_path / "out.jsonl")])
  out, err = capsys.readouterr()
  assert status == 2, (out[-2000:], err[-2000:])
  _one_error_line(err, words)


def test_predict_jsonl_reports_the_bad_line_of_a_valid_file(env, tmp_path, capsys):
  """Bad JSON lines in a UTF-8 file stay per-line warnings (skipped), as before."""
  src = tmp_path / "in.jsonl"
  src.write_text(json.dumps({"text": "a good movie"}) + "\n{oops\n")
  assert predict.main(["--workdir", env["text_run"], "--input", str(src), "--output",
                       str(tmp_path / "out.jsonl")]) == 0
  assert f"skipped {src}:2: not valid JSON" in capsys.readouterr().err
