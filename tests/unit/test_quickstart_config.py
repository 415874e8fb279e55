"""The quickstart is one point of the label-efficiency curve: same stages, same recipe."""

from tests.helpers import load_config


def test_quickstart_is_the_one_label_point_of_label_efficiency():
  quick = load_config("quickstart", "seed=2")
  curve = load_config("label_efficiency", "labels=1-5,seeds=3")
  assert quick.stage_order == ("pretrain", "pretrained", "scratch")
  assert quick.stages.pretrained.data.labels_per_class == 1
  assert quick.stages.pretrained.optim.strategy.name == "linear_probe"  # frozen backbone
  assert quick.stages.scratch.init.pretrained_workdir == ""
  for stage, twin in (("pretrain", "pretrain_s2"), ("pretrained", "pretrained_k1_s2"),
                      ("scratch", "scratch_k1_s2")):
    a, b = quick.stages[stage].to_dict(), curve.stages[twin].to_dict()
    a["init"].pop("pretrained_workdir"), b["init"].pop("pretrained_workdir")
    assert a == b, stage
  assert curve.stages.pretrained_k1_s2.init.pretrained_workdir == "@pretrain_s2"


def test_labeled_images_follow_the_seed():
  one, two = (load_config("quickstart", f"seed={s}").stages.scratch.data for s in (1, 2))
  assert (one.label_fraction_seed, two.label_fraction_seed) == (1, 2)
  assert load_config("quickstart", "labels=5").stages.pretrained.data.labels_per_class == 5
