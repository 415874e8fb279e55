r"""Image folders as a data source: `config.data.source = "folder"`.

Layout (`config.data.root = ROOT`), one sub-folder per class, class names sorted:

  ROOT/train/<class>/*.jpg|*.jpeg|*.png     (images in sub-folders of a class count too)
  ROOT/validation/<class>/...               (or ROOT/val/; optional: without it a stratified
                                             `config.data.holdout` fraction of train, chosen
                                             with `holdout_seed`, is the validation split)
  ROOT/test/<class>/...                     (optional)

or an index per split instead of (or pointing into) the folders, which wins when present:

  ROOT/<split>.csv     `path,label` lines (an optional `path,label` header line)
  ROOT/<split>.jsonl   {"path": ..., "label": ...} lines
                       (paths relative to ROOT; labels are class names; all-integer labels
                       sort as numbers)

Every image is decoded with Pillow where Grain reads it (its worker processes with
`config.data.worker_count` > 0), converted to RGB (grayscale, RGBA, CMYK and palette
images are converted; the count is logged once per split), its shorter side resized to
`resize` and the centre `crop` x `crop` cut (`ptft_jax.data.preprocessing`; JPEGs much
larger than that are decoded at a reduced scale with Pillow's draft mode, other images
reduced before the filter). A split small enough (`pipeline.IN_MEMORY_BYTES`) is decoded
once, with threads, and kept in memory. Training augments on the device
(`config.task.augment`, e.g. random resized crop + flip) and normalizes with the mean/std.

Train order is seeded and resumable exactly as for TFDS (`pipeline.source_iterator`).

Bad input, one line each (DataError, exit status 2 from the CLIs):
  - a missing ROOT, a missing train split (or a requested validation / test split) folder,
  - an empty class folder, a class in validation / test that train does not have,
  - an index line that is malformed, or names a missing file (`index:line`),
  - a non-image file among the images (named), a file Pillow cannot identify, or an image
    that cannot be decoded (truncated, corrupt): `config.data.bad_images = "stop"` (default)
    stops naming the file; "skip" skips such files and reports how many.
"""

import collections
import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import io
import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from ptft_jax.data import bundle, embedded, pipeline, preprocessing
from ptft_jax.data.preprocessing import Preprocessing
from ptft_jax.data.sources import DatasetInfo, user_jsonl_objects, user_text_lines
from ptft_jax.data.subset import InMemory, Subset, stratified_subset
from ptft_jax.data.transforms import SKIPPED
from ptft_jax.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
BAD_IMAGES = ("stop", "skip")
VALIDATION_FOLDERS = ("validation", "val")  # the default validation split's folder names
# Mode -> how log lines name images that are converted to RGB.
MODE_NAMES = {"L": "grayscale", "LA": "grayscale+alpha", "1": "1-bit", "P": "palette",
              "PA": "palette+alpha", "RGBA": "RGBA", "CMYK": "CMYK", "I;16": "16-bit grayscale",
              "I;16B": "16-bit grayscale", "I;16L": "16-bit grayscale", "I": "32-bit grayscale",
              "F": "float grayscale", "YCbCr": "YCbCr", "LAB": "Lab", "HSV": "HSV"}
_THREADS = min(16, 2 * (os.cpu_count() or 1))


def folder_config(root: str, *, batch_size: int = 64, eval_batch_size: int = 128,
                  crop: int = 0, resize: int = 0, holdout: float = 0.1,
                  bad_images: str = "stop", worker_count: int = 0,
                  ) -> ml_collections.ConfigDict:
  """`config.data` for an image folder (the keys `folder_data` reads, with defaults).

  Args:
    root: the folder holding train/ (and validation/ or val/, test/) or <split>.csv/.jsonl.
    batch_size, eval_batch_size: global batch sizes.
    crop, resize: `config.data.preprocessing` crop / resize (0: from the pretrained
      workdir's preprocessing.json, else 224 / 256).
    holdout: fraction of train held out (stratified) when there is no validation split.
    bad_images: "stop" (default) or "skip" unreadable / non-image files.
    worker_count: Grain worker processes decoding images (0: the training process).
  """
  return ml_collections.ConfigDict(dict(
      kind="image", source="folder", root=root,
      dataset=os.path.basename(os.path.normpath(root)) or root, data_dir="",
      train_split="train", validation_split="validation", test_split="test",
      batch_size=batch_size, eval_batch_size=eval_batch_size, label_fraction=1.0,
      label_fraction_seed=0, labels_per_class=0, holdout=holdout, holdout_seed=0,
      bad_images=bad_images, worker_count=worker_count,
      preprocessing=dict(mean=(), std=(), resize=resize, crop=crop, interpolation="")))


# --- decoding --------------------------------------------------------------------------------


def _resample(interpolation: str) -> int:
  from PIL import Image

  return {"bilinear": Image.Resampling.BILINEAR,
          "bicubic": Image.Resampling.BICUBIC}[interpolation]


def _to_rgb(image):
  """A Pillow image of any mode -> RGB (16/32-bit grayscale scaled to 8 bits)."""
  from PIL import Image

  if image.mode == "RGB":
    return image
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    pixels = np.asarray(image).astype(np.float64)
    top = 65535.0 if image.mode != "I" or pixels.max() > 255 else 255.0
    image = Image.fromarray(np.clip(np.round(pixels * 255.0 / top), 0, 255).astype(np.uint8))
  elif image.mode == "F":
    pixels = np.asarray(image, np.float64)
    top = 1.0 if pixels.max() <= 1.0 else 255.0
    image = Image.fromarray(np.clip(np.round(pixels * 255.0 / top), 0, 255).astype(np.uint8))
  elif image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")  # Pillow warns when such a palette goes straight to RGB
  return image.convert("RGB")


def decode_image(path: str, resize: int, crop: int, interpolation: str = "bilinear",
                 ) -> np.ndarray:
  """One image file -> uint8 [crop, crop, 3]: RGB, shorter side to `resize`, centre crop.

  Exactly torchvision's `Resize(resize)` + `CenterCrop(crop)` on a PIL image (the resized
  size truncated, the crop offset rounded) for images under twice the needed size.
  Larger JPEGs are decoded at 1/2, 1/4 or 1/8 scale (`draft`), and other images at least
  four times the needed size are first reduced by an integer factor (`reducing_gap`).
  Raises whatever Pillow raises for an unreadable file (see `load` for one-line errors).
  """
  from PIL import Image

  with Image.open(path) as image:
    w, h = image.size
    if image.format == "JPEG" and min(w, h) >= 2 * resize:
      scale = resize / min(w, h)
      image.draft(None, (math.ceil(w * scale), math.ceil(h * scale)))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # e.g. EXIF / ICC oddities: the pixels are fine
      image.load()
    image = _to_rgb(image)
  w, h = image.size
  # torchvision Resize(int): the shorter side becomes `resize`, the longer one is truncated.
  new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
  if min(new_w, new_h) < crop:
    new_w, new_h = max(new_w, crop), max(new_h, crop)
  # Four times larger than needed: reduce by an integer factor first (cheap, near-exact).
  gap = 2.0 if min(w, h) >= 4 * resize else None
  image = image.resize((new_w, new_h), _resample(interpolation), reducing_gap=gap)
  left, top = round((new_w - crop) / 2.0), round((new_h - crop) / 2.0)
  out = image.crop((left, top, left + crop, top + crop))
  return np.asarray(out, np.uint8).reshape(crop, crop, 3)


def _why(e: BaseException) -> str:
  text = str(e).splitlines()[0] if str(e) else ""
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load(path: str, resize: int, crop: int, interpolation: str = "bilinear") -> np.ndarray:
  """`decode_image`, with any failure a one-line DataError naming the file."""
  try:
    return decode_image(path, resize, crop, interpolation)
  except Exception as e:  # noqa: BLE001 -- Pillow raises many kinds for a bad file
    raise DataError(f"{path}: cannot decode the image ({_why(e)})") from None


# --- listing a split -----------------------------------------------------------------------


@dataclasses.dataclass
class SplitFiles:
  """The readable images of one split, in a fixed order.

  Attributes:
    name: e.g. "ROOT/train" or "ROOT/train.csv", for messages.
    paths: image files.
    labels: int64 [n] class ids.
    class_names: the split's own class names (train: the run's classes).
    modes: Pillow mode -> count of images that are not RGB (converted).
    skipped: ("where", "why") of every file skipped (bad_images="skip").
  """

  name: str
  paths: list[str]
  labels: np.ndarray
  class_names: list[str]
  modes: collections.Counter
  skipped: list[tuple[str, str]]


class _Problems:
  """Bad files of a split: the first stops the run ("stop"), or each is counted ("skip")."""

  def __init__(self, policy: str):
    self.policy, self.found = policy, []

  def add(self, where: str, why: str):
    self.found.append((where, why))

  def raise_if_stopping(self):
    if self.policy == "stop" and self.found:
      where, why = self.found[0]
      more = f" (and {len(self.found) - 1} more)" if len(self.found) > 1 else ""
      raise DataError(f"{where}: {why}{more}; fix or remove it, or set "
                      "config.data.bad_images='skip' to skip bad files")


def _is_image_name(name: str) -> bool:
  return name.lower().endswith(IMAGE_SUFFIXES)


def _not_an_image(name: str) -> str:
  ext = os.path.splitext(name)[1] or "no extension"
  return (f"not an image file ({ext}); image folders hold only "
          f"{', '.join(IMAGE_SUFFIXES)} files")


def _list_class_folders(split_dir: str, problems: _Problems,
                        classes: Sequence[str] | None) -> tuple[list, list[str]]:
  """[(path, class name)] of `split_dir/<class>/**` (sorted) and the split's class names."""
  names = sorted(os.listdir(split_dir))
  class_dirs = [n for n in names if not n.startswith(".")
                and os.path.isdir(os.path.join(split_dir, n))]
  for n in names:  # loose files beside the class folders
    if not n.startswith(".") and not os.path.isdir(os.path.join(split_dir, n)):
      problems.add(os.path.join(split_dir, n),
                   f"a file outside the class folders; put images in {split_dir}/<class>/")
  if not class_dirs:
    raise DataError(f"{split_dir}: no class folders; an image folder holds "
                    f"{split_dir}/<class>/*.jpg (one folder per class)")
  if classes is not None:
    unknown = [n for n in class_dirs if n not in classes]
    if unknown:
      raise DataError(f"{os.path.join(split_dir, unknown[0])}: class {unknown[0]!r} is not "
                      f"one of the train classes ({', '.join(classes[:10])}"
                      f"{', ...' if len(classes) > 10 else ''}); remove it or add it to train")
  entries = []
  for cls in class_dirs:
    folder = os.path.join(split_dir, cls)
    found = 0
    for dirpath, dirnames, files in os.walk(folder):
      dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
      for f in sorted(files):
        if f.startswith("."):
          continue  # .DS_Store and friends
        path = os.path.join(dirpath, f)
        if _is_image_name(f):
          entries.append((path, cls))
          found += 1
        else:
          problems.add(path, _not_an_image(f))
    if not found:
      raise DataError(f"{folder}: empty class folder (no {', '.join(IMAGE_SUFFIXES)} files); "
                      "add images or remove the folder")
  return entries, class_dirs


def _index_rows(path: str) -> list[tuple[int, str, str]]:
  """(line, image path as written, label) of a CSV or JSONL index (DataError per bad line)."""
  rows = []
  if path.endswith(".jsonl"):
    for n, obj in user_jsonl_objects(path, "image index", '{"path": "...", "label": "<class>"}'):
      if (not isinstance(obj.get("path"), str)
          or not isinstance(obj.get("label"), (str, int)) or isinstance(obj.get("label"), bool)):
        raise DataError(f'{path}:{n}: expected {{"path": "...", "label": "<class>"}}')
      rows.append((n, obj["path"], str(obj["label"])))
    return rows
  lines = user_text_lines(path, "image index")
  for n, fields in enumerate(csv.reader(io.StringIO("".join(lines))), 1):
    if not fields or not "".join(fields).strip():
      continue
    if not rows and [f.strip().lower() for f in fields] == ["path", "label"]:
      continue  # header
    if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
      raise DataError(f"{path}:{n}: expected 'path,label', got {len(fields)} field(s) "
                      f"{','.join(fields)[:80]!r}")
    rows.append((n, fields[0].strip(), fields[1].strip()))
  return rows


def _list_index(index: str, root: str, problems: _Problems) -> list[tuple[str, str, str]]:
  """[(path, class name, "index:line")] of an index; missing / non-image files are problems."""
  entries = []
  for n, written, label in _index_rows(index):
    path = written if os.path.isabs(written) else os.path.join(root, written)
    where = f"{index}:{n}"
    if not os.path.isfile(path):
      problems.add(where, f"no such image file {written!r} (paths are relative to {root})")
    elif not _is_image_name(path):
      problems.add(where, f"{written}: {_not_an_image(path)}")
    else:
      entries.append((path, label, where))
  if not entries and not problems.found:
    raise DataError(f"{index}: no 'path,label' lines")
  return entries


def sort_class_names(names) -> list[str]:
  """Sorted class names; all-integer names sort as numbers ("2" before "10")."""
  names = sorted(set(names))
  if all(n.isdigit() for n in names):
    return sorted(names, key=int)
  return names


def split_location(root: str, split: str) -> tuple[str, str] | None:
  """("index", ROOT/<split>.csv|.jsonl) or ("folder", ROOT/<split>), or None."""
  for ext in (".csv", ".jsonl"):
    if os.path.isfile(os.path.join(root, split + ext)):
      return "index", os.path.join(root, split + ext)
  if os.path.isdir(os.path.join(root, split)):
    return "folder", os.path.join(root, split)
  return None


def _header(path: str) -> tuple[str, str]:
  """(Pillow mode, "") of a readable image header, or ("", why)."""
  from PIL import Image

  try:
    with Image.open(path) as image:
      return image.mode, ""
  except Exception as e:  # noqa: BLE001 -- Pillow raises many kinds for a bad file
    if isinstance(e, Image.UnidentifiedImageError):
      return "", "not an image Pillow can read (cannot identify the format)"
    return "", f"cannot read the image ({_why(e)})"


def list_split(root: str, split: str, *, bad_images: str = "stop",
               classes: Sequence[str] | None = None) -> SplitFiles:
  """Lists and checks one split: every file's header is read (threads); nothing is decoded.

  Args:
    root: the image folder.
    split: a folder name under `root`, or an index `root/<split>.csv|.jsonl`.
    bad_images: "stop" raises on the first bad file (all are looked at first, to count
      them); "skip" leaves them out and records them in `skipped`.
    classes: the train classes (validation / test); None for train (its own, sorted).
  """
  where = split_location(root, split)
  if where is None:
    raise DataError(f"{root}: no {split}/ folder (nor {split}.csv / {split}.jsonl); found "
                    f"{', '.join(sorted(_splits_found(root))) or 'nothing'}")
  problems = _Problems(bad_images)
  kind, path = where
  if kind == "folder":
    listed = [(p, c, p) for p, c in _list_class_folders(path, problems, classes)[0]]
  else:
    listed = _list_index(path, root, problems)
  problems.raise_if_stopping()  # a stray file stops the run before the headers are read
  names = sort_class_names(c for _, c, _ in listed) if classes is None else list(classes)
  if classes is not None and kind == "index":
    for _, c, w in listed:
      if c not in classes:
        raise DataError(f"{w}: label {c!r} is not one of the train classes "
                        f"({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})")
  with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
    headers = list(pool.map(_header, [p for p, _, _ in listed]))
  modes: collections.Counter = collections.Counter()
  kept = []
  for (p, c, w), (mode, why) in zip(listed, headers, strict=True):
    if why:
      problems.add(w if w == p else f"{w}: {p}", why)
    else:
      kept.append((p, c))
      if mode != "RGB":
        modes[mode] += 1
  problems.raise_if_stopping()
  index = {n: i for i, n in enumerate(names)}
  if classes is None:
    counts = collections.Counter(c for _, c in kept)
    empty = [n for n in names if not counts[n]]
    if empty:
      raise DataError(f"{path}: class {empty[0]!r} has no readable images left "
                      f"({len(problems.found)} bad files skipped); fix them or remove it")
  return SplitFiles(name=path, paths=[p for p, _ in kept],
                    labels=np.array([index[c] for _, c in kept], np.int64), class_names=names,
                    modes=modes, skipped=list(problems.found))


def _splits_found(root: str) -> list[str]:
  try:
    return [n for n in os.listdir(root) if not n.startswith(".") and (
        os.path.isdir(os.path.join(root, n)) or n.endswith((".csv", ".jsonl")))]
  except OSError:
    return []


def holdout_split(labels: np.ndarray, fraction: float, seed: int,
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Stratified (train, validation) indices: `fraction` of every class held out.

  A class of n >= 2 examples gives round(fraction * n) of them, at least 1 and at most
  n - 1; a class of one example stays in train. The choice depends only on `seed`
  and the class (not on the shuffle seed).

  Returns:
    (int64 [n - k], int64 [k]) sorted indices into `labels`.
  """
  labels = np.asarray(labels)
  held = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    k = 0 if len(members) < 2 else min(len(members) - 1,
                                       max(1, int(fraction * len(members) + 0.5)))
    held.append(np.random.default_rng([seed, int(c), 1]).permutation(members)[:k])
  validation = np.sort(np.concatenate(held)).astype(np.int64)
  train = np.setdiff1d(np.arange(len(labels)), validation).astype(np.int64)
  return train, validation


# --- sources ---------------------------------------------------------------------------------


class FolderSource:
  """Random access to decoded images: source[i] = {"image": uint8 [crop, crop, 3], "label"}.

  Decodes on access (in a Grain worker when there are workers). With bad_images="skip" an
  image that cannot be decoded becomes a `SKIPPED` record (filtered before batching) and
  one warning line; with "stop" a DataError naming the file. Picklable: workers get a copy.
  Its repr names the files' fingerprint, which Grain compares when restoring a checkpoint.
  """

  def __init__(self, name: str, paths: Sequence[str], labels: np.ndarray, *, resize: int,
               crop: int, interpolation: str, bad_images: str):
    self._name, self._paths = name, list(paths)
    self._labels = np.asarray(labels, np.int64)
    self.resize, self.crop, self.interpolation = resize, crop, interpolation
    self.bad_images = bad_images
    digest = hashlib.sha1("\n".join(self._paths).encode() + self._labels.tobytes())
    digest.update(f"{resize},{crop},{interpolation}".encode())
    self._fingerprint = digest.hexdigest()[:16]

  def __len__(self) -> int:
    return len(self._paths)

  def labels(self) -> np.ndarray:
    """int64 [n]: the label of every example (nothing is decoded)."""
    return self._labels

  def path(self, index: int) -> str:
    return self._paths[index]

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    try:
      image = decode_image(self._paths[index], self.resize, self.crop, self.interpolation)
    except Exception as e:  # noqa: BLE001 -- Pillow raises many kinds for a bad file
      why = f"cannot decode the image ({_why(e)})"
      if self.bad_images == "stop":
        raise DataError(f"{self._paths[index]}: {why}; fix or remove it, or set "
                        "config.data.bad_images='skip' to skip bad files") from None
      _warn_once(self._paths[index], why)
      return {SKIPPED: True, "image": np.zeros((self.crop, self.crop, 3), np.uint8),
              "label": np.int64(-1)}
    return {"image": image, "label": self._labels[index]}

  def __repr__(self) -> str:
    return f"FolderSource({self._name}, n={len(self)}, fingerprint={self._fingerprint})"


@functools.cache
def _warn_once(path: str, why: str) -> None:
  print(f"warning: skipped {path}: {why} (config.data.bad_images='skip')", file=sys.stderr,
        flush=True)


def decode_all(source: FolderSource) -> tuple[InMemory, list[tuple[str, str]]]:
  """Every image of `source` decoded once (threads) -> (in-memory source, skipped files).

  Under bad_images="stop" the first file (in order) that cannot be decoded raises.
  """
  n = len(source)
  images = np.zeros((n, source.crop, source.crop, 3), np.uint8)

  def one(i: int) -> str:
    try:
      images[i] = decode_image(source.path(i), source.resize, source.crop,
                               source.interpolation)
      return ""
    except Exception as e:  # noqa: BLE001 -- Pillow raises many kinds for a bad file
      return f"cannot decode the image ({_why(e)})"

  with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
    whys = list(pool.map(one, range(n)))
  bad = [(source.path(i), why) for i, why in enumerate(whys) if why]
  if bad and source.bad_images == "stop":
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise DataError(f"{bad[0][0]}: {bad[0][1]}{more}; fix or remove it, or set "
                    "config.data.bad_images='skip' to skip bad files")
  keep = np.array([not why for why in whys], bool)
  return InMemory.from_arrays(images[keep], source.labels()[keep], repr(source)), bad


# --- the data bundle -------------------------------------------------------------------------


def _say(line: str):
  if jax.process_index() == 0:
    print(line, flush=True)


def _summary(split: SplitFiles, n: int, what: str, skipped: Sequence[tuple[str, str]]) -> str:
  line = f"image folder {what}: {n:,} images of {len(split.class_names)} classes"
  if split.modes:
    parts = [f"{c:,} {MODE_NAMES.get(m, m)}" + (f" ({m})" if MODE_NAMES.get(m, m) != m else "")
             for m, c in sorted(split.modes.items(), key=lambda x: (-x[1], x[0]))]
    line += "; converted to RGB: " + ", ".join(parts)
  if skipped:
    where, why = skipped[0]
    line += (f"; skipped {len(skipped):,} bad file(s) (config.data.bad_images='skip'), "
             f"first {where}: {why}")
  return line


def _check_config(dc) -> tuple[str, str]:
  root = dc.get("root", "")
  if not root:
    raise ConfigError("config.data.root: name the image folder (source='folder')")
  if not os.path.isdir(root):
    raise DataError(f"config.data.root={root}: no such folder")
  policy = dc.get("bad_images", "stop")
  if policy not in BAD_IMAGES:
    raise ConfigError(f"config.data.bad_images={policy!r}: choose 'stop' or 'skip'")
  fraction = float(dc.get("holdout", 0.1))
  if not 0 <= fraction < 1:
    raise ConfigError(f"config.data.holdout={fraction}: use a fraction in [0, 1)")
  return root, policy


def folder_data(dc: ml_collections.ConfigDict, seed: int, prep: Preprocessing | None,
                *, shard_index: int | None = None, shard_count: int | None = None,
                ) -> bundle.DataBundle:
  """The DataBundle of an image folder (`config.data.source = "folder"`, see `folder_config`).

  Returns a bundle whose info has image_shape (crop, crop, 3), the sorted class names and
  `preprocessing` (what the task and prediction apply); train batches {"image": float32
  [b, crop, crop, 3] in [0, 1], "label": int32 [b]}, eval batches with "valid" as for TFDS.
  """
  root, policy = _check_config(dc)
  prep = prep or Preprocessing()
  if prep.mean and len(prep.mean) != 3:
    raise ConfigError(f"preprocessing from {prep.origin or 'config.data.preprocessing'}: "
                      f"{len(prep.mean)} mean / std values; image folders are RGB (3)")
  resize, crop = prep.geometry()
  prep = dataclasses.replace(prep, resize=resize, crop=crop)
  preprocessing.say(prep, root)
  shard_index, shard_count = pipeline._shard(shard_index, shard_count)
  batch_size = pipeline._per_process_batch(dc.batch_size, shard_count)
  eval_batch_size = pipeline._per_process_batch(dc.eval_batch_size, shard_count)

  train_split = dc.get("train_split", "train")
  train_files = list_split(root, train_split, bad_images=policy)
  classes = train_files.class_names
  names = {"train": train_split, "validation": dc.get("validation_split", "validation"),
           "test": dc.get("test_split", "test")}
  if names["validation"] == "validation" and split_location(root, "validation") is None \
      and split_location(root, "val") is not None:
    names["validation"] = "val"
  held_out = split_location(root, names["validation"]) is None
  fraction = float(dc.get("holdout", 0.1))
  train_rows = np.arange(len(train_files.paths))
  validation_rows = np.zeros((0,), np.int64)
  if held_out and fraction > 0:
    train_rows, validation_rows = holdout_split(train_files.labels, fraction,
                                                int(dc.get("holdout_seed", 0)))

  def source(files: SplitFiles, rows: np.ndarray, what: str) -> FolderSource:
    return FolderSource(f"{files.name}[{what}]", [files.paths[i] for i in rows],
                        files.labels[rows], resize=resize, crop=crop,
                        interpolation=prep.interpolation, bad_images=policy)

  def ready(src: FolderSource, files: SplitFiles, what: str):
    """In memory when small enough (decoded now, skips counted exactly), else streamed."""
    skipped = list(files.skipped)
    if len(src) * crop * crop * 3 <= pipeline.IN_MEMORY_BYTES:
      src, decode_skipped = decode_all(src)
      skipped += decode_skipped
    _say(_summary(files, len(src), what, skipped))
    if not len(src):
      raise DataError(f"{files.name}: no readable images for {what}")
    return src

  train = ready(source(train_files, train_rows, "train"), train_files, f"{root} {train_split}")
  if held_out and fraction > 0:
    _say(f"image folder {root}: no {names['validation']}/ split; validation = "
         f"{len(validation_rows):,} train images held out (config.data.holdout={fraction:g}, "
         f"stratified, holdout_seed={int(dc.get('holdout_seed', 0))})")
  label_fraction = float(dc.get("label_fraction", 1.0))
  per_class = int(dc.get("labels_per_class", 0))
  if not 0 < label_fraction <= 1:
    raise DataError(f"config.data.label_fraction={label_fraction} must be in (0, 1]")
  if per_class < 0 or (per_class and label_fraction < 1):
    raise ConfigError(f"config.data.labels_per_class={per_class}: use a count > 0 "
                      "with config.data.label_fraction=1.0, or 0 (off)")
  if label_fraction < 1 or per_class:
    train = Subset(train, stratified_subset(train.labels(), label_fraction,
                                            int(dc.get("label_fraction_seed", 0)),
                                            per_class=per_class))
  if not 0 <= seed < 2**32:
    raise ConfigError(f"data seed {seed} must be in [0, 2**32)")
  train_it = pipeline.source_iterator(
      train, seed=seed, batch_size=batch_size, worker_count=int(dc.get("worker_count", 0)),
      shard_index=shard_index, shard_count=shard_count)

  @functools.cache
  def eval_source(split: str):
    name = names.get(split, split)
    if split == "validation" and held_out:
      if not fraction:
        raise DataError(f"{root}: no {name}/ folder (nor {name}.csv / {name}.jsonl) and "
                        "config.data.holdout=0; add one or hold out a fraction of train")
      return ready(source(train_files, validation_rows, "held-out validation"), train_files,
                   f"{root} validation (held out of {train_split})")
    if split_location(root, name) is None:
      raise DataError(f"{root}: no {name}/ folder (nor {name}.csv / {name}.jsonl) for the "
                      f"{split} split; add one, or leave {split!r} out of config.eval_splits")
    files = list_split(root, name, bad_images=policy, classes=classes)
    return ready(source(files, np.arange(len(files.paths)), name), files, f"{root} {name}")

  template = {"image": np.zeros((crop, crop, 3), np.float32), "label": np.zeros((), np.int32)}

  def eval_batches(split: str):
    return pipeline.source_eval_batches(eval_source(split), batch_size=eval_batch_size,
                                        shard_index=shard_index, shard_count=shard_count,
                                        template=template)

  splits = {"train": len(train)}
  if held_out and fraction > 0:
    splits["validation"] = len(validation_rows)
  # A folder run from an image config keeps base_config's embedded TFDS name ("digits")
  # unless it sets one: name the folder then.
  name = dc.get("dataset", "")
  if not name or embedded.is_embedded(name):
    name = os.path.basename(os.path.normpath(root)) or root
  info = DatasetInfo(name=name, image_shape=(crop, crop, 3),
                     num_classes=len(classes), label_names=list(classes), splits=splits,
                     preprocessing=prep)
  return bundle.DataBundle(info=info, train_iterator=train_it, eval_batches=eval_batches)


bundle.IMAGE_SOURCES["folder"] = folder_data
