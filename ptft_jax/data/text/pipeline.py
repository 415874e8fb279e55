"""Text data for the train loop: `text_data(config.data, seed)` -> DataBundle (`data.kind="text"`).

Formats (`config.data.format`):
  sentence_pairs  BERT pretraining: [CLS] A [SEP] B [SEP] from real documents,
                  with a next-sentence label when `config.data.nsp`.
  packed          causal-LM (or RoBERTa-style MLM) pretraining: documents +
                  [SEP] packed first-fit into rows of `seq_len` with
                  `segment_ids` (0 = padding), so nothing attends across documents.
  labeled         fine-tuning: [CLS] text [SEP] (text_b [SEP]) with a class id
                  or a float target in `label`.
  sft             instruction tuning: JSONL prompts / responses or chats, tokenized by
                  a Hugging Face tokenizer (`tokenizer.path`), packed first-fit with
                  `segment_ids`, `positions` and a `loss_mask` on the response tokens
                  (see sft.py; `sft_config` builds the config).

`tokenizer.path` (a Hugging Face model directory or tokenizer.json; only in configs
that set it, see `sft_config` and `pretraining_config`) replaces the WordPiece
vocabulary for `packed` (documents end with eos) and `sft`.

Train iterators are Grain DatasetIterators (saved in the run's checkpoint):
pretraining examples are a pure function of (seed, position) through
`random_map`; labeled examples are tokenized once and gathered in batches.
Eval passes cover their split once, in order, padded with `valid=False` rows.
Pretraining eval sets are fixed: sentence pairs walk each document of the split
in order (fixed NSP draws), packed rows hold every token of the split; both
stop at `config.data.max_eval_examples` rows.
"""

import dataclasses
import functools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import grain.experimental as grain_exp
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ptft_jax.data import bundle, pipeline
from ptft_jax.data.sources import default_data_dir
from ptft_jax.data.subset import stratified_subset
from ptft_jax.data.text import buckets as length_buckets
from ptft_jax.data.text import examples, labels, sft, sources
from ptft_jax.data.text.hf_tokenizer import load_hf_tokenizer
from ptft_jax.data.text.tokenizer import Vocab, hf_vocab, make_tokenizer
from ptft_jax.errors import ConfigError, DataError

FORMATS = ("sentence_pairs", "packed", "labeled", "sft")
SOURCES = ("corpus", "tfds", "jsonl")
_EVAL_SEED = 20260102  # fixed: the pretraining eval sets never depend on the run seed


def default_config() -> ml_collections.ConfigDict:
  """`config.data` for text; configs override what they need."""
  return ml_collections.ConfigDict(dict(
      kind="text",
      source="corpus",  # corpus | tfds | jsonl
      dataset="ptft_corpus",  # the TFDS name for source=tfds; a label otherwise
      data_dir="",  # TFDS dir and vocab cache; "" -> $PTFT_DATA_DIR or ~/.cache/...
      corpus_files=(),  # corpus: .txt files or dirs; () = the shipped corpus
      files=dict(train="", validation="", test=""),  # jsonl: one file per split
      splits=dict(train="train", validation="validation", test="test"),  # tfds split names
      text_fields=(),  # tfds / jsonl text feature(s); () = ("text", "text_b") / known default
      label_field="label",
      label_type="auto",  # auto | class | float
      label_names=(),  # class order; () = sorted string labels or 0..k-1
      format="sentence_pairs",  # sentence_pairs | packed | labeled
      seq_len=128,
      nsp=True,  # sentence_pairs: next-sentence labels
      tokenizer=dict(vocab="", vocab_size=4096, lowercase=True, train_files=()),
      batch_size=32,
      eval_batch_size=64,
      max_eval_examples=2048,  # pretraining eval rows
      label_fraction=1.0,  # labeled: keep a stratified fraction of the train labels
      label_fraction_seed=0,
      labels_per_class=0,  # labeled: > 0 keeps exactly this many train examples per class
      # labeled: batches cut to the smallest of these lengths that holds their longest row
      # (seq_len is always the last); () pads every row to seq_len. See buckets.py.
      length_buckets=(),
      bucket_window=32,  # labeled + length_buckets: batches sorted by length together
  ))


def pretraining_config(
    *, format: str, seq_len: int, batch_size: int, vocab_size: int, dataset: str = "",
    data_dir: str = "", vocab: str = "", corpus: str = "", tokenizer: str = "",
) -> ml_collections.ConfigDict:
  """`config.data` for pretraining, as configs/bert.py and configs/gpt.py take it.

  Args:
    format: "sentence_pairs" or "packed".
    seq_len: tokens per row.
    batch_size: global train batch size.
    vocab_size: size of the vocabulary to train (ignored when `vocab` is given).
    dataset: a TFDS corpus ("lm1b": its test split is held out; others: train[:1%]);
      "" = the shipped corpus, or `corpus`.
    data_dir: TFDS data_dir.
    vocab: a vocab.txt; "" = train one on `corpus` (or the shipped corpus).
    corpus: local .txt file or directory.
    tokenizer: a Hugging Face model directory or tokenizer.json (`tokenizer.path`, only
      for "packed": continued pretraining of an imported decoder); "" = WordPiece.
  """
  c = default_config()
  c.format, c.seq_len, c.batch_size, c.data_dir = format, seq_len, batch_size, data_dir
  c.tokenizer.vocab, c.tokenizer.vocab_size = vocab, vocab_size
  if tokenizer:
    c.tokenizer.path = tokenizer
  if corpus:
    c.corpus_files = c.tokenizer.train_files = (corpus,)
  if dataset:
    c.source, c.dataset = "tfds", dataset
    held_out = "test" if dataset.startswith("lm1b") else "train[:1%]"
    c.splits = dict(train="train" if held_out == "test" else "train[1%:]",
                    validation=held_out, test=held_out)
  return c


def sft_config(*, train: str, validation: str = "", test: str = "", tokenizer: str,
               seq_len: int = 512, batch_size: int = 16, chat_template: str = "auto",
               dataset: str = "sft") -> ml_collections.ConfigDict:
  """`config.data` for instruction tuning (`format="sft"`), as configs/llm_sft.py builds it.

  Args:
    train, validation, test: JSONL files (or pkg:// names); "" = no such split. Without
      a validation file, `holdout` = 0.05 of the train examples is the validation split.
    tokenizer: a Hugging Face model directory or tokenizer.json (`tokenizer.path`).
    seq_len: tokens per packed row.
    batch_size: global train batch size (rows).
    chat_template: "auto", "none" or a template file (`config.data.chat_template`, sft.py).
    dataset: a label for reports.
  """
  c = default_config()
  c.source, c.format, c.dataset = "jsonl", "sft", dataset
  c.files = dict(train=train, validation=validation, test=test)
  c.seq_len, c.batch_size, c.eval_batch_size = seq_len, batch_size, batch_size
  c.tokenizer.path = tokenizer
  c.chat_template = chat_template
  c.holdout = 0.0 if validation else 0.05
  return c


@dataclasses.dataclass(frozen=True)
class TextInfo:
  """What text tasks and models need to know about the data.

  Attributes:
    name: dataset name (TFDS name, "ptft_corpus", or the JSONL dataset label).
    format: one of FORMATS.
    seq_len: tokens per row.
    vocab: the tokenizer's vocabulary and special ids.
    nsp: batches carry `next_sentence_label` (sentence_pairs).
    label_type: "class", "float" or "" (pretraining).
    label_names: class names ("class").
    lowercase: the tokenizer lowercases its input (prediction must too).
  """

  name: str
  format: str
  seq_len: int
  vocab: Vocab
  nsp: bool = False
  label_type: str = ""
  label_names: tuple[str, ...] = ()
  lowercase: bool = True

  @property
  def num_classes(self) -> int:
    return len(self.label_names)


class Columns:
  """Equal-length numpy columns as a random-access source with a batch `gather`."""

  def __init__(self, columns: dict[str, np.ndarray], name: str):
    self.columns = columns
    self._name = name

  def __len__(self) -> int:
    return len(next(iter(self.columns.values())))

  def gather(self, rows) -> dict[str, np.ndarray]:
    return {k: v[np.asarray(rows)] for k, v in self.columns.items()}

  def __repr__(self) -> str:
    return f"Columns({self._name}, n={len(self)})"


class _Tokenized:
  """Documents (lists of sentence strings) tokenized on access: for large TFDS corpora."""

  def __init__(self, docs: Sequence[list[str]], tokenizer):
    self._docs, self._tokenizer = docs, tokenizer

  def __len__(self) -> int:
    return len(self._docs)

  def __getitem__(self, index: int):
    doc = examples.tokenize_document(self._tokenizer, self._docs[index])
    return doc or [np.zeros(0, np.int32)]


def padded_batches(
    columns: dict[str, np.ndarray], global_batch_size: int, shard_index: int, shard_count: int,
) -> Iterator[dict[str, np.ndarray]]:
  """This process's contiguous rows of `columns`, batched and zero-padded with `valid`.

  Every process yields the same number of batches of the same shape.
  """
  batch_size = pipeline._per_process_batch(global_batch_size, shard_count)
  n = len(next(iter(columns.values())))
  rows = np.array_split(np.arange(n), shard_count)[shard_index]
  for k in range(math.ceil(math.ceil(n / shard_count) / batch_size)):
    chunk = rows[k * batch_size:(k + 1) * batch_size]
    valid = np.arange(batch_size) < len(chunk)
    picked = np.pad(chunk, (0, batch_size - len(chunk)))
    yield {name: np.where(valid.reshape((-1,) + (1,) * (v.ndim - 1)), v[picked], 0)
           for name, v in columns.items()} | {"valid": valid}


def _stack(rows: list[dict[str, np.ndarray]], what: str) -> dict[str, np.ndarray]:
  if not rows:
    raise DataError(f"{what} has no text to evaluate on")
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


# --- pretraining ------------------------------------------------------------------------


def _pair_example(index, rng, *, docs, seq_len, vocab, nsp):
  return examples.sentence_pair(docs, int(index), rng, seq_len=seq_len, vocab=vocab, nsp=nsp)[0]


def _piece(index, rng, *, docs, seq_len, end_id):
  return examples.random_piece(docs[int(index)], rng, max_len=seq_len, end_id=end_id)


def _pack(ds: grain.IterDataset, seq_len: int, bins: int, seed: int, shuffle: bool):
  packed = grain_exp.FirstFitPackIterDataset(
      ds, length_struct={"input_ids": seq_len}, num_packing_bins=bins, seed=seed,
      shuffle_bins=shuffle)
  return packed.map(examples.packed_row)


def pretraining_iterator(
    docs: Sequence, *, format: str, seq_len: int, vocab: Vocab, nsp: bool, seed: int,
    batch_size: int, shard_index: int = 0, shard_count: int = 1,
) -> grain.DatasetIterator:
  """Infinite batches of pretraining rows from `docs` (tokenized documents).

  Each epoch visits the documents in a fresh seeded order, one example per
  document visit (a random start for sentence pairs, a random window for
  documents longer than a packed row); document k of the global stream goes
  to process k % shard_count.
  """
  ds = grain.MapDataset.range(len(docs)).shuffle(seed=seed).repeat(None)
  ds = ds[shard_index::shard_count]
  if format == "sentence_pairs":
    make = functools.partial(_pair_example, docs=docs, seq_len=seq_len, vocab=vocab, nsp=nsp)
    it = ds.random_map(make, seed=seed).to_iter_dataset()
  else:
    make = functools.partial(_piece, docs=docs, seq_len=seq_len, end_id=vocab.sep_id)
    it = _pack(ds.random_map(make, seed=seed).to_iter_dataset(), seq_len, batch_size, seed, True)
  return iter(it.batch(batch_size, drop_remainder=True))


def pretraining_eval_set(
    docs: Sequence, *, format: str, seq_len: int, vocab: Vocab, nsp: bool, max_examples: int,
) -> dict[str, np.ndarray]:
  """The fixed eval rows of a split (see the module docstring): column -> [n, ...]."""
  rows = []
  if format == "sentence_pairs":
    rng = np.random.default_rng(_EVAL_SEED)
    for i in range(len(docs)):
      start, doc_len = 0, len(docs[i])
      while start < doc_len and len(rows) < max_examples:
        row, start = examples.sentence_pair(
            docs, i, rng, seq_len=seq_len, vocab=vocab, nsp=nsp, start=start)
        rows.append(row)
      if len(rows) >= max_examples:
        break
    return _stack(rows, "the eval split")
  pieces = []
  for i in range(len(docs)):
    tokens = examples.document_tokens(docs[i], vocab.sep_id)
    pieces += [{"input_ids": tokens[s:s + seq_len]} for s in range(0, len(tokens), seq_len)]
    if len(pieces) >= max_examples:
      break
  packed = _pack(grain.MapDataset.source(pieces).to_iter_dataset(), seq_len, 16, 0, False)
  return _stack(list(packed)[:max_examples], "the eval split")


def _documents(dc, split: str, tokenizer, corpus=None) -> Sequence:
  if dc.source == "corpus":
    docs = [examples.tokenize_document(tokenizer, d) for d in corpus[split]]
    return [d for d in docs if d]
  fields = sources.text_fields(dc.dataset, dc.text_fields)
  raw = sources.TfdsDocuments(dc.dataset, dc.splits.get(split, split),
                              dc.data_dir or default_data_dir(), fields[0])
  return _Tokenized(raw, tokenizer)


def _pretraining_data(dc, seed, tokenizer, vocab, shard_index, shard_count) -> bundle.DataBundle:
  nsp = dc.format == "sentence_pairs" and bool(dc.nsp)
  info = TextInfo(name=dc.dataset, format=dc.format, seq_len=int(dc.seq_len), vocab=vocab,
                  nsp=nsp, lowercase=bool(dc.tokenizer.lowercase))
  corpus = sources.read_corpus(dc.corpus_files) if dc.source == "corpus" else None
  train_docs = _documents(dc, "train", tokenizer, corpus)
  if nsp and len(train_docs) < 2:
    raise DataError(f"dataset {dc.dataset!r}: next-sentence prediction needs at least two "
                    "documents; add text or set config.data.nsp=False")
  common = dict(format=dc.format, seq_len=info.seq_len, vocab=vocab, nsp=nsp)
  train = pretraining_iterator(
      train_docs, seed=seed, shard_index=shard_index, shard_count=shard_count,
      batch_size=pipeline._per_process_batch(dc.batch_size, shard_count), **common)

  @functools.cache
  def eval_set(split: str) -> dict[str, np.ndarray]:
    docs = _documents(dc, split, tokenizer, corpus)
    return pretraining_eval_set(docs, max_examples=int(dc.max_eval_examples), **common)

  def eval_batches(split: str):
    return padded_batches(eval_set(split), dc.eval_batch_size, shard_index, shard_count)

  return bundle.DataBundle(info=info, train_iterator=train, eval_batches=eval_batches)


# --- labeled ----------------------------------------------------------------------------


def _read_labeled(dc, split: str) -> tuple[list[str], list[str] | None, list[Any], Any, str]:
  """(texts, second texts or None, raw labels, TFDS label feature or None, where)."""
  if dc.source == "jsonl":
    fields = tuple(dc.text_fields) or ("text", "text_b")
    path = dc.files.get(split, "")
    key = f"config.data.files.{split}"
    if not path:
      raise ConfigError(f"{key}: no JSONL file given for split {split!r}")
    return (*sources.read_jsonl(path, fields, dc.label_field, key), None, path)
  if dc.source != "tfds":
    raise ConfigError(f"config.data.source: format 'labeled' reads 'jsonl' or 'tfds', "
                      f"not {dc.source!r}")
  fields = sources.text_fields(dc.dataset, dc.text_fields)
  data_dir = dc.data_dir or default_data_dir()
  tfds_split = dc.splits.get(split, split)
  source, features = sources.open_tfds(dc.dataset, tfds_split, data_dir)
  for name in (*fields, dc.label_field):
    if name not in features:
      raise ConfigError(f"config.data.text_fields / label_field: dataset {dc.dataset!r} has "
                        f"no feature {name!r}; it has {sorted(features)}")
  records = [source[i] for i in range(len(source))]
  texts = [sources.as_text(r[fields[0]]) for r in records]
  pairs = [sources.as_text(r[fields[1]]) for r in records] if len(fields) > 1 else None
  raw = [np.asarray(r[dc.label_field]).item() for r in records]
  return texts, pairs, raw, features[dc.label_field], f"{dc.dataset}/{tfds_split}"


def _labeled_data(dc, seed, tokenizer, vocab, shard_index, shard_count) -> bundle.DataBundle:
  texts, pairs, raw, feature, where = _read_labeled(dc, "train")
  if feature is not None:
    is_class = isinstance(feature, tfds.features.ClassLabel)
    label_type = "class" if is_class else "float"
    names = list(feature.names) if is_class else []
  else:
    label_type = labels.resolve_label_type(dc.label_type, raw)
    names = labels.class_names(raw, dc.label_names) if label_type == "class" else []
  info = TextInfo(name=dc.dataset, format="labeled", seq_len=int(dc.seq_len), vocab=vocab,
                  label_type=label_type, label_names=tuple(names),
                  lowercase=bool(dc.tokenizer.lowercase))

  def encode(texts, pairs, raw, where) -> dict[str, np.ndarray]:
    columns = examples.encode_labeled(tokenizer, vocab, texts, pairs, info.seq_len)
    return columns | {"label": labels.encode_labels(raw, label_type, names, where)}

  train = Columns(encode(texts, pairs, raw, where), f"{dc.dataset}/train")
  fraction = float(dc.get("label_fraction", 1.0))
  per_class = int(dc.get("labels_per_class", 0))
  if fraction < 1.0 or per_class:
    if not 0 < fraction or label_type != "class" or per_class < 0 or (per_class and fraction < 1):
      both = f", labels_per_class={per_class}" if per_class else ""
      raise ConfigError(f"config.data.label_fraction={fraction}{both}: needs class labels, and "
                        "a fraction in (0, 1] or a count > 0 (not both)")
    keep = stratified_subset(train.columns["label"], fraction, dc.get("label_fraction_seed", 0),
                             per_class=per_class)
    train = Columns(train.gather(keep), f"{dc.dataset}/train[{per_class or fraction}]")
  batch_size = pipeline._per_process_batch(dc.batch_size, shard_count)
  buckets = length_buckets.resolve_buckets(dc.get("length_buckets", ()), info.seq_len)
  if buckets:
    train_it = length_buckets.bucketed_iterator(
        train.columns, buckets=buckets, seed=seed, batch_size=batch_size,
        shard_index=shard_index, shard_count=shard_count, window=int(dc.get("bucket_window", 32)))
  else:
    train_it = pipeline._in_memory_iterator(train, seed, batch_size, shard_index, shard_count)

  @functools.cache
  def eval_set(split: str) -> dict[str, np.ndarray]:
    texts, pairs, raw, _, where = _read_labeled(dc, split)
    return encode(texts, pairs, raw, where)

  def eval_batches(split: str):
    if buckets:
      return length_buckets.bucketed_eval_batches(
          eval_set(split), buckets=buckets, global_batch_size=dc.eval_batch_size,
          shard_index=shard_index, shard_count=shard_count)
    return padded_batches(eval_set(split), dc.eval_batch_size, shard_index, shard_count)

  return bundle.DataBundle(info=info, train_iterator=train_it, eval_batches=eval_batches)


# --- instruction tuning -----------------------------------------------------------------


def _say(line: str):
  if jax.process_index() == 0:
    print(line, flush=True)


def _sft_data(dc, seed, shard_index, shard_count) -> bundle.DataBundle:
  if dc.source != "jsonl":
    raise ConfigError(f"config.data.source: format 'sft' reads 'jsonl', not {dc.source!r}")
  path = dc.tokenizer.get("path", "")
  if not path:
    raise ConfigError("config.data.tokenizer.path: format 'sft' needs a Hugging Face "
                      "tokenizer (a model directory or its tokenizer.json)")
  tok = sft.with_template(load_hf_tokenizer(path), dc.get("chat_template", "auto"))
  seq_len = int(dc.seq_len)

  fraction = float(dc.get("holdout", 0.0))
  held_out = fraction > 0 and not dc.files.get("validation", "")

  def lines(split: str) -> list:
    key = f"config.data.files.{split}"
    if held_out and split in ("train", "validation"):
      train, validation = sft.holdout(
          sft.read_sft_jsonl(dc.files.train, "config.data.files.train"), fraction)
      return train if split == "train" else validation
    if not dc.files.get(split, ""):
      raise ConfigError(f"{key}: no JSONL file given for split {split!r}")
    return sft.read_sft_jsonl(dc.files[split], key)

  def read(split: str) -> list[dict[str, np.ndarray]]:
    encoded, stats = sft.encode_split(tok, lines(split), seq_len)
    what = f"{split} (held out: {fraction:g} of the train file)" if (
        split == "validation" and held_out) else split
    _say(stats.line(what, seq_len))
    return encoded

  info = TextInfo(name=dc.dataset, format="sft", seq_len=seq_len, vocab=hf_vocab(tok),
                  lowercase=False)
  train = sft.train_iterator(
      read("train"), seq_len=seq_len, seed=seed, shard_index=shard_index,
      shard_count=shard_count, batch_size=pipeline._per_process_batch(dc.batch_size, shard_count))

  @functools.cache
  def eval_set(split: str) -> dict[str, np.ndarray]:
    return sft.eval_rows(read(split), seq_len)

  def eval_batches(split: str):
    return padded_batches(eval_set(split), dc.eval_batch_size, shard_index, shard_count)

  return bundle.DataBundle(info=info, train_iterator=train, eval_batches=eval_batches)


def text_data(
    dc: ml_collections.ConfigDict, seed: int, *, shard_index: int | None = None,
    shard_count: int | None = None,
) -> bundle.DataBundle:
  """The DataBundle for text `config.data` (see `default_config` for the keys).

  Args:
    dc: the data config.
    seed: seeds the train order and the per-example randomness.
    shard_index: overrides `jax.process_index()` (with `shard_count`).
    shard_count: overrides `jax.process_count()` (with `shard_index`).
  """
  if dc.format not in FORMATS:
    raise ConfigError(f"config.data.format: {dc.format!r} is not one of {FORMATS}")
  if dc.source not in SOURCES:
    raise ConfigError(f"config.data.source: {dc.source!r} is not one of {SOURCES}")
  if dc.format not in ("labeled", "sft") and dc.source == "jsonl":
    raise ConfigError("config.data.source: 'jsonl' holds labeled text or instructions; use "
                      "config.data.format='labeled' or 'sft' (or source='corpus' for "
                      "pretraining)")
  if dc.tokenizer.get("path", "") and dc.format not in ("packed", "sft"):
    raise ConfigError(f"config.data.tokenizer.path: a Hugging Face tokenizer serves formats "
                      f"'packed' and 'sft', not {dc.format!r}")
  if dc.get("length_buckets", ()) and dc.format != "labeled":
    raise ConfigError(f"config.data.length_buckets: buckets serve format 'labeled' (packed "
                      f"rows are full already), not {dc.format!r}; set it to ()")
  shard_index, shard_count = pipeline._shard(shard_index, shard_count)
  if dc.format == "sft":
    return _sft_data(dc, seed, shard_index, shard_count)
  data_dir = dc.data_dir or default_data_dir()
  if dc.source == "tfds":  # a missing dataset fails before any vocabulary is trained
    sources.open_tfds(dc.dataset, dc.splits.get("train", "train"), data_dir)
  tokenizer, vocab = make_tokenizer(dc.tokenizer, sources.corpus_files(dc.corpus_files),
                                    data_dir)
  build = _labeled_data if dc.format == "labeled" else _pretraining_data
  return build(dc, seed, tokenizer, vocab, shard_index, shard_count)
