"""Length buckets through the real loop: one compilation per bucket, evaluation unchanged.

The tiny sentiment classifier of test_portable_runs.py (seq_len 48) trained with
`config.data.length_buckets=(16, 32)`: the train step compiles once per bucket
the batches use, and the run's own (bucketed) test evaluation equals a padded
(seq_len) evaluation of the same params.
"""


import jax
import numpy as np
import pytest

from ptft_jax import data, train
from ptft_jax.inference import predictor as inference
from ptft_jax.train import steps
from tests.e2e.test_portable_runs import tiny_text_config
from tests.helpers import CompileLog

pytestmark = pytest.mark.usefixtures("compile_cache")




def _padded_evaluation(workdir: str) -> tuple[np.ndarray, float, set]:
  """(per-example test losses, accuracy, batch widths) of the run's params, no buckets."""
  config = inference.read_config(workdir)
  config.data.length_buckets = ()
  bundle = data.make_data(config.data, seed=config.seed)
  run = inference.load_run(workdir, info=bundle.info)
  eval_step = jax.jit(steps.make_eval_step(run.model, run.task))
  variables = dict(run.variables)
  params = variables.pop("params")
  losses, correct, widths = [], [], set()
  for batch in bundle.eval_batches("test"):
    widths.add(batch["input_ids"].shape[1])
    out = eval_step(params, variables, batch)
    valid = batch["valid"]
    losses.append(np.asarray(out["loss"])[valid])
    correct.append(np.asarray(out["prediction"])[valid] == batch["label"][valid])
  return np.concatenate(losses), float(np.concatenate(correct).mean()), widths


def test_buckets_compile_once_each_and_evaluate_like_padding(tmp_path, monkeypatch):
  monkeypatch.setenv("PTFT_DATA_DIR", str(tmp_path / "data"))
  config = tiny_text_config(train_steps=4)
  config.data.length_buckets = (16, 32)
  config.data.batch_size = 8
  config.data.bucket_window = 4
  with CompileLog() as compiles:
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  # Four steps over buckets 16 / 32 / 48: one program per width used, at least two widths.
  train_steps = [m for n, m in zip(compiles.names, compiles.messages, strict=True)
                 if n == "train_step"]
  assert 2 <= len(train_steps) <= 3
  assert len(set(train_steps)) == len(train_steps)  # each with other shapes
  # The loop's final evaluation ran bucketed; the same params padded to seq_len agree.
  padded, accuracy, widths = _padded_evaluation(str(tmp_path / "run"))
  assert widths == {48} and len(padded) == 400  # every test review once
  assert result["test"]["loss"] == pytest.approx(float(padded.mean()), abs=1e-5)
  assert result["test"]["accuracy"] == pytest.approx(accuracy, abs=1e-9)
