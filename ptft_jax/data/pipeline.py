"""Grain input pipelines: infinite shuffled training batches and padded eval passes.

Batches are per process: `global_batch_size // process_count` rows, process
`i` reading shard `i` (by default `jax.process_index()` of
`jax.process_count()`).

Train iterators are Grain `DataLoaderIterator`s; save them beside the train
state in one Orbax checkpoint:

  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=iterator_save_args(it)))
  mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(state), data=iterator_restore_args(it)))

After the restore `it` yields exactly the batch that followed the save.
"""

import functools
import math
import os
from collections.abc import Iterator

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import flags

from ptft_jax.data import embedded
from ptft_jax.data.sources import default_data_dir, open_split
from ptft_jax.data.subset import InMemory, Subset, stratified_subset
from ptft_jax.data.transforms import SKIPPED, DropSkipped, ToExample, pad_batch, to_example
from ptft_jax.errors import ConfigError, DataError


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  """Returns (index, count): the JAX process unless both are given (tests, simulations)."""
  if shard_index is None and shard_count is None:
    return jax.process_index(), jax.process_count()
  if shard_index is None or shard_count is None or not 0 <= shard_index < shard_count:
    raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
  return shard_index, shard_count


def _per_process_batch(global_batch_size: int, shard_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % shard_count:
    raise ConfigError(f"global_batch_size={global_batch_size} must be a positive multiple "
                      f"of the number of processes ({shard_count})")
  return global_batch_size // shard_count


# Splits whose raw images take at most this many bytes are read once and kept in memory.
IN_MEMORY_BYTES = 512 * 2**20


def _open(dataset: str, split: str, data_dir: str | None):
  if embedded.is_embedded(dataset):  # files this package wrote once: read them once
    return _open_embedded(dataset, split, os.path.abspath(data_dir or default_data_dir()))
  return _open_uncached(dataset, split, data_dir)


def _open_uncached(dataset: str, split: str, data_dir: str | None):
  source = open_split(dataset, split, data_dir)
  if len(source) and np.asarray(source[0]["image"]).nbytes * len(source) <= IN_MEMORY_BYTES:
    return InMemory(source, f"{dataset}/{split}")
  return source


@functools.lru_cache(maxsize=16)
def _open_embedded(dataset: str, split: str, data_dir: str):
  """An embedded split, decoded once per process: every stage of a staged run (and the
  train, validation and test passes of each) reads the same few MB, and decoding its
  PNG records took 0.4 s per stage."""
  return _open_uncached(dataset, split, data_dir)


def _labels(dataset: str, split: str, data_dir: str | None) -> np.ndarray:
  """int64 [n]: the label of every example of the split (images are not decoded)."""
  source = open_split(dataset, split, data_dir, labels_only=True)
  return np.array([source[i]["label"] for i in range(len(source))], np.int64)


def train_iterator(
    dataset: str, *, split: str = "train", data_dir: str | None = None,
    global_batch_size: int, seed: int, label_fraction: float = 1.0,
    label_fraction_seed: int = 0, labels_per_class: int = 0, worker_count: int = 0,
    shard_index: int | None = None, shard_count: int | None = None,
) -> grain.DataLoaderIterator:
  """Infinite, seeded, shuffled batches of this process's shard of `split`.

  Args:
    dataset: TFDS name ("digits" is prepared on first use; others must exist).
    split: split to train on.
    data_dir: TFDS data directory; `$PTFT_DATA_DIR` or ~/.cache/ptft_jax/datasets.
    global_batch_size: batch size summed over processes.
    seed: shuffling seed in [0, 2**32).
    label_fraction: keep this stratified fraction of the split, in (0, 1].
    label_fraction_seed: which examples are kept; independent of `seed`.
    labels_per_class: > 0: keep this many examples of every class instead of a fraction.
    worker_count: Grain worker processes (0: read in this process).
    shard_index: overrides `jax.process_index()` (with `shard_count`).
    shard_count: overrides `jax.process_count()` (with `shard_index`).

  Returns:
    A checkpointable iterator of {"image": float32 [b, h, w, c] in [0, 1],
    "label": int32 [b]} with b = global_batch_size // shard_count. Epochs
    run into each other; every epoch is a fresh permutation.
  """
  if not 0 < label_fraction <= 1:
    raise DataError(f"label_fraction={label_fraction} for dataset {dataset!r} must be in (0, 1]")
  if labels_per_class < 0 or (labels_per_class and label_fraction < 1):
    raise ConfigError(f"config.data.labels_per_class={labels_per_class}: use a count > 0 "
                      "with config.data.label_fraction=1.0, or 0 (off)")
  if not 0 <= seed < 2**32:
    raise ConfigError(f"data seed {seed} must be in [0, 2**32)")
  shard_index, shard_count = _shard(shard_index, shard_count)
  batch_size = _per_process_batch(global_batch_size, shard_count)
  source = _open(dataset, split, data_dir)
  if label_fraction < 1 or labels_per_class:
    labels = (source.labels() if isinstance(source, InMemory)
              else _labels(dataset, split, data_dir))
    source = Subset(source, stratified_subset(labels, label_fraction, label_fraction_seed,
                                              per_class=labels_per_class))
  return source_iterator(source, seed=seed, batch_size=batch_size, worker_count=worker_count,
                         shard_index=shard_index, shard_count=shard_count)


def source_iterator(source, *, seed: int, batch_size: int, worker_count: int = 0,
                    shard_index: int, shard_count: int) -> grain.DataLoaderIterator:
  """`train_iterator`'s stream over any random-access `source` of feature dicts.

  In-memory sources (without workers) take the gather path; anything else a Grain
  DataLoader, whose `worker_count` processes read (decode) the records. Records that
  carry `SKIPPED` (an image folder's unreadable files under bad_images="skip") are
  filtered out before batching, so every batch is full.

  Args:
    source: `len()` and `source[i]` -> {"image", "label"} (or a `SKIPPED` record).
    seed: shuffling seed.
    batch_size: rows per batch of this process.
    worker_count: Grain worker processes (0: read in this process).
    shard_index, shard_count: this process's shard of the stream.
  """
  if worker_count == 0 and _in_memory(source):
    return _in_memory_iterator(source, seed, batch_size, shard_index, shard_count)
  if worker_count > 0 and not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain's workers read absl flags; default them.
  loader = grain.DataLoader(
      data_source=source,
      sampler=grain.samplers.IndexSampler(
          num_records=len(source), shuffle=True, seed=seed, num_epochs=None),
      operations=[DropSkipped(), ToExample(),
                  grain.transforms.Batch(batch_size, drop_remainder=True)],
      worker_count=worker_count,
      shard_options=grain.sharding.ShardOptions(shard_index, shard_count, drop_remainder=True),
  )
  return iter(loader)


def _in_memory(source) -> bool:
  return isinstance(source, InMemory) or (
      isinstance(source, Subset) and isinstance(source.source, InMemory))


def _in_memory_iterator(source, seed, batch_size, shard_index, shard_count):
  """Whole batches gathered with one numpy index per batch (no per-record Python work).

  The same kind of stream as the DataLoader path: a fresh seeded permutation
  per epoch, epochs back to back, record k of the global stream going to
  process k % shard_count. Batch j is a pure function of (seed, j), so the
  iterator's checkpoint state is just its position (a Grain DatasetIterator,
  saved with the same Orbax args).
  """
  n = len(source)
  global_batch = batch_size * shard_count

  @functools.lru_cache(maxsize=4)
  def permutation(epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)

  def batch(j: int) -> dict[str, np.ndarray]:
    positions = j * global_batch + shard_index + shard_count * np.arange(batch_size)
    epochs, offsets = np.divmod(positions, n)
    rows = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
      rows[epochs == epoch] = permutation(int(epoch))[offsets[epochs == epoch]]
    return source.gather(rows)

  return iter(grain.MapDataset.range(2**62).map(batch).to_iter_dataset())


def eval_batches(
    dataset: str, *, split: str, data_dir: str | None = None, global_batch_size: int,
    shard_index: int | None = None, shard_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """One ordered pass over this process's contiguous part of `split`.

  Every process yields the same number of batches, all of the same shape, so
  a jitted (or multi-host) eval step never retraces or hangs; padding rows are
  zeros with valid=False. Over all processes the valid rows are the split,
  each example exactly once.

  Args:
    dataset: TFDS name.
    split: split to evaluate.
    data_dir: TFDS data directory; `$PTFT_DATA_DIR` or ~/.cache/ptft_jax/datasets.
    global_batch_size: batch size summed over processes.
    shard_index: overrides `jax.process_index()` (with `shard_count`).
    shard_count: overrides `jax.process_count()` (with `shard_index`).

  Returns:
    Iterator of {"image": float32 [b, h, w, c], "label": int32 [b], "valid": bool [b]}.
  """
  shard_index, shard_count = _shard(shard_index, shard_count)
  batch_size = _per_process_batch(global_batch_size, shard_count)
  return source_eval_batches(_open(dataset, split, data_dir), batch_size=batch_size,
                             shard_index=shard_index, shard_count=shard_count)


def source_eval_batches(source, *, batch_size: int, shard_index: int, shard_count: int,
                        template: dict[str, np.ndarray] | None = None,
                        ) -> Iterator[dict[str, np.ndarray]]:
  """`eval_batches`' ordered, padded pass over any random-access `source`.

  `SKIPPED` records (unreadable files skipped by an image folder) become padding
  rows (valid=False). `template`: an example of the right shapes (default: source[0]).
  """
  rows = np.array_split(np.arange(len(source)), shard_count)[shard_index]
  largest_shard = math.ceil(len(source) / shard_count)
  num_batches = math.ceil(largest_shard / batch_size)  # The same on every process.
  template = template if template is not None else to_example(source[0])

  def read(k: int) -> dict[str, np.ndarray]:
    chunk = rows[k * batch_size:(k + 1) * batch_size]
    if _in_memory(source):  # one gather instead of a Python loop
      batch = source.gather(np.pad(chunk, (0, batch_size - len(chunk))))
      valid = np.arange(batch_size) < len(chunk)
      return {k: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0) for k, v in
              batch.items()} | {"valid": valid}
    records = (source[int(i)] for i in chunk)
    return pad_batch([to_example(r) for r in records if SKIPPED not in r], batch_size,
                     template)

  batches = grain.MapDataset.range(num_batches).map(read)
  return iter(batches.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=4)))


def iterator_save_args(iterator: grain.DataLoaderIterator) -> ocp.args.CheckpointArgs:
  """Orbax args that save `iterator`'s position (one JSON file per process)."""
  return grain.checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator: grain.DataLoaderIterator) -> ocp.args.CheckpointArgs:
  """Orbax args that restore a saved position into `iterator` (in place)."""
  return grain.checkpoint.CheckpointRestore(iterator)
