"""Run reports computed by hand: the label-efficiency curve."""

import json

import numpy as np
import pytest

from ptft_jax.train import reports

SPEC = {"labels_per_class": [1, 5], "seeds": [0, 1], "stage": "{variant}_k{k}_s{seed}"}


def _results():
  acc = {("pretrained", 1): (0.6, 0.7), ("pretrained", 5): (0.9, 0.8),
         ("scratch", 1): (0.3, 0.5), ("scratch", 5): (0.85, 0.75)}
  return {f"{v}_k{k}_s{s}": {"validation": {"accuracy": a[s] + 0.01},
                             "test": {"accuracy": a[s]}}
          for (v, k), a in acc.items() for s in (0, 1)}


def test_label_efficiency_means_stds_and_per_seed_by_hand(tmp_path):
  curve = reports.label_efficiency(_results(), SPEC)
  test = curve["pretrained"]["test_accuracy"]
  assert test["per_seed"] == [[0.6, 0.7], [0.9, 0.8]]
  np.testing.assert_allclose(test["mean"], [0.65, 0.85])
  np.testing.assert_allclose(test["std"], [0.05, 0.05])
  np.testing.assert_allclose(curve["scratch"]["validation_accuracy"]["mean"], [0.41, 0.81])
  assert json.loads(json.dumps(curve)) == curve  # goes into summary.json as is
  table = reports.format_label_efficiency(curve)
  assert table.splitlines()[1].split() == ["1", "0.650", "±", "0.050", "0.400", "±", "0.100",
                                           "+0.250"]
  reports.write_label_efficiency_png(curve, str(tmp_path / "curve.png"))
  assert (tmp_path / "curve.png").read_bytes()[:4] == b"\x89PNG"


def test_label_efficiency_names_a_missing_stage():
  results = _results()
  del results["scratch_k5_s1"]
  with pytest.raises(KeyError, match="scratch_k5_s1"):
    reports.label_efficiency(results, SPEC)
