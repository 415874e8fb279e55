"""Using a fine-tuned run: rebuild its model from the workdir, load a checkpoint, predict.

A workdir knows how to rebuild itself: `config.json` (the config that ran)
gives the model and the task, `labels.json` (written when training starts)
gives the class names and the input format, and `checkpoints/` (or `best/`)
the weights. Nothing here trains or writes into the workdir.

  predictor = pj.load_predictor("runs/digits", checkpoint="latest")
  out = predictor.predict(images)          # float32 [n, h, w, c] in [0, 1]
  out.labels, out.probabilities            # ["3", ...], float32 [n, num_classes]

Image runs normalize inside the compiled forward exactly as their evaluation did (the
task's `inputs(..., train=False)`: the mean/std of labels.json's "preprocessing", which
came from the pretrained workdir). The predict CLI decodes image files with the run's
resize / centre crop (image-folder runs, `data.image_folder.decode_image`), or resizes
them to its image shape.

Text runs take strings (or (text, text_b) pairs / {"text", "text_b"} dicts),
tokenized and truncated exactly as the run's evaluation did (the same
`examples.tokenize_labeled`, the run's `seq_len`, lowercasing and vocabulary), so
the same inputs give the same probabilities. Shapes are fixed so that `jax.jit`
compiles once per shape it sees: every batch has `batch_size` rows (zero-padded)
and texts are padded to the smallest length bucket that holds them (32, 64, 128,
... up to the run's `seq_len`); longer texts are truncated and counted.
"""

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ptft_jax import tasks
from ptft_jax.config.workdir import CONFIG_FILE
from ptft_jax.data import labels_json
from ptft_jax.data.sources import read_user_text
from ptft_jax.errors import ConfigError, DataError
from ptft_jax.models import build_model
from ptft_jax.optim import lora, precision
from ptft_jax.parallel import sharding
from ptft_jax.train import checkpoint as ckpt
from ptft_jax.train import placement
from ptft_jax.utils import absolute_path, is_file

log = logging.getLogger("ptft_jax")

MIN_BUCKET = 32


# --- the run in a workdir ----------------------------------------------------------------


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in `<workdir>/config.json`."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not is_file(path):
    raise ConfigError(f"--workdir {workdir}: no {CONFIG_FILE} (not a ptft_jax run; for a staged "
                      "config, name one stage's directory, e.g. RUN/<stage>)")
  try:
    return ml_collections.ConfigDict(json.loads(read_user_text(path, "--workdir")))
  except ValueError as e:
    raise ConfigError(f"{path}: unreadable ({e}); it records the run: restore it") from None


@dataclasses.dataclass
class Run:
  """A run rebuilt from its workdir: model, task and the loaded variables."""

  config: ml_collections.ConfigDict
  info: Any
  task: Any
  model: Any
  variables: dict  # {"params": ..., **model_state}, LoRA adapters merged
  step: int
  tag: str  # "" or "best_"


def load_run(workdir: str, which: str | int = "latest", *, sharding_=None,
             info: Any = None) -> Run:
  """Rebuilds the model and task of `workdir` and loads checkpoint `which` onto `sharding_`.

  `sharding_` as in `checkpoint.load_params`: a Layout (each leaf read straight
  into its sharding by the rules), one Sharding, or None (the first local device).

  `info` (the dataset info) defaults to the one in `labels.json`; runs older
  than labels.json rebuild it from their data config.
  """
  workdir = absolute_path(workdir)  # a gs:// run as it is
  config = read_config(workdir)
  if "stages" in config:
    raise ConfigError(f"--workdir {workdir} holds a staged run; name one stage's directory, "
                      f"one of {sorted(config.stages)}")
  where, step, tag = ckpt.resolve_checkpoint(workdir, which)
  if info is None:
    record = labels_json.read_labels_json(workdir)
    if record is None:
      from ptft_jax import data

      info = data.make_data(config.data, seed=config.seed,
                            preprocessing=data.resolve_preprocessing(config, workdir)).info
    else:
      info = labels_json.info_from_record(record, workdir)
  task, heads = tasks.build_task(config, info, check_keys=False)  # rebuilt as it trained
  model = build_model(precision.model_config(config), heads)
  loaded, _ = ckpt.load_params(where, step=step, sharding=sharding_)
  params = lora.merge_loaded(loaded["params"], workdir)
  if not tag and float(config.optim.get("ema_decay", 0.0)) > 0:
    log.warning("%s trained with EMA (config.optim.ema_decay); its latest checkpoint holds the "
                "raw weights, --checkpoint=best holds the EMA ones", workdir)
  return Run(config=config, info=info, task=task, model=model,
             variables={"params": params, **loaded["model_state"]}, step=step, tag=tag)


# --- prediction -------------------------------------------------------------------------


def length_buckets(max_len: int, smallest: int = MIN_BUCKET) -> tuple[int, ...]:
  """(32, 64, 128, ..., max_len): the padded lengths texts are compiled for."""
  out, n = [], smallest
  while n < max_len:
    out.append(n)
    n *= 2
  return tuple(out) + (max_len,)


@dataclasses.dataclass
class Predictions:
  """What `Predictor.predict` returns, rows in input order.

  Attributes:
    label_names: class names (classification) or () (regression).
    probabilities: float32 [n, num_classes] (classification) or None.
    values: float32 [n] regression outputs, or None.
    truncated: how many texts were longer than the model takes.
  """

  label_names: tuple[str, ...]
  probabilities: np.ndarray | None = None
  values: np.ndarray | None = None
  truncated: int = 0

  def __len__(self) -> int:
    return len(self.values if self.probabilities is None else self.probabilities)

  @property
  def labels(self) -> list[str]:
    """The predicted class name per row (classification)."""
    return [self.label_names[i] for i in np.argmax(self.probabilities, axis=-1)]

  def row(self, i: int) -> dict:
    """Row `i` as JSON: {"label", "probabilities": {name: p}} or {"value"}."""
    if self.probabilities is None:
      return {"value": float(self.values[i])}
    p = self.probabilities[i]
    return {"label": self.label_names[int(np.argmax(p))],
            "probabilities": {n: round(float(v), 6) for n, v in zip(self.label_names, p,
                                                                   strict=True)}}


class Predictor:
  """Batched, sharded prediction with a fine-tuned run (see the module docstring).

  Attributes:
    run: the rebuilt run (config, info, task, model, variables, step).
    batch_size: rows per compiled batch (a multiple of the local devices).
    buckets: padded text lengths (text runs).
    traces: how often the forward function was traced, i.e. compiled.
  """

  def __init__(self, run: Run, mesh, *, batch_size: int | None = None,
               max_length: int | None = None):
    self.run, self.mesh = run, mesh
    task = run.task
    if not (hasattr(task, "num_classes") or task.kind == "text_regression"):
      raise ConfigError(f"config.task.name={run.config.task.name!r}: prediction needs a "
                        "classification or regression run (a fine-tuned one)")
    self.classify = hasattr(task, "num_classes")
    self.label_names = tuple(getattr(run.info, "label_names", ())) if self.classify else ()
    if self.classify and len(self.label_names) != task.num_classes:
      self.label_names = tuple(str(i) for i in range(task.num_classes))
    div = sharding.batch_divisor(mesh)
    size = batch_size or int(run.config.data.get("eval_batch_size", 64))
    self.batch_size = math.ceil(size / div) * div
    self.text = hasattr(run.info, "vocab")
    self.buckets: tuple[int, ...] = ()
    if self.text:
      from ptft_jax.data.text import load_tokenizer

      # The run's seq_len, not the model's max_position_embeddings: evaluation
      # truncated there, and predictions must see what evaluation saw.
      limit = int(run.info.seq_len)
      self.max_length = min(int(max_length or limit), limit)
      self.buckets = length_buckets(self.max_length)
      self.tokenizer, self.vocab = load_tokenizer(run.info.vocab.path,
                                                  bool(getattr(run.info, "lowercase", True)))
    self.traces = 0
    self._dtype = precision.compute_dtype(run.config)
    # Traced with the mesh in context: a scanned stack pins its activations to the batch
    # split (sharding.constrain_batch) instead of letting fsdp split them like weights.
    self._forward = jax.jit(sharding.traced_in(mesh, self._apply))
    self._in_sharding = sharding.batch_sharding(mesh)

  def _apply(self, variables: dict, batch: dict) -> jax.Array:
    self.traces += 1  # runs only while tracing: counts compilations
    if not self.text:  # what evaluation feeds the model: e.g. the mean/std normalization
      batch = self.run.task.inputs(batch, jax.random.PRNGKey(0), False)
    variables = precision.cast_floating(variables, self._dtype)
    out = self.run.model.apply(variables, precision.cast_floating(batch, self._dtype),
                               train=False, heads=(self.run.task.head_name,))
    out = out[self.run.task.head_name].astype(jnp.float32)
    return jax.nn.softmax(out, axis=-1) if self.classify else out[:, 0]

  def _batched(self, columns: dict[str, np.ndarray], bar=None) -> np.ndarray:
    """Runs rows of `columns` through the model in fixed-size, zero-padded batches."""
    n = len(next(iter(columns.values())))
    outs = []
    for start in range(0, n, self.batch_size):
      chunk = {k: v[start:start + self.batch_size] for k, v in columns.items()}
      rows = len(next(iter(chunk.values())))
      padded = {k: np.concatenate([v, np.zeros((self.batch_size - rows, *v.shape[1:]), v.dtype)])
                for k, v in chunk.items()}
      batch = jax.device_put(padded, self._in_sharding)
      outs.append(np.asarray(self._forward(self.run.variables, batch))[:rows])
      if bar is not None:
        bar.update(rows)
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)

  def encode_texts(self, texts: Sequence[str], pairs: Sequence[str | None] | None = None):
    """Texts -> ([(row indices, columns int32 [m, bucket])], number truncated).

    Tokens as evaluation makes them (`examples.tokenize_labeled` at `max_length`, the
    run's seq_len), padded to each text's bucket instead of to seq_len.
    """
    from ptft_jax.data.text import examples

    encodings, truncated = examples.tokenize_labeled(self.tokenizer, texts, pairs,
                                                     self.max_length)
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(encodings):
      groups.setdefault(next(b for b in self.buckets if b >= len(e.ids)), []).append(i)
    return [(np.asarray(rows), examples.pad_encodings([encodings[i] for i in rows], bucket,
                                                      self.vocab.pad_id))
            for bucket, rows in sorted(groups.items())], truncated

  def predict(self, inputs, *, progress: bool = False) -> Predictions:
    """Predictions for `inputs`, in order.

    Args:
      inputs: image runs: float [n, h, w, c] in [0, 1] (integer arrays are
        scaled by their dtype's maximum, as in training); text runs: strings,
        (text, text_b) pairs or {"text", "text_b"} dicts.
      progress: show a progress bar (tqdm, on stderr).
    """
    from tqdm import tqdm

    n = len(inputs)
    bar = tqdm(total=n, unit="ex", disable=not progress, leave=False)
    truncated = 0
    try:
      if self.text:
        texts, pairs = _split_texts(inputs)
        encoded, truncated = self.encode_texts(texts, pairs)
        out = None
        for rows, columns in encoded:
          part = self._batched(columns, bar)
          if out is None:
            out = np.zeros((n, *part.shape[1:]), np.float32)
          out[rows] = part
        if out is None:
          out = np.zeros((0, len(self.label_names)) if self.classify else (0,), np.float32)
      else:
        out = self._batched({"image": self.check_images(inputs)}, bar)
    finally:
      bar.close()
    if truncated:
      log.warning("%d of %d texts were longer than %d tokens and were truncated",
                  truncated, n, self.max_length)
    if self.classify:
      out = out.reshape(n, len(self.label_names))
      return Predictions(self.label_names, probabilities=out, truncated=truncated)
    return Predictions((), values=out.reshape(n), truncated=truncated)

  def check_images(self, images) -> np.ndarray:
    """float32 [n, h, w, c] in [0, 1] of the run's image shape (DataError otherwise)."""
    images = np.asarray(images)
    shape, given = tuple(self.run.info.image_shape), images.shape[1:]
    if images.ndim == 3 and shape[-1] == 1:
      images = images[..., None]
    if images.shape[1:] != shape:
      raise DataError(f"images of shape {given} per example; this run takes {shape} "
                      "([height, width, channels])")
    return to_unit_range(images)


def to_unit_range(images: np.ndarray) -> np.ndarray:
  """Integer pixels / the dtype's maximum, floats as they are (ptft_jax/data/transforms.py)."""
  scale = np.iinfo(images.dtype).max if np.issubdtype(images.dtype, np.integer) else 1
  return images.astype(np.float32) / np.float32(scale)


def _split_texts(inputs) -> tuple[list[str], list[str | None] | None]:
  texts, pairs = [], []
  for i, x in enumerate(inputs):
    if isinstance(x, str):
      t, p = x, None
    elif isinstance(x, dict):
      t, p = x.get("text"), x.get("text_b")
    elif isinstance(x, (tuple, list)) and len(x) == 2:
      t, p = x
    else:
      t, p = None, None
    if not isinstance(t, str) or not (p is None or isinstance(p, str)):
      raise DataError(f"input {i}: expected a string, a (text, text_b) pair or a "
                      f'{{"text": ...}} dict, got {type(x).__name__}')
    texts.append(t)
    pairs.append(p)
  return texts, (pairs if any(p is not None for p in pairs) else None)


def load_predictor(workdir: str, checkpoint: str | int = "latest", *,
                   batch_size: int | None = None, max_length: int | None = None,
                   mesh=None) -> Predictor:
  """A `Predictor` for the run in `workdir` at `checkpoint` (latest | best | a step).

  Uses every local device (batches are split over them). `max_length` caps
  the text length below the run's `seq_len` (the default; a lower cap makes
  predictions differ from the run's evaluation on longer texts). `mesh`
  (default: all local devices on the data axis) places the params by the run's
  sharding rules, e.g. `make_mesh({"fsdp": 8})` splits a model that does not
  fit on one device; batches are split over its data x fsdp devices.
  """
  if mesh is None:
    mesh = sharding.make_mesh({"data": -1}, devices=jax.local_devices())
  layout = placement.layout(mesh, config=read_config(absolute_path(workdir)))
  run = load_run(workdir, checkpoint, sharding_=layout)
  return Predictor(run, mesh, batch_size=batch_size, max_length=max_length)
