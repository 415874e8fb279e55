"""Text sources: local text files as documents, TFDS text datasets by name, JSONL labeled files.

Local text ("corpus"): documents are blocks separated by blank lines; a
block's lines are joined and split into sentences at `.`, `!` or `?` followed
by a capital letter. Each document goes to train / validation / test by a hash
of its text (80 / 10 / 10), so adding files never moves other documents.
Everything is read into memory (meant for corpora of a few hundred MB at most;
use a TFDS corpus beyond that).

TFDS ("tfds"): read from a prepared data_dir with `try_gcs=False`; nothing is
ever downloaded, and a missing dataset fails at once naming it and the dir.

JSONL ("jsonl"): one `{"text": ..., "label": ...}` object per line, optional
`"text_b"` for sentence pairs; train / validation / test files come from
`config.data.files`.
"""

import importlib
import os
import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from ptft_jax.data import sources as image_sources
from ptft_jax.errors import ConfigError, DataError

ASSETS = os.path.join(os.path.dirname(__file__), "assets")
CORPUS_FILE = os.path.join(ASSETS, "corpus", "python_reference.txt")
SPLITS = ("train", "validation", "test")
PKG = "pkg://"  # prefix of shipped files' names in configs (see resolve_path)
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]*[A-Z0-9])")

# TFDS modules that register text builders (tfds can't import them all without TensorFlow).
_TFDS_MODULES = {
    "glue": "glue", "super_glue": "super_glue", "imdb_reviews": "imdb", "lm1b": "lm1b",
    "wikipedia": "wikipedia", "c4": "c4", "tiny_shakespeare": "tiny_shakespeare",
    "ag_news_subset": "ag_news_subset", "yelp_polarity_reviews": "yelp_polarity",
}
# Default text features of known TFDS datasets.
TFDS_TEXT_FIELDS = {
    "glue/sst2": ("sentence",), "glue/cola": ("sentence",),
    "glue/mrpc": ("sentence1", "sentence2"), "glue/stsb": ("sentence1", "sentence2"),
    "glue/qqp": ("question1", "question2"), "glue/rte": ("sentence1", "sentence2"),
    "glue/qnli": ("question", "sentence"), "glue/wnli": ("sentence1", "sentence2"),
    "glue/mnli": ("premise", "hypothesis"), "imdb_reviews": ("text",), "lm1b": ("text",),
    "wikipedia": ("text",), "c4": ("text",), "tiny_shakespeare": ("text",),
    "ag_news_subset": ("description",), "yelp_polarity_reviews": ("text",),
}


def split_sentences(text: str) -> list[str]:
  """Sentences of one paragraph (whitespace normalized)."""
  text = " ".join(text.split())
  return [s for s in _SENTENCE_END.split(text) if s]


def split_documents(text: str) -> list[list[str]]:
  """Blank-line separated blocks of `text` -> documents (lists of sentences)."""
  blocks = re.split(r"\n\s*\n", text)
  return [s for s in (split_sentences(b) for b in blocks) if s]


def document_split(sentences: Sequence[str]) -> str:
  """The split ("train" / "validation" / "test") a document belongs to, from its text."""
  bucket = zlib.crc32("\n".join(sentences).encode()) % 100
  return "validation" if bucket < 10 else "test" if bucket < 20 else "train"


def _text_files(paths: Sequence[str]) -> list[str]:
  files = []
  for path in map(resolve_path, paths):
    if os.path.isdir(path):
      files += sorted(os.path.join(root, f) for root, _, names in os.walk(path)
                      for f in names if f.endswith(".txt"))
    elif os.path.isfile(path):
      files.append(path)
    else:
      raise DataError(f"config.data.corpus_files: no file or directory {path!r}")
  if not files:
    raise DataError(f"config.data.corpus_files: no .txt files in {list(paths)}")
  return files


def corpus_files(paths: Sequence[str]) -> list[str]:
  """The text files of `config.data.corpus_files` (the shipped corpus when empty)."""
  return _text_files(paths) if paths else [CORPUS_FILE]


def read_corpus(paths: Sequence[str]) -> dict[str, list[list[str]]]:
  """Local text files -> {split: documents}, each document a list of sentences."""
  out = {s: [] for s in SPLITS}
  for path in corpus_files(paths):
    for doc in split_documents(image_sources.read_user_text(path, "config.data.corpus_files")):
      out[document_split(doc)].append(doc)
  for split, docs in out.items():
    if not docs:
      raise DataError(f"config.data.corpus_files: the corpus has no {split} documents "
                      "(10% of the documents go to validation, 10% to test); add text")
  return out


# --- TFDS -----------------------------------------------------------------------------


def _tfds_builder(dataset: str, data_dir: str) -> tfds.core.DatasetBuilder:
  module = _TFDS_MODULES.get(dataset.split("/")[0].split(":")[0])
  if module:
    importlib.import_module(f"tensorflow_datasets.text.{module}")
  try:
    return tfds.builder(dataset, data_dir=data_dir, try_gcs=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise image_sources._not_found(dataset, data_dir) from e


def open_tfds(dataset: str, split: str, data_dir: str) -> tuple[Any, Any]:
  """(random-access source, features) of one split of a prepared TFDS dataset."""
  builder = _tfds_builder(dataset, data_dir)
  source = image_sources._as_data_source(builder, dataset, data_dir, split)
  if len(source) == 0:
    raise DataError(f"split {split!r} of dataset {dataset!r} in data_dir {data_dir!r} is empty")
  return source, builder.info.features


def as_text(value: Any) -> str:
  """A TFDS text feature (bytes when prepared, str under mock_data) -> str."""
  value = value.item() if isinstance(value, np.ndarray) else value
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def text_fields(dataset: str, fields: Sequence[str]) -> tuple[str, ...]:
  """`config.data.text_fields`, or the known default of a TFDS dataset."""
  if fields:
    return tuple(fields)
  if dataset in TFDS_TEXT_FIELDS:
    return TFDS_TEXT_FIELDS[dataset]
  raise ConfigError(f"config.data.text_fields: no default for dataset {dataset!r}; "
                    "name its text feature(s), e.g. ('text',) or ('sentence1', 'sentence2')")


class TfdsDocuments:
  """Random access to a TFDS text split as documents (lists of sentences).

  A record's text is split into paragraphs at newlines and those into
  sentences (a Wikipedia article is one document; an lm1b record, one sentence).
  """

  def __init__(self, dataset: str, split: str, data_dir: str, field: str):
    self._source, features = open_tfds(dataset, split, data_dir)
    if field not in features:
      raise ConfigError(f"config.data.text_fields: dataset {dataset!r} has no feature "
                        f"{field!r}; it has {sorted(features)}")
    self._field = field
    self._name = f"{dataset}/{split}"

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> list[str]:
    text = as_text(self._source[int(index)][self._field])
    return [s for line in text.split("\n") for s in split_sentences(line)]

  def __repr__(self) -> str:
    return f"TfdsDocuments({self._name}, n={len(self)})"


# --- JSONL -----------------------------------------------------------------------------


def read_jsonl(path: str, fields: Sequence[str], label_field: str, key: str):
  """Reads labeled lines: returns (texts [n], second texts [n] or None, raw labels [n]).

  Args:
    path: the file, or a shipped one's `pkg://` name (see `resolve_path`).
    fields: (text field,) or (text field, second text field); the second is
      optional per file but then must be on every line.
    label_field: the label's field name.
    key: the config key that named `path` (for error messages).
  """
  path = resolve_path(path)
  if not os.path.isfile(path):
    raise DataError(f"{key}: no file {path!r}")
  texts, pairs, labels = [], [], []
  example = '{"text": "...", "label": ...}'
  for n, obj in image_sources.user_jsonl_objects(path, key, example):
    where = f"{path}:{n}"
    if not isinstance(obj.get(fields[0]), str):
      raise DataError(f"{where}: no {fields[0]!r} string field (see config.data.text_fields)")
    if label_field not in obj:
      raise DataError(f"{where}: no {label_field!r} field (see config.data.label_field)")
    texts.append(obj[fields[0]])
    labels.append(obj[label_field])
    if len(fields) > 1:
      second = obj.get(fields[1])
      if second is not None and not isinstance(second, str):
        raise DataError(f"{where}: {fields[1]!r} must be a string")
      if texts[1:] and (second is None) != (pairs[-1] is None):
        raise DataError(f"{where}: {fields[1]!r} must be on every line or on none")
      pairs.append(second)
  if not texts:
    raise DataError(f"{key}: {path!r} has no examples")
  return texts, (pairs if pairs and pairs[0] is not None else None), labels


def example_name(name: str, split: str) -> str:
  """The package name of a shipped labeled file, e.g. "pkg://sentiment/train.jsonl".

  Configs hold this name, not a path, so a run's config.json stays valid when the venv
  moves; `resolve_path` finds the file at read time.
  """
  return f"{PKG}{name}/{split}.jsonl"


def example_path(name: str, split: str) -> str:
  """The file behind `example_name(name, split)` on this machine."""
  return resolve_path(example_name(name, split))


def resolve_path(path: str) -> str:
  """A file path as given, or the shipped file a `pkg://<path under assets>` name means."""
  if not path.startswith(PKG):
    return path
  rel = path[len(PKG):]
  parts = rel.split("/")
  if not rel or os.path.isabs(rel) or ".." in parts:
    raise DataError(f"{path!r}: a {PKG} name is a path under the shipped assets, like "
                    f"'{PKG}sentiment/train.jsonl'")
  return os.path.join(ASSETS, *parts)
