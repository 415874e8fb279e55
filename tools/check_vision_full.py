"""Parity of published-size vision imports (not a test: the weights are too big to commit).

  .venv-torch/bin/python tools/make_vision_fixtures.py --full DIR   # random-init full sizes
  .venv/bin/python tools/check_vision_full.py DIR

For torchvision ResNet-50, timm ResNet-50 and timm ViT-B/16 it imports DIR/<name> and
prints, per model, the largest difference of our pooled features and logits from torch's,
absolute and relative to the features' scale (random BatchNorm statistics blow a full
ResNet-50's features up to ~2e3, where float32 rounding alone is ~1e-3). Measured on
2026-11-29: ViT-B/16 8.0e-6 / 6.7e-6 absolute; both ResNet-50s 5.4e-7 relative.
"""

import json
import os
import sys

import numpy as np

from ptft_jax.convert import vision
from ptft_jax.models import image_features

NAMES = ("torchvision_resnet50", "timm_resnet50", "timm_vit_base")


def main(root: str) -> None:
  for name in NAMES:
    got = vision.read_vision(os.path.join(root, name))
    with np.load(os.path.join(root, name, "reference.npz")) as f:
      ref = {k: v.astype(np.float32) for k, v in f.items()}
    features = np.asarray(image_features(got.model_config, got.variables, ref["images"]))
    head = got.variables["params"]["heads"]["classifier"]["logits"]
    logits = features @ np.asarray(head["kernel"]) + np.asarray(head["bias"])
    scale = max(1.0, float(np.max(np.abs(ref["features"]))))
    row = {"model": name,
           "features_max_abs": float(np.max(np.abs(features - ref["features"]))),
           "logits_max_abs": float(np.max(np.abs(logits - ref["logits"])))}
    row["features_relative"] = row["features_max_abs"] / scale
    print(json.dumps(row))


if __name__ == "__main__":
  main(sys.argv[1])
