"""`make_data(config.data, seed)`: the one entry point the train loop uses for any dataset.

A `DataBundle` gives the dataset's info, a checkpointable infinite train
iterator of per-process batches, and ordered, padded eval passes per split.
Families register a builder in `BUILDERS` under `config.data.kind`; image sources other
than TFDS (`config.data.source`, e.g. "folder") in `IMAGE_SOURCES`.
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np

from ptft_jax.data import pipeline, sources
from ptft_jax.data.preprocessing import Preprocessing, say
from ptft_jax.errors import ConfigError


@dataclasses.dataclass
class DataBundle:
  info: Any  # has at least .name; image data: image_shape, num_classes, label_names
  train_iterator: Any  # checkpointable (grain) iterator of dict[str, np.ndarray]
  eval_batches: Callable[[str], Iterator[dict[str, np.ndarray]]]  # split -> batches with "valid"


def _image_data(dc: ml_collections.ConfigDict, seed: int,
                preprocessing: Preprocessing | None = None) -> DataBundle:
  """TFDS (`config.data.source`, default "tfds") or another registered image source."""
  source = dc.get("source", "tfds")
  if source != "tfds":
    if source not in IMAGE_SOURCES:
      raise ConfigError(f"config.data.source={source!r}: image data comes from 'tfds' or "
                        f"one of {sorted(IMAGE_SOURCES)}")
    return IMAGE_SOURCES[source](dc, seed, preprocessing)
  data_dir = dc.data_dir or None
  info = sources.dataset_info(dc.dataset, data_dir)
  if preprocessing is not None and preprocessing.normalizes:
    channels = info.image_shape[-1]
    if len(preprocessing.mean) != channels:
      raise ConfigError(
          f"preprocessing from {preprocessing.origin}: {len(preprocessing.mean)} mean / std "
          f"values, but dataset {dc.dataset!r} has {channels} channel(s); set "
          "config.data.preprocessing.mean / std")
    # TFDS images keep their stored size: only the normalization applies.
    info = dataclasses.replace(info, preprocessing=dataclasses.replace(
        preprocessing, resize=0, crop=0))
    say(info.preprocessing, dc.dataset)
  train = pipeline.train_iterator(
      dc.dataset, split=dc.get("train_split", "train"), data_dir=data_dir,
      global_batch_size=dc.batch_size, seed=seed,
      label_fraction=dc.get("label_fraction", 1.0),
      label_fraction_seed=dc.get("label_fraction_seed", 0),
      labels_per_class=dc.get("labels_per_class", 0),
      worker_count=int(dc.get("worker_count", 0)))

  # The loop asks for "validation" and "test"; datasets without such splits
  # (mnist, cifar10) name a slice instead, e.g. validation_split="train[90%:]".
  names = {"validation": dc.get("validation_split", "validation"),
           "test": dc.get("test_split", "test")}

  def eval_batches(split: str):
    return pipeline.eval_batches(dc.dataset, split=names.get(split, split), data_dir=data_dir,
                                 global_batch_size=dc.eval_batch_size)

  return DataBundle(info=info, train_iterator=train, eval_batches=eval_batches)


BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, int], DataBundle]] = {
    "image": _image_data,
}
# config.data.source of image data besides "tfds" -> builder(data config, seed, preprocessing);
# image_folder.py registers "folder".
IMAGE_SOURCES: dict[str, Callable[..., DataBundle]] = {}


def make_data(data_config: ml_collections.ConfigDict, seed: int, *,
              preprocessing: Preprocessing | None = None) -> DataBundle:
  """Builds the data of `data_config.kind` ("image" by default).

  `preprocessing` (image data; `preprocessing.resolve(config, workdir)`): the mean/std the
  task normalizes with and an image folder's resize / crop; it ends up in `info`.
  """
  kind = data_config.get("kind", "image")
  if kind not in BUILDERS:
    raise ConfigError(f"config.data.kind: unknown kind {kind!r}; choose one of {sorted(BUILDERS)}")
  if kind == "image":
    return _image_data(data_config, seed, preprocessing)
  return BUILDERS[kind](data_config, seed)


def example_batch(bundle: DataBundle, split: str = "validation") -> dict[str, np.ndarray]:
  """The first eval batch, for shapes (model initialization)."""
  return next(iter(bundle.eval_batches(split)))
