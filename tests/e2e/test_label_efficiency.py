"""configs/label_efficiency.py end to end (tiny): stages, summary.json and the picture."""

import json

import pytest

from ptft_jax import train
from tests.helpers import load_config

pytestmark = pytest.mark.usefixtures("compile_cache")  # every fine-tune is the same program


def test_label_efficiency_tiny_writes_the_curve(tmp_path):
  config = load_config("label_efficiency", "tiny,labels=1-3,seeds=2")
  assert len(config.stage_order) == 2 * (1 + 2 * 3)  # per seed: pretrain, 2 budgets x 3
  train.run(config, str(tmp_path))
  curve = json.loads((tmp_path / "summary.json").read_text())["label_efficiency"]
  assert curve["labels_per_class"] == [1, 3] and curve["seeds"] == [0, 1]
  assert curve["variants"] == ["pretrained", "finetuned", "scratch"]
  for variant in curve["variants"]:
    for k_index, k in enumerate((1, 3)):
      for seed in (0, 1):
        stage = tmp_path / f"{variant}_k{k}_s{seed}"
        tested = json.loads((stage / "eval_test.json").read_text())["accuracy"]
        assert curve[variant]["test_accuracy"]["per_seed"][k_index][seed] == tested
        assert json.loads((stage / "config.json").read_text())["data"]["labels_per_class"] == k
  assert (tmp_path / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
  # The labeled images depend on the seed; the pretrained stages load their seed's backbone.
  s0 = json.loads((tmp_path / "pretrained_k1_s0" / "config.json").read_text())
  s1 = json.loads((tmp_path / "pretrained_k1_s1" / "config.json").read_text())
  assert (s0["data"]["label_fraction_seed"], s1["data"]["label_fraction_seed"]) == (0, 1)
  assert s1["init"]["pretrained_workdir"].endswith("pretrain_s1")
  assert s1["optim"]["strategy"]["name"] == "linear_probe"  # pretrained: a linear probe
  finetuned = json.loads((tmp_path / "finetuned_k1_s1" / "config.json").read_text())
  assert finetuned["init"]["pretrained_workdir"] == s1["init"]["pretrained_workdir"]
  assert finetuned["optim"]["strategy"]["name"] != "linear_probe"
  assert (tmp_path / "xla_cache").is_dir()  # the stages share their compiled programs
