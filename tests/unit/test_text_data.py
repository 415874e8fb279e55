"""Text data: tokenizer, shipped corpus, sentence pairs, packing, JSONL and TFDS sources."""

import collections
import json
import os
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from ptft_jax import data
from ptft_jax.data import text
from ptft_jax.data.text import examples, sources
from ptft_jax.data.text.tokenizer import SPECIAL_TOKENS, Vocab, cached_vocab
from ptft_jax.errors import ConfigError, DataError

VOCAB = Vocab(path="", size=1000, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)


def _docs(num_docs=12, seed=0):
  """Synthetic tokenized documents; token id 100 * (doc + 1) + sentence names its sentence."""
  rng = np.random.default_rng(seed)
  return [[np.full(int(rng.integers(2, 7)), 100 * (d + 1) + s, np.int32)
           for s in range(int(rng.integers(1, 9)))] for d in range(num_docs)]


def test_trained_vocab_is_exact_cached_and_deterministic(tmp_path):
  corpus = tmp_path / "c.txt"
  corpus.write_text("The cat sat on the mat. The dog sat on the log.\n\nCats and dogs.\n" * 20)
  a = cached_vocab([str(corpus)], 120, True, str(tmp_path / "a"))
  b = cached_vocab([str(corpus)], 120, True, str(tmp_path / "b"))
  lines = open(a).read().splitlines()
  assert lines == open(b).read().splitlines() and len(lines) == 120
  assert tuple(lines[:5]) == SPECIAL_TOKENS and lines[-1].startswith("[unused")
  assert cached_vocab([str(corpus)], 120, True, str(tmp_path / "a")) == a  # cache hit
  tokenizer, vocab = text.load_tokenizer(a, lowercase=True)
  assert (vocab.size, vocab.pad_id, vocab.mask_id) == (120, 0, 4)
  assert tokenizer.encode("the cat", add_special_tokens=False).tokens == ["the", "cat"]
  with pytest.raises(ConfigError, match="config.data.tokenizer.vocab_size=10 is smaller"):
    cached_vocab([str(corpus)], 10, True, str(tmp_path / "c"))
  with pytest.raises(DataError, match="config.data.tokenizer.vocab: no file"):
    text.load_tokenizer(str(tmp_path / "nope.txt"), lowercase=True)


def test_shipped_corpus_is_one_sentence_per_line_with_fixed_splits():
  corpus = text.read_corpus(())
  with open(text.CORPUS_FILE, encoding="utf-8") as f:
    blocks = f.read().strip().split("\n\n")
  assert sum(len(docs) for docs in corpus.values()) == len(blocks) > 400
  assert sorted(s for docs in corpus.values() for d in docs for s in d) == sorted(
      line for block in blocks for line in block.split("\n"))
  sizes = {k: len(v) for k, v in corpus.items()}
  assert sizes["train"] > 6 * sizes["validation"] and sizes["validation"] > 30
  assert all(sources.document_split(d) == "test" for d in corpus["test"])
  assert sources.split_sentences('He said "stop." Then 3 p.m. came! (Yes.) ok? No.') == [
      'He said "stop."', "Then 3 p.m. came!", "(Yes.) ok?", "No."]


def test_sentence_pairs_are_real_next_sentences_or_from_another_document():
  docs = _docs()
  rng = np.random.default_rng(0)
  labels = []
  for i in range(600):
    row, _ = examples.sentence_pair(docs, i % len(docs), rng, seq_len=24, vocab=VOCAB, nsp=True)
    ids, types, mask = row["input_ids"], row["token_type_ids"], row["attention_mask"]
    n = int(mask.sum())
    assert mask[:n].all() and not mask[n:].any() and not ids[n:].any()
    seps = np.flatnonzero(ids == VOCAB.sep_id)
    assert ids[0] == VOCAB.cls_id and len(seps) == 2 and seps[1] == n - 1
    a, b = ids[1:seps[0]], ids[seps[0] + 1:seps[1]]
    assert len(a) and len(b) and (types[:seps[0] + 1] == 0).all()
    assert (types[seps[0] + 1:n] == 1).all()
    label = int(row["next_sentence_label"])
    labels.append(label)
    same_doc = a[-1] // 100 == b[0] // 100
    if label == 0:  # B's first sentence follows A's last one in the same document
      assert same_doc and b[0] in (a[-1], a[-1] + 1)
    else:
      assert not same_doc
  assert 0.4 < np.mean(labels) < 0.7  # 1/2, plus single-sentence chunks (always random)


def test_single_segment_rows_and_eval_walk_covers_each_sentence():
  docs = _docs()
  rows = text.pretraining_eval_set(docs, format="sentence_pairs", seq_len=64, vocab=VOCAB,
                                   nsp=False, max_examples=1000)
  seen = rows["input_ids"][(rows["input_ids"] >= 100)]
  want = np.concatenate([s for d in docs for s in d])
  np.testing.assert_array_equal(np.sort(seen), np.sort(want))  # every token once, in order
  assert not rows["token_type_ids"].any() and "next_sentence_label" not in rows


def test_packed_rows_hold_whole_pieces_of_one_document(tmp_path):
  docs = _docs(30)
  it = text.pretraining_iterator(docs, format="packed", seq_len=16, vocab=VOCAB, nsp=False,
                                 seed=3, batch_size=8)
  batch = next(it)
  assert batch["input_ids"].shape == batch["segment_ids"].shape == (8, 16)
  for ids, seg, mask in zip(batch["input_ids"], batch["segment_ids"], batch["attention_mask"],
                            strict=True):
    np.testing.assert_array_equal(mask, seg > 0)
    assert not ids[seg == 0].any() and (np.diff(seg[seg > 0]) >= 0).all()
    for s in np.unique(seg[seg > 0]):
      piece = ids[seg == s]
      doc = piece[piece != VOCAB.sep_id] // 100 - 1
      assert len(set(doc.tolist())) <= 1  # one document per segment
      assert (piece == VOCAB.sep_id).sum() <= 1 and (piece[:-1] != VOCAB.sep_id).all()
  rows = text.pretraining_eval_set(docs, format="packed", seq_len=16, vocab=VOCAB, nsp=False,
                                   max_examples=10_000)
  real = rows["input_ids"][rows["segment_ids"] > 0]
  want = np.concatenate([examples.document_tokens(d, VOCAB.sep_id) for d in docs])
  np.testing.assert_array_equal(np.sort(real), np.sort(want))  # every token exactly once


@pytest.mark.parametrize("fmt", ["sentence_pairs", "packed"])
def test_pretraining_iterator_checkpoint_restores_the_next_batch(tmp_path, fmt):
  kwargs = dict(format=fmt, seq_len=24, vocab=VOCAB, nsp=True, seed=5, batch_size=4)
  it = text.pretraining_iterator(_docs(), **kwargs)
  for _ in range(7):
    next(it)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(1, args=ocp.args.Composite(data=data.iterator_save_args(it)))
    mngr.wait_until_finished()
  expected = [next(it) for _ in range(3)]
  fresh = text.pretraining_iterator(_docs(), **kwargs)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(1, args=ocp.args.Composite(data=data.iterator_restore_args(fresh)))
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def _jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def _labeled_config(tmp_path, files, **kw):
  c = text.default_config()
  c.update(dict(source="jsonl", format="labeled", seq_len=16, batch_size=4, eval_batch_size=8,
                files=files, **kw))
  c.tokenizer.vocab_size = 200
  c.tokenizer.train_files = (_jsonl(tmp_path / "vocab.txt", ["good bad movie plot"] * 50),)
  return c


def test_jsonl_pairs_labels_and_eval_coverage(tmp_path):
  rows = [{"text": f"good movie {i}", "text_b": "bad plot", "label": ["neg", "pos"][i % 2]}
          for i in range(11)]
  files = {s: _jsonl(tmp_path / f"{s}.jsonl", rows) for s in ("train", "validation", "test")}
  bundle = data.make_data(_labeled_config(tmp_path, files), seed=0)
  assert bundle.info.label_names == ("neg", "pos") and bundle.info.label_type == "class"
  batch = next(bundle.train_iterator)
  assert batch["input_ids"].shape == (4, 16) and batch["label"].dtype == np.int32
  assert (batch["token_type_ids"].max(1) == 1).all()  # the second text is segment 1
  batches = list(bundle.eval_batches("validation"))
  assert len(batches) == 2 and all(b["input_ids"].shape == (8, 16) for b in batches)
  labels = np.concatenate([b["label"][b["valid"]] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(11) % 2)  # every example once, in order


JSONL_ERRORS = [
    ([{"text": "a", "label": 1}, {"txt": "b", "label": 0}], ":2: no 'text' string field"),
    ([{"text": "a", "label": 1}, "{not json"], ":2: not valid JSON"),
    ([{"text": "a"}], ":1: no 'label' field"),
    (["[1, 2]"], ":1: expected a JSON object"),
    ([{"text": "a", "text_b": "x", "label": 1}, {"text": "b", "label": 0}],
     ":2: 'text_b' must be on every line or on none"),
]


@pytest.mark.parametrize("rows,message", JSONL_ERRORS)
def test_jsonl_errors_name_file_and_line(tmp_path, rows, message):
  path = _jsonl(tmp_path / "train.jsonl", rows)
  with pytest.raises(DataError) as e:
    data.make_data(_labeled_config(tmp_path, {"train": path}), seed=0)
  assert str(e.value).startswith(path + message) and "\n" not in str(e.value)


def test_jsonl_missing_file_unknown_label_and_bad_fraction(tmp_path):
  train = _jsonl(tmp_path / "t.jsonl",
                 [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}])
  other = _jsonl(tmp_path / "v.jsonl", [{"text": "a", "label": "meh"}])
  with pytest.raises(DataError, match="config.data.files.train: no file"):
    data.make_data(_labeled_config(tmp_path, {"train": str(tmp_path / "x")}), seed=0)
  bundle = data.make_data(_labeled_config(tmp_path, {"train": train, "validation": other}), 0)
  with pytest.raises(DataError, match=r"v.jsonl: example 1: label 'meh' is not one of the "
                                      r"classes \['neg', 'pos'\]"):
    next(bundle.eval_batches("validation"))
  with pytest.raises(ConfigError, match="config.data.files.test: no JSONL file"):
    next(bundle.eval_batches("test"))
  regression = _jsonl(tmp_path / "r.jsonl", [{"text": "a", "label": 0.5}])
  with pytest.raises(ConfigError, match="config.data.label_fraction=0.5: needs class labels"):
    data.make_data(_labeled_config(tmp_path, {"train": regression}, label_fraction=0.5), 0)


def test_shipped_sentiment_examples():
  for split, n in {"train": 400, "validation": 150, "test": 400}.items():
    texts, pairs, labels = text.read_jsonl(text.example_path("sentiment", split),
                                           ("text", "text_b"), "label", "k")
    assert len(texts) == n and pairs is None and set(labels) == {"negative", "positive"}
    assert 0.4 < np.mean(np.array(labels) == "positive") < 0.6


def test_missing_tfds_text_dataset_fails_at_once(tmp_path):
  c = text.default_config()
  c.update(dict(source="tfds", dataset="glue/sst2", format="labeled",
                data_dir=str(tmp_path / "empty")))
  c.tokenizer.vocab_size = 600
  start = time.monotonic()
  with pytest.raises(DataError) as e:
    data.make_data(c, seed=0)
  assert time.monotonic() - start < 10
  assert f"dataset 'glue/sst2' not found in data_dir '{tmp_path / 'empty'}'" in str(e.value)
  assert not os.path.exists(tmp_path / "empty" / "glue")  # nothing was downloaded


def test_tfds_corpus_with_mock_data(tmp_path):
  c = text.pretraining_config(format="packed", seq_len=32, batch_size=4, vocab_size=600,
                              dataset="lm1b", data_dir=str(tmp_path))
  with tfds.testing.mock_data(num_examples=12):
    bundle = data.make_data(c, seed=0)
    batch = next(bundle.train_iterator)
    rows = sum(int(b["valid"].sum()) for b in bundle.eval_batches("validation"))
  assert batch["input_ids"].shape == (4, 32) and (batch["segment_ids"] > 0).any()
  assert rows >= 1


def test_labels_per_class_on_jsonl(tmp_path):
  rows = [{"text": f"doc {i} {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
          for i in range(20)]
  path = _jsonl(tmp_path / "train.jsonl", rows)
  config = _labeled_config(tmp_path, {"train": path}, labels_per_class=3)
  config.batch_size = 12  # the 6 kept examples, each twice
  config.tokenizer.train_files = (path,)  # every document's words in the vocabulary
  batch = next(data.make_data(config, 0).train_iterator)
  assert sorted(collections.Counter(batch["label"].tolist()).values()) == [6, 6]
  assert len({tuple(row) for row in batch["input_ids"].tolist()}) == 6
