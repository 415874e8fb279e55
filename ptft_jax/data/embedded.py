"""Datasets that ship with ptft_jax and are prepared locally on first use.

Preparation writes array_record files under `data_dir`, never touches the
network, and holds an exclusive file lock so that concurrent processes (e.g.
several hosts sharing a data_dir, or parallel tests) prepare the data once.
"""

import contextlib
import fcntl
import importlib
import os
from collections.abc import Iterator

import tensorflow_datasets as tfds

from ptft_jax.errors import DataError

# Name -> module whose import registers the TFDS builder class.
_BUILDERS = {"digits": ("ptft_jax.data.builders.digits", "Digits")}


def is_embedded(name: str) -> bool:
  """Whether `name` is built by ptft_jax itself rather than read from a data_dir."""
  return name in _BUILDERS


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(name: str, data_dir: str) -> None:
  """Prepares embedded dataset `name` under `data_dir` unless already there.

  Args:
    name: an embedded dataset name (see `is_embedded`).
    data_dir: TFDS data directory; created if missing.
  """
  module, cls_name = _BUILDERS[name]
  builder_cls = getattr(importlib.import_module(module), cls_name)
  if builder_cls(data_dir=data_dir).is_prepared():
    return
  try:
    os.makedirs(data_dir, exist_ok=True)
    with _file_lock(os.path.join(data_dir, f".{name}.lock")):
      # Another process may have finished while we waited for the lock.
      builder = builder_cls(data_dir=data_dir, file_format="array_record")
      if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except OSError as e:
    raise DataError(
        f"cannot prepare dataset {name!r} in data_dir {data_dir!r} ({e}); check that it is "
        "writable or set PTFT_DATA_DIR / config.data.data_dir") from e
