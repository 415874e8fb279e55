"""A run written before the package layout changed (tests/fixtures/run_before_layout: a
2-step digits MLP saved by commit 0c399b6) still evaluates, predicts, resumes and transfers."""

import json
import shutil
import subprocess
import sys

import numpy as np

import ptft_jax as pj
from ptft_jax.inference import predictor
from tests.helpers import FIXTURES, REPO

OLD_RUN = f"{FIXTURES}/run_before_layout"


def _copy(tmp_path):
  workdir = tmp_path / "old"
  shutil.copytree(OLD_RUN, workdir)
  return workdir


def test_old_run_evaluates_and_predicts(tmp_path):
  workdir = _copy(tmp_path)
  r = subprocess.run([sys.executable, "-m", "ptft_jax.main", "--mode=eval", "--split=validation",
                      f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  scored = json.loads((workdir / "eval_validation_step2.json").read_text())
  saved = json.loads((workdir / "eval_validation.json").read_text())  # what the old run wrote
  assert scored["step"] == 2 and abs(scored["accuracy"] - saved["accuracy"]) < 1e-6
  model = pj.load_predictor(str(workdir))
  images = np.random.default_rng(0).random((3, 8, 8, 1), np.float32)
  out = model.predict(images)
  assert out.probabilities.shape == (3, 10) and set(out.labels) <= set("0123456789")


def test_old_run_resumes_and_transfers(tmp_path):
  workdir = _copy(tmp_path)
  config = predictor.read_config(str(workdir))
  config.train.steps = 4  # a resumable key: the same run, longer
  pj.train_and_evaluate(config, str(workdir))
  assert pj.checkpoint.complete_steps(str(workdir)) == [4]  # keep=1
  log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert min(r["step"] for r in log) > 2  # resumed at step 2, did not start over
  fine = predictor.read_config(str(workdir))
  fine.init.pretrained_workdir = OLD_RUN  # read only
  fine.train.steps = 1
  pj.train_and_evaluate(fine, str(tmp_path / "fine"))
  report = json.loads((tmp_path / "fine" / "transfer_report.json").read_text())
  assert report["loaded"] and not report.get("mismatched")
