"""`python -m ptft_jax.generate` on a Hugging Face directory: prompts as token ids, texts
and chats; answers scored; bad lines one line + exit 2."""

import json
import os

import numpy as np

from ptft_jax.inference import generate
from tests.helpers import FIXTURES

QWEN2 = os.path.join(FIXTURES, "hf_decoders", "qwen2")  # the fixture with a chat template


def _write(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_jsonl_of_token_ids_texts_and_chats(tmp_path, capsys):
  reference = np.load(os.path.join(QWEN2, "reference.npz"))
  prompt = reference["prompt_1"].tolist()
  want = reference["greedy_1"].tolist()[len(prompt):]
  rows = [{"id": "a", "input_ids": prompt},
          {"prompt": "def f(x):", "response": "nonsense"},
          {"messages": [{"role": "user", "content": "Hi"}]}]
  out = tmp_path / "out.jsonl"
  code = generate.main(["--workdir", QWEN2, "--input", _write(tmp_path / "in.jsonl", rows),
                        "--max-new-tokens", "8", "--output", str(out)])
  assert code == 0
  lines = [json.loads(x) for x in out.read_text().splitlines()]
  assert lines[0]["id"] == "a" and lines[1]["line"] == 2 and lines[2]["line"] == 3
  eos = 1  # the fixtures' eos id; they end on eos or after 8 tokens
  got = lines[0]["token_ids"] + ([eos] if lines[0]["finish_reason"] == "eos" else [])
  assert got == want
  assert all(isinstance(line["completion"], str) for line in lines)
  assert lines[1]["exact_match"] is False and "exact_match" not in lines[0]
  assert "exact match 0/1 = 0.000" in capsys.readouterr().err


def test_bad_line_is_one_line_and_status_2(tmp_path, capsys):
  bad = _write(tmp_path / "in.jsonl", [{"prompt": "ok"}, {"text": "no prompt key"}])
  code = generate.main(["--workdir", QWEN2, "--input", bad, "--max-new-tokens", "2"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1
  assert err[0].startswith(f"error: {bad}:2:") and '"prompt"' in err[0]


def test_gs_runs_are_refused_by_convert_in_one_line(capsys):
  from ptft_jax.convert import __main__ as convert_cli

  assert convert_cli.main(["export-hf", "--workdir", "gs://bucket/run", "--out", "x"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --workdir gs://bucket/run: convert")
  assert "gcloud storage cp -r gs://bucket/run ." in err[0]
