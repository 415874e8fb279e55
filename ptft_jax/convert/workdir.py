"""Converted weights -> a pretrained workdir that fine-tuning starts from.

TODO(checkpoint owner): implement `write_pretrained_workdir` with
`ptft_jax.checkpoint`; the converters and the CLI only call this function.
"""

import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from typing import Any

from ptft_jax.models.transformer import TransformerConfig


def write_pretrained_workdir(
    config: TransformerConfig, params: Mapping[str, Any], workdir: str | os.PathLike
) -> None:
  """Saves converted weights as a workdir that `ptft_jax.checkpoint` restores.

  NOT IMPLEMENTED HERE: the checkpoint module's owner wires this up.

  Args:
    config: the backbone's TransformerConfig (`dataclasses.asdict` is JSON-able;
      `TransformerConfig(**d)` rebuilds it).
    params: Model-layout tree `{"backbone": {...}, "heads": {name: {...}}}` of
      float32 numpy arrays (heads may be empty), i.e. the paths
      `backbone/...` and `heads/<name>/...` of `ptft_jax.models.base.Model`.
    workdir: output directory.
  """
  if importlib.util.find_spec("ptft_jax.checkpoint") is None:
    raise NotImplementedError(
        "write_pretrained_workdir needs ptft_jax.checkpoint, which does not exist yet")
  from ptft_jax import checkpoint  # Lazy: optional until it lands.

  save = getattr(checkpoint, "save_pretrained", None)
  if save is None:
    raise NotImplementedError(
        "write_pretrained_workdir: ptft_jax.checkpoint has no save_pretrained("
        "workdir, params, config=...) yet; implement it there or wire this function")
  save(os.fspath(workdir), params, config=dataclasses.asdict(config))
