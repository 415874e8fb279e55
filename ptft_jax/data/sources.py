"""Opens TFDS image-classification splits as random-access sources.

Every dataset is read with `builder.as_data_source` (array_record files, no
TensorFlow). Only embedded datasets (`digits`) are prepared automatically;
anything else must already be in the data_dir, and nothing is ever downloaded.

Also the one reader of users' text files (`read_user_text`, `user_text_lines`): bytes
that are not UTF-8 become a one-line DataError naming the file and the line.
"""

import dataclasses
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from ptft_jax.data import embedded
from ptft_jax.errors import DataError
from ptft_jax.utils import read_bytes

DATA_DIR_ENV = "PTFT_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model needs to know about an image-classification dataset.

  Attributes:
    name: TFDS name, e.g. "digits" or "cifar10".
    image_shape: (height, width, channels).
    num_classes: number of labels.
    label_names: one name per label id.
    splits: split name -> number of examples.
    preprocessing: a `data.preprocessing.Preprocessing` (mean/std the task normalizes with,
      an image folder's resize / crop), or None (pixels in [0, 1] as stored).
  """

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  label_names: list[str]
  splits: dict[str, int]
  preprocessing: Any = None


def default_data_dir() -> str:
  """`$PTFT_DATA_DIR` if set, else `~/.cache/ptft_jax/datasets`."""
  return os.environ.get(DATA_DIR_ENV) or os.path.expanduser("~/.cache/ptft_jax/datasets")


def _not_found(dataset: str, data_dir: str) -> DataError:
  path = os.path.join(data_dir, dataset.split(":")[0])
  return DataError(
      f"dataset {dataset!r} not found in data_dir {data_dir!r} (looked for {path}); "
      f"prepare it with tfds build {dataset} --data_dir={data_dir} "
      "or set config.data.data_dir")


def _builder(dataset: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """Returns the builder for `dataset`, preparing embedded datasets first."""
  if embedded.is_embedded(dataset):
    embedded.prepare(dataset, data_dir)
  try:
    builder = tfds.builder(dataset, data_dir=data_dir, try_gcs=False)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise _not_found(dataset, data_dir) from e
  features = builder.info.features
  names = features.keys() if isinstance(features, tfds.features.FeaturesDict) else ()
  image = features["image"] if "image" in names else None
  label = features["label"] if "label" in names else None
  if not isinstance(image, tfds.features.Image) or None in image.shape:
    raise DataError(f"dataset {dataset!r} has no fixed-shape 'image' feature; "
                    "only image classification datasets are supported")
  if not isinstance(label, tfds.features.ClassLabel):
    raise DataError(f"dataset {dataset!r} has no ClassLabel 'label' feature; "
                    "only image classification datasets are supported")
  return builder


def _as_data_source(builder, dataset: str, data_dir: str, split: str | None, decoders=None):
  """`builder.as_data_source` with failures translated into one-line DataErrors."""
  try:
    return builder.as_data_source(split=split, decoders=decoders)
  except Exception as e:
    # Diagnose only after the attempt: under `tfds.testing.mock_data` the
    # builder is not prepared yet reading works.
    if not builder.is_prepared():
      raise _not_found(dataset, data_dir) from e
    file_format = builder.info.file_format
    if file_format not in tfds.core.FileFormat.with_random_access():
      raise DataError(
          f"dataset {dataset!r} in data_dir {data_dir!r} is stored as {file_format.value}, "
          f"which has no random access; rebuild it with tfds build {dataset} "
          f"--data_dir={data_dir} --file_format=array_record") from e
    if split is not None and split not in builder.info.splits:
      raise DataError(
          f"dataset {dataset!r} has no split {split!r}; "
          f"available: {', '.join(builder.info.splits)}") from e
    raise


def dataset_info(dataset: str, data_dir: str | None = None) -> DatasetInfo:
  """Returns shapes, classes and split sizes of `dataset` (fails if data is missing).

  Args:
    dataset: TFDS name, e.g. "digits" (built on first use) or "mnist".
    data_dir: TFDS data directory; `default_data_dir()` when None.
  """
  data_dir = data_dir or default_data_dir()
  builder = _builder(dataset, data_dir)
  sources = _as_data_source(builder, dataset, data_dir, split=None)
  label = builder.info.features["label"]
  return DatasetInfo(
      name=dataset,
      image_shape=tuple(builder.info.features["image"].shape),
      num_classes=label.num_classes,
      label_names=list(label.names),
      splits={name: len(source) for name, source in sources.items()},
  )


def open_split(
    dataset: str, split: str, data_dir: str | None, *, labels_only: bool = False,
) -> Sequence[dict[str, Any]]:
  """Opens one split as a random-access source of `{"image", "label", ...}` dicts.

  Args:
    dataset: TFDS name.
    split: split name, e.g. "train" (TFDS slicing like "train[:90%]" works).
    data_dir: TFDS data directory; `default_data_dir()` when None.
    labels_only: the caller reads only labels, so images may stay encoded bytes.

  Returns:
    A non-empty sequence; `source[i]["image"]` is uint8 [h, w, c] unless
    `labels_only`, `source[i]["label"]` an integer.
  """
  data_dir = data_dir or default_data_dir()
  builder = _builder(dataset, data_dir)
  # Skipping image decoding needs real files: under `tfds.testing.mock_data`
  # (builder not prepared) it would make TFDS encode fake images with TensorFlow.
  skip_images = labels_only and builder.is_prepared()
  decoders = {"image": tfds.decode.SkipDecoding()} if skip_images else None
  source = _as_data_source(builder, dataset, data_dir, split, decoders)
  if len(source) == 0:
    raise DataError(f"split {split!r} of dataset {dataset!r} in data_dir {data_dir!r} "
                    "is empty; choose another split")
  return source


def read_user_text(path: str, what: str) -> str:
  """The text of a user's UTF-8 file, newlines as `open()` reads them ("\\r\\n" -> "\\n").

  Raises DataError (one line) naming `what` when the file cannot be read, and the
  file, line and column of the first byte that is not UTF-8.
  """
  try:
    raw = read_bytes(path)  # a local path, or a gs:// URL (a labels.json of a gs:// run)
  except OSError as e:
    raise DataError(f"{what}: cannot read {path!r} ({e.strerror or e})") from None
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    line = raw.count(b"\n", 0, e.start) + 1
    column = e.start - raw.rfind(b"\n", 0, e.start)
    raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                    f"{column}); save the file as UTF-8 ({what})") from None
  return text.replace("\r\n", "\n").replace("\r", "\n")


def user_text_lines(path: str, what: str) -> list[str]:
  """The lines of a user's UTF-8 file (see `read_user_text`), each with its "\\n"."""
  # Not str.splitlines: it also splits at U+2028 and friends, which JSON strings may hold.
  return io.StringIO(read_user_text(path, what)).readlines()


def user_jsonl_objects(path: str, what: str, example: str):
  """`(line number, dict)` for every non-blank line of a user's JSONL file.

  A line that is not JSON, or not a JSON object, raises one DataError naming
  `path:line` and what a line should look like (`example`, e.g. '{"text": "..."}').
  """
  for n, line in enumerate(user_text_lines(path, what), 1):
    if not line.strip():
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); each line must be an object "
                      f"like {example}") from None
    if not isinstance(obj, dict):
      raise DataError(f"{path}:{n}: expected a JSON object like {example}")
    yield n, obj
