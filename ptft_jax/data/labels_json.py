"""`<workdir>/labels.json`: what prediction needs to know about a run's data.

Written when training starts (class names, input format, tokenizer, an image run's
preprocessing -- also as `<workdir>/preprocessing.json`), read by
ptft_jax.inference to rebuild the task without reading any data. A run directory is
self-contained: a text run's vocabulary is copied to `<workdir>/vocab.txt` and
labels.json names it relative to the workdir, so the run can move, and the data dir
(the vocabulary cache) can go. Runs written before that hold an absolute path; it is
used as it is.
"""

import json
import os
from typing import Any

import jax
import ml_collections

from ptft_jax.data import preprocessing
from ptft_jax.data.sources import read_user_text
from ptft_jax.errors import DataError
from ptft_jax.utils import absolute_path, copy_file_atomic, is_file, write_json_atomic

LABELS_FILE = "labels.json"
VOCAB_FILE = "vocab.txt"  # a text run's vocabulary, copied into the workdir
# A Hugging Face tokenizer is copied with the files that give its special tokens and chat
# template (generation reads them from the run); config.json is the run's own, never copied.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "chat_template.jinja", "generation_config.json")


def label_record(config: ml_collections.ConfigDict, info: Any) -> dict:
  """What prediction needs to know about the data: class names and the input format.

  A text run's "vocab" is `VOCAB_FILE` (or `tokenizer.json` for a Hugging Face
  tokenizer), relative to the workdir (see `write_labels_json`).
  """
  from ptft_jax.data.text import TextInfo

  if isinstance(info, TextInfo):
    return {"kind": "text", "dataset": info.name, "format": info.format,
            "label_type": info.label_type, "label_names": list(info.label_names),
            "seq_len": info.seq_len, "vocab": _copy_name(info.vocab.path),
            "lowercase": bool(config.data.tokenizer.get("lowercase", True))}
  record = {"kind": "image", "dataset": info.name, "label_type": "class",
            "label_names": [str(n) for n in getattr(info, "label_names", ())],
            "image_shape": [int(d) for d in info.image_shape]}
  prep = getattr(info, "preprocessing", None)
  if prep is not None:  # what evaluation and prediction apply (mean/std, resize/crop)
    record["preprocessing"] = prep.record()
  return record


def write_labels_json(workdir: str, config: ml_collections.ConfigDict, info: Any) -> None:
  """Writes `<workdir>/labels.json` (process 0, atomically) so outputs speak in names.

  A text run's vocabulary is copied to `<workdir>/vocab.txt` first (atomically), so
  predictions never depend on the data dir or the path the vocabulary came from; a
  Hugging Face tokenizer's `tokenizer.json` with its side files (`HF_TOKENIZER_FILES`).
  """
  if jax.process_index() != 0:
    return
  vocab = getattr(info, "vocab", None)
  if vocab is not None:
    name = _copy_name(vocab.path)
    folder = os.path.dirname(os.path.abspath(vocab.path))
    names = HF_TOKENIZER_FILES if name != VOCAB_FILE else ()
    _copy_atomic(vocab.path, os.path.join(workdir, name))
    for side in names[1:]:
      if is_file(os.path.join(folder, side)):
        _copy_atomic(os.path.join(folder, side), os.path.join(workdir, side))
  if getattr(info, "preprocessing", None) is not None:
    # The run's own record: resuming and later stages use it without the pretrained workdir.
    preprocessing.write_preprocessing(workdir, config, info.preprocessing)
  write_json_atomic(os.path.join(workdir, LABELS_FILE), label_record(config, info))


def _copy_name(vocab_path: str) -> str:
  """The name a run's vocabulary gets in its workdir."""
  hf = os.path.basename(vocab_path) == HF_TOKENIZER_FILES[0]
  return HF_TOKENIZER_FILES[0] if hf else VOCAB_FILE


def _copy_atomic(source: str, target: str) -> None:
  if absolute_path(source) != absolute_path(target):
    copy_file_atomic(source, target)


def read_labels_json(workdir: str) -> dict | None:
  """The record `write_labels_json` wrote, or None when the run has none."""
  path = os.path.join(workdir, LABELS_FILE)
  if not is_file(path):
    return None
  try:
    return json.loads(read_user_text(path, LABELS_FILE))
  except ValueError as e:
    raise DataError(f"{path}: unreadable ({e}); it is written when training starts: "
                    "restore it from the run") from None


def info_from_record(record: dict, workdir: str = "") -> Any:
  """The dataset info `tasks.build_task` needs, from labels.json (no data is read).

  A relative "vocab" is taken from `workdir`; an absolute one (runs written before
  the vocabulary was copied into the workdir) as it is.
  """
  if record["kind"] == "text":
    from ptft_jax.data.text import TextInfo, load_tokenizer

    path = os.path.join(workdir, record["vocab"])
    if os.path.basename(path) == HF_TOKENIZER_FILES[0]:
      from ptft_jax.data.text import hf_vocab, load_hf_tokenizer

      vocab = hf_vocab(load_hf_tokenizer(path, LABELS_FILE))
    else:
      _, vocab = load_tokenizer(path, bool(record["lowercase"]))
    return TextInfo(name=record["dataset"], format=record["format"], seq_len=record["seq_len"],
                    vocab=vocab, nsp=False, label_type=record["label_type"],
                    label_names=tuple(record["label_names"]),
                    lowercase=bool(record["lowercase"]))
  from ptft_jax.data.sources import DatasetInfo

  names = list(record["label_names"])
  return DatasetInfo(name=record["dataset"], image_shape=tuple(record["image_shape"]),
                     num_classes=len(names), label_names=names, splits={},
                     preprocessing=preprocessing.from_record(record.get("preprocessing")))
