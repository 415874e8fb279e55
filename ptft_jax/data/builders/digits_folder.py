"""scikit-learn's digits written as an image folder (PNG files), for offline runs and tests.

  python -m ptft_jax.data.builders.digits_folder OUT [--size 32] [--per_class N]

writes OUT/<split>/<digit>/<index>.png for the train / validation / test splits of the
embedded `digits` dataset (the same membership), each 8x8 image upsampled to size x size
(bilinear) and saved as RGB, so `config.data.source = "folder"` reads a real folder.
"""

import argparse
import os

import numpy as np

from ptft_jax.data.builders.digits.digits import split_indices, to_uint8

SPLITS = ("train", "validation", "test")


def write_digits_folder(root: str, *, size: int = 32, splits=SPLITS, per_class: int = 0,
                        ) -> dict[str, int]:
  """Writes the digits as `root/<split>/<digit>/<index>.png`; returns images per split.

  Args:
    root: output folder (created; existing files are overwritten).
    size: side of the written images (the 8x8 digits upsampled, bilinear).
    splits: which of train / validation / test to write.
    per_class: > 0: at most this many images of each digit per split (the first by index).
  """
  from PIL import Image
  from sklearn.datasets import load_digits

  digits = load_digits()
  images, labels = to_uint8(digits.images)[..., 0], digits.target
  written = {}
  for split, indices in split_indices(len(labels)).items():
    if split not in splits:
      continue
    counts: dict[int, int] = {}
    for i in indices:
      label = int(labels[i])
      if per_class and counts.get(label, 0) >= per_class:
        continue
      counts[label] = counts.get(label, 0) + 1
      folder = os.path.join(root, split, str(label))
      os.makedirs(folder, exist_ok=True)
      gray = Image.fromarray(np.ascontiguousarray(images[i])).resize(
          (size, size), Image.Resampling.BILINEAR)
      gray.convert("RGB").save(os.path.join(folder, f"{int(i):04d}.png"))
    written[split] = sum(counts.values())
  return written


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("root", help="output folder")
  parser.add_argument("--size", type=int, default=32)
  parser.add_argument("--per_class", type=int, default=0)
  parser.add_argument("--splits", default=",".join(SPLITS))
  args = parser.parse_args(argv)
  written = write_digits_folder(args.root, size=args.size, per_class=args.per_class,
                                splits=tuple(args.splits.split(",")))
  print(f"wrote {args.root}: " + ", ".join(f"{k} {v}" for k, v in written.items()))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
