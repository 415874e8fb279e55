"""configs/label_efficiency.py end to end (tiny): stages, summary.json and the picture.

The seed bookkeeping is checked on the config alone (tests/unit/test_quickstart_config.py)
and the statistics by hand (tests/unit/test_reports.py); one seed keeps this run short.
"""

import json

from ptft_jax import train
from tests.helpers import load_config


def test_label_efficiency_tiny_writes_the_curve(tmp_path):
  config = load_config("label_efficiency", "tiny,labels=2,seeds=1")
  assert len(config.stage_order) == 1 + 3  # pretrain, then 3 variants at one budget
  train.run(config, str(tmp_path))
  curve = json.loads((tmp_path / "summary.json").read_text())["label_efficiency"]
  assert curve["labels_per_class"] == [2] and curve["seeds"] == [0]
  assert curve["variants"] == ["pretrained", "finetuned", "scratch"]
  for variant in curve["variants"]:
    for k_index, k in enumerate((2,)):
      stage = tmp_path / f"{variant}_k{k}_s0"
      tested = json.loads((stage / "eval_test.json").read_text())["accuracy"]
      assert curve[variant]["test_accuracy"]["per_seed"][k_index] == [tested]
      assert json.loads((stage / "config.json").read_text())["data"]["labels_per_class"] == k
  assert (tmp_path / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
  probe = json.loads((tmp_path / "pretrained_k2_s0" / "config.json").read_text())
  finetuned = json.loads((tmp_path / "finetuned_k2_s0" / "config.json").read_text())
  assert probe["init"]["pretrained_workdir"].endswith("pretrain_s0")
  assert probe["optim"]["strategy"]["name"] == "linear_probe"  # pretrained: a linear probe
  assert finetuned["init"]["pretrained_workdir"] == probe["init"]["pretrained_workdir"]
  assert finetuned["optim"]["strategy"]["name"] != "linear_probe"
