"""metrics.jsonl after a kill and a resume holds each (split, step) once, as an uninterrupted run.

The run is stopped by an exception after step 6 (logged), while its last complete
checkpoint is step 4: the resumed run repeats steps 5 and 6 and must not log them twice.
"""

import json

import pytest

from ptft_jax import tasks, train
from ptft_jax.train import checkpoint, reports, writers
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("compile_cache")


class Killed(Exception):
  """Stands in for a crash of the process."""


def _config():
  """8 steps, logged every 2, evaluated and saved every 4, every checkpoint kept."""
  return tiny_config(steps=8, every=4, train__log_every=2, train__keep=10,
                     eval_splits=("validation",))


def _rows(workdir) -> list[dict]:
  with open(workdir / "metrics.jsonl") as f:
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]


def _kill_before_batch(monkeypatch, n: int):
  """Raises Killed when the loop asks for its n-th train batch (after step n - 1 ran).

  Saves are made synchronous, so the kill never cuts a save short: the last
  complete checkpoint is the last one started.
  """
  real, count = tasks.model_batch, [0]
  real_save = checkpoint.save

  def save(manager, state, **kwargs):
    real_save(manager, state, **kwargs)
    checkpoint.wait(manager)

  monkeypatch.setattr(checkpoint, "save", save)

  def model_batch(task, batch):
    if "valid" not in batch:  # a train batch (the example batch is an eval batch)
      count[0] += 1
      if count[0] == n:
        raise Killed(f"killed before train batch {n}")
    return real(task, batch)

  monkeypatch.setattr(tasks, "model_batch", model_batch)


def test_resumed_run_logs_each_step_once(tmp_path, monkeypatch):
  straight = tmp_path / "straight"
  train.train_and_evaluate(_config(), str(straight))

  run = tmp_path / "run"
  with monkeypatch.context() as m:
    _kill_before_batch(m, 7)
    with pytest.raises(Killed):
      train.train_and_evaluate(_config(), str(run))
  assert checkpoint.complete_steps(str(run)) == [4]
  before = _rows(run)
  assert [r["step"] for r in before if r["split"] == "train"] == [2, 4, 6]  # 6: after the save

  train.train_and_evaluate(_config(), str(run))
  assert checkpoint.complete_steps(str(run))[-1] == 8
  rows = _rows(run)
  keys = [(r["split"], r["step"]) for r in rows]
  twice = sorted({k for k in keys if keys.count(k) > 1})
  assert not twice, f"logged twice: {twice}"
  assert [r for r in rows if r["split"] == "train"] == [
      r for r in _rows(straight) if r["split"] == "train"]
  assert [k for k in keys if k[0] != "train"] == [
      ("validation", 4), ("validation", 8), ("final_validation", 8)]
  assert [r["step"] for r in reports.read_metrics(str(run), split="train")] == [2, 4, 6, 8]


def test_truncation_keeps_earlier_rows_and_drops_torn_and_final_ones(tmp_path):
  path = tmp_path / writers.METRICS_FILE
  rows = [{"step": 2, "split": "train"}, {"step": 4, "split": "validation"},
          {"step": 6, "split": "train"}, {"step": 8, "split": "final_test"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "spl')
  assert writers.truncate_metrics(str(path), 4) == 3
  assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:2]
  assert writers.truncate_metrics(str(path), 4) == 0
  assert writers.truncate_metrics(str(tmp_path / "missing.jsonl"), 4) == 0


def test_read_metrics_sees_each_step_once_in_an_old_appended_file(tmp_path):
  # Written before truncation existed: the resumed run appended steps 6 and 8 again.
  lines = [{"step": 2, "split": "train", "loss": 1.0}, {"step": 6, "split": "train", "loss": 0.5},
           {"step": 6, "split": "train", "loss": 0.4}, {"step": 8, "split": "train", "loss": 0.3}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  got = reports.read_metrics(str(tmp_path), split="train")
  assert [(r["step"], r["loss"]) for r in got] == [(2, 1.0), (6, 0.4), (8, 0.3)]
