"""`<workdir>/labels.json`: what prediction needs to know about a run's data.

Written when training starts (class names, input format, tokenizer), read by
ptft_jax.inference to rebuild the task without reading any data.
"""

import json
import os
from typing import Any

import jax
import ml_collections

from ptft_jax.utils import write_json_atomic

LABELS_FILE = "labels.json"


def label_record(config: ml_collections.ConfigDict, info: Any) -> dict:
  """What prediction needs to know about the data: class names and the input format."""
  from ptft_jax.data.text import TextInfo

  if isinstance(info, TextInfo):
    return {"kind": "text", "dataset": info.name, "format": info.format,
            "label_type": info.label_type, "label_names": list(info.label_names),
            "seq_len": info.seq_len, "vocab": info.vocab.path,
            "lowercase": bool(config.data.tokenizer.get("lowercase", True))}
  return {"kind": "image", "dataset": info.name, "label_type": "class",
          "label_names": [str(n) for n in getattr(info, "label_names", ())],
          "image_shape": [int(d) for d in info.image_shape]}


def write_labels_json(workdir: str, config: ml_collections.ConfigDict, info: Any) -> None:
  """Writes `<workdir>/labels.json` (process 0, atomically) so outputs speak in names."""
  if jax.process_index() == 0:
    write_json_atomic(os.path.join(workdir, LABELS_FILE), label_record(config, info))


def read_labels_json(workdir: str) -> dict | None:
  """The record `write_labels_json` wrote, or None when the run has none."""
  path = os.path.join(workdir, LABELS_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def info_from_record(record: dict) -> Any:
  """The dataset info `tasks.build_task` needs, from labels.json (no data is read)."""
  if record["kind"] == "text":
    from ptft_jax.data.text import TextInfo, load_tokenizer

    _, vocab = load_tokenizer(record["vocab"], bool(record["lowercase"]))
    return TextInfo(name=record["dataset"], format=record["format"], seq_len=record["seq_len"],
                    vocab=vocab, nsp=False, label_type=record["label_type"],
                    label_names=tuple(record["label_names"]))
  from ptft_jax.data.sources import DatasetInfo

  names = list(record["label_names"])
  return DatasetInfo(name=record["dataset"], image_shape=tuple(record["image_shape"]),
                     num_classes=len(names), label_names=names, splits={})
