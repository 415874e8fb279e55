"""What the tools/ scripts that run under `.venv-torch` share: a transformers import that works.

The package index this project installs from holds torchvision only as CUDA builds,
while torch is the CPU build; such a torchvision fails at import ("operator
torchvision::nms does not exist"), and transformers imports it for any model class
once it sees it installed. `import_transformers()` hides a torchvision that cannot
load, so the text peers run; scripts that need torchvision itself import it directly.
"""

import sys


def import_transformers():
  """`transformers`, with an unloadable torchvision hidden from it."""
  try:
    import torchvision  # noqa: F401
  except Exception:  # noqa: BLE001 -- any failure means transformers must not see it
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    sys.modules["torchvision"] = None  # find_spec and import now report it missing
  import transformers

  return transformers
