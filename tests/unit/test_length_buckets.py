"""Length buckets (ptft_jax/data/text/buckets.py): shapes, coverage, exact resume, sharding."""

import numpy as np
import pytest

from ptft_jax.data.text import buckets as lb
from ptft_jax.errors import ConfigError

SEQ_LEN = 64
BUCKETS = (8, 16, 32, 64)


def _columns(n: int = 200, seed: int = 0) -> dict[str, np.ndarray]:
  """Rows of ragged length 2..64 (mostly short), padded to SEQ_LEN; `row` = row index."""
  rng = np.random.default_rng(seed)
  lengths = np.clip(rng.lognormal(2.5, 0.7, n).astype(int), 2, SEQ_LEN)
  mask = (np.arange(SEQ_LEN) < lengths[:, None]).astype(np.int32)
  ids = np.where(mask > 0, np.arange(n)[:, None] + 1000, 0).astype(np.int32)
  return {"input_ids": ids, "attention_mask": mask, "token_type_ids": 0 * mask,
          "label": np.arange(n) % 3, "row": np.arange(n)}


def _take(it, count):
  return [next(it) for _ in range(count)]


def test_resolve_buckets():
  assert lb.resolve_buckets((), 128) == ()
  assert lb.resolve_buckets((64, 32, 32), 128) == (32, 64, 128)
  assert lb.resolve_buckets((32, 128), 128) == (32, 128)
  for bad in ((0, 32), (32, 256)):
    with pytest.raises(ConfigError, match="length_buckets"):
      lb.resolve_buckets(bad, 128)


def test_row_lengths_and_bucket_for():
  columns = _columns(20)
  np.testing.assert_array_equal(lb.row_lengths(columns), columns["attention_mask"].sum(1))
  assert [lb.bucket_for(n, BUCKETS) for n in (1, 8, 9, 33, 64, 99)] == [8, 8, 16, 64, 64, 64]


def test_batches_are_cut_to_the_smallest_bucket_and_cover_each_epoch_once():
  columns = _columns()
  lengths = lb.row_lengths(columns)
  it = lb.bucketed_iterator(columns, buckets=BUCKETS, seed=3, batch_size=16,
                            shard_index=0, shard_count=1, window=4)
  per_epoch = 200 // 16
  batches = _take(it, 2 * per_epoch)
  for b in batches:
    longest = int(lengths[b["row"]].max())
    assert b["input_ids"].shape == (16, lb.bucket_for(longest, BUCKETS))
    assert b["attention_mask"].shape == b["input_ids"].shape and b["label"].shape == (16,)
    # Cutting drops only padding: every row keeps all its tokens.
    np.testing.assert_array_equal(b["attention_mask"].sum(1), lengths[b["row"]])
  for epoch in range(2):
    rows = np.concatenate([b["row"] for b in batches[epoch * per_epoch:(epoch + 1) * per_epoch]])
    assert len(set(rows.tolist())) == per_epoch * 16  # no row twice within an epoch
  # Sorting within windows pads far less than one fixed length.
  padded_tokens = sum(b["input_ids"].size for b in batches)
  assert padded_tokens < 0.6 * len(batches) * 16 * SEQ_LEN
  # ... and several shapes occur, in a shuffled (not sorted) order.
  shapes = [b["input_ids"].shape[1] for b in batches]
  assert len(set(shapes)) >= 3 and shapes != sorted(shapes)


def test_the_order_is_seeded_and_a_restored_iterator_continues_exactly():
  columns = _columns()
  make = lambda seed: lb.bucketed_iterator(columns, buckets=BUCKETS, seed=seed, batch_size=8,
                                           shard_index=0, shard_count=1)
  first = _take(make(5), 30)
  again = make(5)
  _take(again, 11)
  state = again.get_state()
  restored = make(5)
  restored.set_state(state)
  for a, b in zip(first[11:], _take(restored, 19), strict=True):
    np.testing.assert_array_equal(a["input_ids"], b["input_ids"])
  other = _take(make(6), 30)
  assert any(not np.array_equal(a["row"], b["row"]) for a, b in zip(first, other, strict=True))


def test_processes_share_shapes_and_split_each_global_batch():
  columns = _columns()
  whole = _take(lb.bucketed_iterator(columns, buckets=BUCKETS, seed=1, batch_size=16,
                                     shard_index=0, shard_count=1), 15)
  parts = [_take(lb.bucketed_iterator(columns, buckets=BUCKETS, seed=1, batch_size=8,
                                      shard_index=i, shard_count=2), 15) for i in range(2)]
  for k, b in enumerate(whole):
    expected = (8, b["input_ids"].shape[1])
    assert parts[0][k]["input_ids"].shape == parts[1][k]["input_ids"].shape == expected
    np.testing.assert_array_equal(
        np.sort(np.concatenate([parts[0][k]["row"], parts[1][k]["row"]])), np.sort(b["row"]))


def test_eval_batches_hold_every_row_once_at_their_bucket():
  columns = _columns(101)
  lengths = lb.row_lengths(columns)
  for count in (1, 2):
    rows, shapes = [], []
    per_process = [list(lb.bucketed_eval_batches(
        columns, buckets=BUCKETS, global_batch_size=16, shard_index=i, shard_count=count))
        for i in range(count)]
    assert len({len(p) for p in per_process}) == 1
    for batches in zip(*per_process, strict=True):
      assert len({b["input_ids"].shape for b in batches}) == 1
      for b in batches:
        valid = b["valid"]
        rows += b["row"][valid].tolist()
        shapes.append(b["input_ids"].shape[1])
        assert shapes[-1] >= lengths[b["row"][valid]].max(initial=0)
        assert not b["attention_mask"][~valid].any()
    assert sorted(rows) == list(range(101))
    # Longest first (the loop sizes its memory report from the first batch).
    assert shapes == sorted(shapes, reverse=True) and shapes[-1] < SEQ_LEN


def test_a_batch_larger_than_the_data_is_one_line():
  with pytest.raises(ConfigError, match="batch_size=512 is larger than the 200"):
    lb.bucketed_iterator(_columns(), buckets=BUCKETS, seed=0, batch_size=512, shard_index=0,
                         shard_count=1)


def test_buckets_on_a_format_without_padding_is_one_line():
  from ptft_jax.data.text import pipeline

  config = pipeline.pretraining_config(format="packed", seq_len=32, batch_size=4, vocab_size=64)
  config.length_buckets = (16,)
  with pytest.raises(ConfigError, match="buckets serve format 'labeled'.*not 'packed'"):
    pipeline.text_data(config, seed=0)
