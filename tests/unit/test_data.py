"""Tests for ptft_jax.data: the embedded digits dataset and the Grain pipelines.

All 1,797 digits images are distinct, so an image's bytes identify its example.
"""

import collections
import hashlib
import os
import socket
import sys
import threading
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from ptft_jax import data
from ptft_jax.data import embedded
from ptft_jax.data.builders.digits import split_indices, to_uint8
from ptft_jax.data.subset import stratified_subset
from ptft_jax.errors import ConfigError, DataError


def _no_network(*args, **kwargs):
  raise AssertionError(f"network access attempted: {args}")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A data_dir with digits prepared in it, built with the network forbidden."""
  path = str(tmp_path_factory.mktemp("tfds"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(socket.socket, "connect", _no_network)
    mp.setattr(socket, "create_connection", _no_network)
    data.dataset_info("digits", data_dir=path)
  return path


def _keys(batch, valid=None):
  """Identifies every (valid) row of a batch by its image bytes and label."""
  rows = range(len(batch["label"])) if valid is None else np.flatnonzero(valid)
  return [(batch["image"][i].tobytes(), int(batch["label"][i])) for i in rows]


def _split_keys(data_dir, split):
  """Every example of a split, through one unsharded eval pass."""
  keys = []
  for batch in data.eval_batches("digits", split=split, data_dir=data_dir, global_batch_size=512):
    keys += _keys(batch, batch["valid"])
  return keys


def test_digits_info(data_dir):
  info = data.dataset_info("digits", data_dir=data_dir)
  assert info.name == "digits"
  assert info.image_shape == (8, 8, 1)
  assert info.num_classes == 10
  assert info.label_names == [str(i) for i in range(10)]
  assert info.splits == {"train": 1257, "validation": 270, "test": 270}


def test_digits_needs_no_tensorflow(data_dir):
  next(data.train_iterator("digits", data_dir=data_dir, global_batch_size=8, seed=0))
  assert "tensorflow" not in sys.modules


def test_default_data_dir_from_env(data_dir, monkeypatch):
  monkeypatch.setenv("PTFT_DATA_DIR", data_dir)
  assert data.default_data_dir() == data_dir
  assert data.dataset_info("digits").splits["test"] == 270


def test_split_membership_is_disjoint_and_fixed():
  splits = split_indices()
  assert {k: len(v) for k, v in splits.items()} == {"train": 1257, "validation": 270, "test": 270}
  assert np.array_equal(np.sort(np.concatenate(list(splits.values()))), np.arange(1797))
  fingerprints = {k: hashlib.sha1(v.tobytes()).hexdigest()[:16] for k, v in splits.items()}
  # Pinned: changing these changes every reported digits result.
  assert fingerprints == {
      "train": "025567a8db0d145b",
      "validation": "4ac6e187be4f3612",
      "test": "7753ce79dcf64c7d",
  }


def test_prepared_splits_hold_the_sklearn_examples(data_dir):
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = to_uint8(digits.images).astype(np.float32) / 255
  for split, indices in split_indices().items():
    expected = sorted((images[i].tobytes(), int(digits.target[i])) for i in indices)
    assert sorted(_split_keys(data_dir, split)) == expected


def test_train_batches_format(data_dir):
  batch = next(data.train_iterator("digits", data_dir=data_dir, global_batch_size=32, seed=0))
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["image"].max() == 1.0  # 16 -> 255 -> 1.0.


def _first_batches(data_dir, n, **kwargs):
  it = data.train_iterator("digits", data_dir=data_dir, **kwargs)
  return [next(it) for _ in range(n)]


def test_shuffling_is_seeded(data_dir):
  a = _first_batches(data_dir, 3, global_batch_size=32, seed=1)
  b = _first_batches(data_dir, 3, global_batch_size=32, seed=1)
  c = _first_batches(data_dir, 3, global_batch_size=32, seed=2)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_epochs_continue_with_a_new_permutation(data_dir):
  # 126 examples per epoch (10%), batches of 63: two batches per epoch.
  epochs = _first_batches(data_dir, 4, global_batch_size=63, seed=0, label_fraction=0.1)
  first = _keys(epochs[0]) + _keys(epochs[1])
  second = _keys(epochs[2]) + _keys(epochs[3])
  assert sorted(first) == sorted(second) and len(set(first)) == 126
  assert first != second


def test_stratified_subset_is_deterministic_and_nested():
  labels = np.repeat(np.arange(5), [3, 10, 20, 40, 1])
  small = stratified_subset(labels, 0.1, seed=0)
  big = stratified_subset(labels, 0.5, seed=0)
  np.testing.assert_array_equal(small, stratified_subset(labels, 0.1, seed=0))
  assert set(small) <= set(big)
  assert collections.Counter(labels[small].tolist()) == {0: 1, 1: 1, 2: 2, 3: 4, 4: 1}
  assert not np.array_equal(stratified_subset(labels, 0.5, seed=1), big)


def test_label_fraction_subset(data_dir):
  def subset(seed):  # One batch of 126 rows is exactly the first epoch.
    kwargs = dict(global_batch_size=126, seed=seed, label_fraction=0.1)
    return _keys(_first_batches(data_dir, 1, **kwargs)[0])

  a, b = subset(0), subset(1)
  assert a != b  # Shuffled differently...
  assert sorted(a) == sorted(b)  # ...but the same examples.
  assert len(set(a)) == 126
  train = collections.Counter(label for _, label in _split_keys(data_dir, "train"))
  kept = collections.Counter(label for _, label in a)
  for label, count in train.items():
    assert kept[label] == max(1, int(count / 10 + 0.5))  # Half rounds up.
  other = _first_batches(data_dir, 1, global_batch_size=126, seed=0, label_fraction=0.1,
                         label_fraction_seed=1)[0]
  assert sorted(_keys(other)) != sorted(a)


def test_process_shards_are_disjoint_and_split_the_global_batch(data_dir):
  kwargs = dict(global_batch_size=64, seed=3)
  whole = _first_batches(data_dir, 3, **kwargs)
  shards = [_first_batches(data_dir, 3, shard_index=i, shard_count=2, **kwargs) for i in range(2)]
  seen = []
  for step in range(3):
    parts = [_keys(shards[i][step]) for i in range(2)]
    assert all(len(p) == 32 for p in parts)
    assert sorted(parts[0] + parts[1]) == sorted(_keys(whole[step]))
    seen += parts[0] + parts[1]
  assert len(set(seen)) == len(seen) == 192  # Within one epoch nothing repeats.


def test_eval_batches_cover_every_example_once(data_dir):
  shard_count, global_batch = 4, 64  # 270 -> 68, 68, 67, 67 rows; 16 per batch.
  rows, num_batches = [], set()
  for i in range(shard_count):
    batches = list(data.eval_batches("digits", split="validation", data_dir=data_dir,
                                     global_batch_size=global_batch, shard_index=i,
                                     shard_count=shard_count))
    num_batches.add(len(batches))
    for batch in batches:
      assert batch["image"].shape == (16, 8, 8, 1) and batch["valid"].dtype == bool
      assert not batch["image"][~batch["valid"]].any()
      rows += _keys(batch, batch["valid"])
  assert num_batches == {5}  # Same count on every process, so no host waits forever.
  assert len(rows) == 270 and sorted(rows) == sorted(_split_keys(data_dir, "validation"))


def test_eval_batches_are_in_order(data_dir):
  a = list(data.eval_batches("digits", split="test", data_dir=data_dir, global_batch_size=100))
  b = list(data.eval_batches("digits", split="test", data_dir=data_dir, global_batch_size=270))
  assert [len(x["label"]) for x in a] == [100, 100, 100] and a[-1]["valid"].sum() == 70
  np.testing.assert_array_equal(np.concatenate([x["label"] for x in a])[:270], b[0]["label"])


def test_iterator_checkpoint_restores_the_next_batch(data_dir, tmp_path):
  kwargs = dict(data_dir=data_dir, global_batch_size=16, seed=7, label_fraction=0.5)
  it = data.train_iterator("digits", **kwargs)
  for _ in range(5):
    next(it)
  state = {"step": np.asarray(5), "w": np.arange(4.0)}
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(5, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=data.iterator_save_args(it)))
    mngr.wait_until_finished()
  expected = [next(it) for _ in range(3)]

  fresh = data.train_iterator("digits", **kwargs)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), data=data.iterator_restore_args(fresh)))
  assert restored["data"] is fresh
  np.testing.assert_array_equal(restored["state"]["w"], state["w"])
  for want in expected:
    got = next(fresh)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])


def test_mock_tfds_dataset_through_the_same_pipeline(tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    info = data.dataset_info("mnist", data_dir=str(tmp_path))
    assert (info.image_shape, info.num_classes) == ((28, 28, 1), 10)
    it = data.train_iterator("mnist", data_dir=str(tmp_path), global_batch_size=8, seed=0,
                             label_fraction=0.5)
    batch = next(it)
    assert batch["image"].shape == (8, 28, 28, 1) and batch["label"].dtype == np.int32
    batches = data.eval_batches("mnist", split="test", data_dir=str(tmp_path),
                                global_batch_size=16)
    assert sum(int(b["valid"].sum()) for b in batches) == 40


def test_empty_split_is_a_data_error(tmp_path):
  with tfds.testing.mock_data(num_examples=0):
    with pytest.raises(DataError, match="split 'train' of dataset 'mnist'.* is empty"):
      data.train_iterator("mnist", data_dir=str(tmp_path), global_batch_size=8, seed=0)


def test_unknown_split_is_a_data_error(data_dir):
  with pytest.raises(DataError, match="dataset 'digits' has no split 'nosuch'; available: train"):
    data.eval_batches("digits", split="nosuch", data_dir=data_dir, global_batch_size=8)


@pytest.mark.parametrize("name", ["mnist", "no_such_dataset"])
def test_missing_dataset_fails_at_once(tmp_path, name):
  path = str(tmp_path / "empty")
  start = time.monotonic()
  with pytest.raises(DataError) as e:
    data.train_iterator(name, data_dir=path, global_batch_size=8, seed=0)
  assert time.monotonic() - start < 5
  message = str(e.value)
  assert "\n" not in message
  assert f"dataset '{name}' not found in data_dir '{path}'" in message
  assert os.path.join(path, name) in message and f"tfds build {name}" in message
  with pytest.raises(DataError, match=f"'{name}' not found"):
    data.dataset_info(name, data_dir=path)
  assert not os.path.exists(path)  # Nothing was downloaded or created.


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_bad_label_fraction(data_dir, fraction):
  with pytest.raises(DataError, match="label_fraction"):
    data.train_iterator("digits", data_dir=data_dir, global_batch_size=8, seed=0,
                        label_fraction=fraction)


def test_concurrent_preparation(tmp_path):
  # flock also excludes separate open()s within one process, so threads stand in
  # for processes here (without the lock the second rename into place fails).
  errors = []

  def prepare():
    try:
      embedded.prepare("digits", str(tmp_path))
    except Exception as e:
      errors.append(e)

  threads = [threading.Thread(target=prepare) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert data.dataset_info("digits", data_dir=str(tmp_path)).splits["train"] == 1257


def test_labels_per_class_keeps_exactly_k_of_each_class_nested():
  labels = np.repeat(np.arange(4), [3, 10, 20, 40])
  two = stratified_subset(labels, 1.0, seed=0, per_class=2)
  five = stratified_subset(labels, 1.0, seed=0, per_class=5)
  assert collections.Counter(labels[two].tolist()) == {0: 2, 1: 2, 2: 2, 3: 2}
  assert collections.Counter(labels[five].tolist()) == {0: 3, 1: 5, 2: 5, 3: 5}  # class 0 has 3
  assert set(two) <= set(five)


def test_labels_per_class_through_the_pipeline(data_dir):
  it = data.train_iterator("digits", global_batch_size=40, seed=0, labels_per_class=2,
                      shard_index=0, shard_count=1)
  batch = next(it)  # 20 labeled examples, so a batch of 40 holds each one twice
  assert collections.Counter(batch["label"].tolist()) == {c: 4 for c in range(10)}
  with pytest.raises(ConfigError, match="labels_per_class"):
    data.train_iterator("digits", global_batch_size=8, seed=0, labels_per_class=2,
                   label_fraction=0.5)
