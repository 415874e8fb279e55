"""Length buckets for labeled text: a few static sequence lengths instead of one padded one.

Real sentences are short and ragged; padding every row to `config.data.seq_len`
spends most of a step on padding. With `config.data.length_buckets = (32, 64, 128)`
each batch is cut to the smallest bucket that holds its longest row, so the train
step compiles once per bucket (jax.jit retraces per shape) and pads little.

Training order (`bucketed_iterator`), per epoch:
  1. a fresh seeded permutation of the examples (as without buckets), cut to whole
     global batches;
  2. windows of `window` batches of that order, each sorted by length (stable), so a
     window's batches hold rows of similar length;
  3. each window's batches in a seeded random order.
Batch j is a pure function of (seed, j): the iterator's checkpoint is its position
and a resume is exact, as for `pipeline._in_memory_iterator`. Every epoch has
`len // global_batch` batches; the rows a permutation leaves over come back in the
next epochs' permutations.

Evaluation (`bucketed_eval_batches`) sorts the whole split by length, longest first, and
batches it in that order: every example once, padded rows `valid=False`. Longest first
because the loop sizes its memory report (and model init) from the first eval batch.
"""

import bisect
import functools
import math
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from ptft_jax.errors import ConfigError

# The column whose nonzero entries mark a row's tokens (row lengths come from it).
MASK_COLUMN = "attention_mask"


def resolve_buckets(buckets: Sequence[int], seq_len: int) -> tuple[int, ...]:
  """`config.data.length_buckets` checked and closed by `seq_len`: sorted, distinct.

  () stays () (no buckets: every row padded to `seq_len`).
  """
  if not buckets:
    return ()
  values = sorted({int(b) for b in buckets})
  if values[0] <= 0 or values[-1] > seq_len:
    raise ConfigError(f"config.data.length_buckets={tuple(buckets)}: each length must be in "
                      f"[1, config.data.seq_len={seq_len}]")
  if values[-1] < seq_len:  # rows are truncated at seq_len, so it is always a bucket
    values.append(seq_len)
  return tuple(values)


def row_lengths(columns: dict[str, np.ndarray]) -> np.ndarray:
  """int64 [n]: tokens per row (the last attended position + 1)."""
  mask = np.asarray(columns[MASK_COLUMN]) > 0
  return np.where(mask.any(1), mask.shape[1] - np.argmax(mask[:, ::-1], axis=1), 0)


def bucket_for(length: int, buckets: tuple[int, ...]) -> int:
  """The smallest bucket >= `length` (the largest bucket for anything longer)."""
  return buckets[min(bisect.bisect_left(buckets, length), len(buckets) - 1)]


def cut(batch: dict[str, np.ndarray], length: int, seq_len: int) -> dict[str, np.ndarray]:
  """Sequence columns ([b, seq_len, ...]) cut to `length`; the others unchanged."""
  return {k: v[:, :length] if v.ndim >= 2 and v.shape[1] == seq_len else v
          for k, v in batch.items()}


def bucketed_iterator(columns: dict[str, np.ndarray], *, buckets: tuple[int, ...],
                      seed: int, batch_size: int, shard_index: int, shard_count: int,
                      window: int = 32):
  """Infinite, seeded batches of similar-length rows, cut to their bucket.

  Args:
    columns: equal-length numpy columns, sequence columns padded to the largest bucket.
    buckets: `resolve_buckets(...)`.
    seed: shuffling seed.
    batch_size: rows per batch of this process.
    shard_index, shard_count: process `i` takes rows i, i + count, ... of each global batch
      (all processes cut the same global batch to the same bucket, so shapes agree).
    window: batches sorted together; larger pads less but shuffles less.

  Returns:
    A checkpointable Grain DatasetIterator of {column: [batch_size, bucket, ...] or
    [batch_size, ...]}.
  """
  seq_len = buckets[-1]
  lengths = row_lengths(columns)
  n = len(lengths)
  global_batch = batch_size * shard_count
  per_epoch = n // global_batch
  if per_epoch == 0:
    raise ConfigError(f"config.data.batch_size={global_batch} is larger than the {n} training "
                      "examples")

  @functools.lru_cache(maxsize=2)
  def epoch_batches(epoch: int) -> np.ndarray:
    """int64 [per_epoch, global_batch]: the rows of every batch of `epoch`, in order."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)[:per_epoch * global_batch]
    out = []
    for start in range(0, per_epoch, window):
      rows = order[start * global_batch:(start + window) * global_batch]
      rows = rows[np.argsort(lengths[rows], kind="stable")].reshape(-1, global_batch)
      out.append(rows[rng.permutation(len(rows))])
    return np.concatenate(out)

  def batch(j: int) -> dict[str, np.ndarray]:
    epoch, k = divmod(j, per_epoch)
    rows = epoch_batches(epoch)[k]
    length = bucket_for(int(lengths[rows].max()), buckets)
    mine = rows[shard_index::shard_count]
    return cut({name: v[mine] for name, v in columns.items()}, length, seq_len)

  return iter(grain.MapDataset.range(2**62).map(batch).to_iter_dataset())


def bucketed_eval_batches(columns: dict[str, np.ndarray], *, buckets: tuple[int, ...],
                          global_batch_size: int, shard_index: int, shard_count: int,
                          ) -> Iterator[dict[str, np.ndarray]]:
  """One pass over `columns` sorted by length (longest first), each batch cut to its bucket.

  Every process yields the same number of batches with the same shapes; over all
  processes the valid rows are the split, each row once. Padding rows are zeros with
  `valid=False`.
  """
  if global_batch_size % shard_count:
    raise ConfigError(f"config.data.eval_batch_size={global_batch_size} must be a multiple of "
                      f"the number of processes ({shard_count})")
  seq_len = buckets[-1]
  lengths = row_lengths(columns)
  order = np.argsort(-lengths, kind="stable")
  batch_size = global_batch_size // shard_count
  for k in range(math.ceil(len(order) / global_batch_size)):
    rows = order[k * global_batch_size:(k + 1) * global_batch_size]
    length = bucket_for(int(lengths[rows].max()), buckets)
    mine = rows[shard_index * batch_size:(shard_index + 1) * batch_size]
    valid = np.arange(batch_size) < len(mine)
    picked = np.pad(mine, (0, batch_size - len(mine)))
    out = {name: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v[picked], 0)
           for name, v in columns.items()}
    yield cut(out, length, seq_len) | {"valid": valid}
