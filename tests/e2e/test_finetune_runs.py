"""Fine-tuning toolkit: presets, gradual unfreezing, LoRA, accumulation, precision, EMA,
mixup, early stopping and the best checkpoint."""

import importlib.util
import json
import os

import numpy as np
import pytest

from ptft_jax import train
from ptft_jax.optim import lora
from ptft_jax.train import checkpoint, reports
from tests.helpers import REPO, flat, tiny_config

# --- parameter groups and presets ---------------------------------------------------------------


# --- LoRA --------------------------------------------------------------------------------------


# --- the step: accumulation, precision, EMA, mixup ----------------------------------------------


# --- early stopping and the best checkpoint ------------------------------------------------------


def _tiny(steps_=8, **overrides):
  """8 steps: evaluated every 2 (early stopping sees several), logged and saved every 4."""
  overrides = {"train__eval_every": 2, "eval_splits": ("validation",), **overrides}
  return tiny_config(steps=steps_, every=4, **overrides)


def test_best_checkpoint_never_deletes_the_latest_and_is_evaluated(tmp_path):
  c = _tiny(train__keep=1, optim__ema_decay=0.5)
  # "loss" with mode max: the best is an early evaluation while training goes on.
  c.train.early_stopping.update(dict(metric="loss", mode="max", patience=0))
  train.train_and_evaluate(c, str(tmp_path))
  history = json.load(open(tmp_path / "early_stopping.json"))
  assert [h["step"] for h in history] == [2, 4, 6, 8]
  best_step = max(history, key=lambda h: h["value"])["step"]
  best = json.load(open(tmp_path / "best.json"))
  assert best["step"] == best_step < 8
  assert checkpoint.make_manager(str(tmp_path), read_only=True).all_steps() == [8]
  assert checkpoint.make_manager(str(tmp_path / "best"), read_only=True).all_steps() == [best_step]
  final = json.load(open(tmp_path / "eval_validation.json"))
  assert final["step"] == best_step and final["loss"] == pytest.approx(best["value"], rel=1e-6)
  groups = json.load(open(tmp_path / "param_groups.json"))
  assert groups["trainable"] == groups["total"] == 64 * 32 + 32 + 32 * 10 + 10
  loaded, step = checkpoint.load_params(str(tmp_path / "best"))  # transfer can name best/
  assert step == best_step and "backbone" in loaded["params"]


def test_lora_run_exports_merged_and_transfer_merges(tmp_path):
  c = _tiny(steps_=4, optim__lr=0.05, train__eval_every=0)
  c.optim.strategy.name, c.lora.rank = "lora", 2
  train.train_and_evaluate(c, str(tmp_path / "lora"))
  raw, _ = checkpoint.load_params(str(tmp_path / "lora"))
  merged, _ = checkpoint.load_params(str(tmp_path / "lora" / "merged"))
  assert "lora" in raw["params"] and "lora" not in merged["params"]
  want = flat(lora.merge_lora(raw["params"], 16.0))
  got = flat(merged["params"])
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
  assert not np.allclose(got["backbone/layer_0/kernel"], flat(raw["params"])[
      "backbone/layer_0/kernel"])
  ft = _tiny(steps_=1, train__eval_every=0)
  ft.init.pretrained_workdir = str(tmp_path / "lora")
  train.train_and_evaluate(ft, str(tmp_path / "ft"))
  report = json.load(open(tmp_path / "ft" / "transfer_report.json"))
  assert "params/backbone/layer_0/kernel" in report["loaded"]


# --- the comparison ---------------------------------------------------------------------------

def test_strategies_config_and_report(tmp_path):
  spec = importlib.util.spec_from_file_location("strategies_cfg",
                                                os.path.join(REPO, "configs", "strategies.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("tiny")
  assert config.stage_order == ("pretrain", "linear_probe", "partial", "layer_decay", "gradual",
                                "full", "lora")
  assert config.stages.lora.lora.rank == 4 and config.stages.full.lora.rank == 0
  assert config.stages.partial.init.pretrained_workdir == "@pretrain"
  reused = module.get_config("pretrained=runs/q/pretrain")
  assert "pretrain" not in reused.stages
  assert reused.stages.full.init.pretrained_workdir == os.path.abspath("runs/q/pretrain")
  for name, trainable, acc in [("probe", 10, 0.5), ("full", 1000, 0.9)]:
    os.makedirs(tmp_path / name)
    json.dump({"accuracy": acc, "macro_f1": acc - 0.1, "step": 4},
              open(tmp_path / name / "eval_test.json", "w"))
    json.dump({"trainable": trainable, "total": 1000, "frozen": 1000 - trainable},
              open(tmp_path / name / "param_groups.json", "w"))
  table = reports.write_strategy_report(str(tmp_path), ["probe", "full", "missing"])
  assert table.splitlines()[2] == "| probe | 10 | 1% | 0.5000 | 0.4000 |"
  assert (tmp_path / "strategies.png").stat().st_size > 1000
  assert [r["stage"] for r in json.load(open(tmp_path / "strategies.json"))] == ["probe", "full"]
