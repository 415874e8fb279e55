"""Strict, lazy reading of Hugging Face safetensors checkpoints (shared by the HF converters).

A checkpoint is `model.safetensors`, or several files listed by
`model.safetensors.index.json` (`{"weight_map": {tensor name: file name}}`, what
`save_pretrained` writes for large models). Files are memory-mapped: a tensor is
read only when asked for, and a sharded load reads only each device's slice.

`Tensors` validates names (no '..' or leading '/'), dtypes (float only: F16, BF16,
F32, F64, all read as float32; BF16 through a memmap of its bytes, since numpy has no
bfloat16) and shapes, each failure one line naming the file and tensor. `gather` turns a list
of `Entry` (HF tensor -> our param path) into a params tree: host float32 numpy,
or with a `placement` jax.Arrays built by `jax.make_array_from_callback`, each
device's callback reading its own slice (`get_slice(name)[index]`; the transpose
of an `[out, in]` weight applied to that slice; a column range of a packed
tensor such as GPT-2's `c_attn` shifted into place).
"""

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import safetensors

from ptft_jax.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

Params = dict[str, Any]
# (param path "backbone/layer_0/attention/query/kernel", shape in our layout) -> Sharding.
Placement = Callable[[str, tuple[int, ...]], jax.sharding.Sharding]
# name in the file(s) -> {normalized name: name in the file(s)}; raises CheckpointError.
Normalize = Callable[[str, list[str]], dict[str, str]]

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
# Rows per read when comparing tied tensors: bounded host memory for any vocabulary.
_COMPARE_ROWS = 4096


def first_line(error: Exception) -> str:
  return (str(error).splitlines() or [type(error).__name__])[0]


def short_list(names) -> str:
  names = sorted(names)
  more = f" (and {len(names) - 8} more)" if len(names) > 8 else ""
  return ", ".join(names[:8]) + more


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  """Yields `(path tuple, leaf)` of a nested dict."""
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from flatten(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def set_path(tree: Params, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def read_json(path: str, what: str = "a Hugging Face directory") -> Any:
  """Parsed JSON file, or a one-line CheckpointError (`what` names the expected directory)."""
  if not os.path.isfile(path):
    raise CheckpointError(f"{path}: not found (expected {what})")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: cannot parse: {first_line(e)}") from None


def check_names(path: str, names: list[str]) -> None:
  for name in names:
    if ".." in name or name.startswith("/"):
      raise CheckpointError(
          f"{path}: unsafe tensor name {name!r} ('..' or leading '/'); refusing the file")


def strip_prefixes(path: str, names: list[str], prefixes: tuple[str, ...] = (),
                   keep: tuple[str, ...] = ()) -> dict[str, str]:
  """A `Normalize`: the first of `prefixes` some name starts with is removed from every
  name that has it (`keep` names stay as they are); two names for one tensor are refused."""
  prefix = next((p for p in prefixes if any(n.startswith(p) for n in names)), "")
  out = {}
  for name in names:
    norm = name if name in keep else name.removeprefix(prefix)
    if norm in out:
      raise CheckpointError(f"{path}: tensors {out[norm]!r} and {name!r} are the same parameter")
    out[norm] = name
  return out


@dataclasses.dataclass(frozen=True)
class Entry:
  """One param read from one HF tensor.

  `shape` is the whole HF tensor's (checked against the file). `transpose`: the
  tensor is a torch Linear `[out, in]` weight and our kernel is `[in, out]`.
  `columns`: only the range `[start, stop)` of the tensor's last axis (a packed
  tensor, e.g. GPT-2's `c_attn` q|k|v); not combined with `transpose`.
  """

  name: str
  path: tuple[str, ...]
  shape: tuple[int, ...]
  transpose: bool = False
  columns: tuple[int, int] | None = None

  @property
  def ours(self) -> tuple[int, ...]:
    """The param's shape in our layout."""
    shape = tuple(self.shape)
    if self.columns is not None:
      shape = shape[:-1] + (self.columns[1] - self.columns[0],)
    return shape[::-1] if self.transpose else shape


class Tensors:
  """Validated, memory-mapped view of a directory's safetensors file(s).

  `names` maps normalized names (by `normalize`) to the names in the files.
  Use as a context manager (closes the files).
  """

  def __init__(self, model_dir: str, normalize: Normalize | None = None):
    model_dir = os.fspath(model_dir)
    single = os.path.join(model_dir, WEIGHTS_FILE)
    index = os.path.join(model_dir, INDEX_FILE)
    self._files: dict[str, Any] = {}
    self._where: dict[str, str] = {}  # name in the files -> file path
    self._headers: dict[str, tuple[int, dict]] = {}  # file -> (data start, header); BF16 reads
    try:
      if os.path.isfile(single):
        self.path = single
        self._open(single)
        self._where = {n: single for n in self._files[single].keys()}
      elif os.path.isfile(index):
        self.path = index
        self._open_index(model_dir, index)
      else:
        hint = " (pytorch_model.bin is never read)" if any(os.path.exists(
            os.path.join(model_dir, f)) for f in ("pytorch_model.bin",
                                                  "pytorch_model.bin.index.json")) else ""
        raise CheckpointError(f"{single}: not found{hint}")
      raw = list(self._where)
      check_names(self.path, raw)
      self.names = (normalize or (lambda _, ns: {n: n for n in ns}))(self.path, raw)
    except BaseException:
      self.close()
      raise

  def _open(self, path: str):
    try:
      self._files[path] = safetensors.safe_open(path, framework="numpy")
    except Exception as e:  # safetensors raises its own error types on bad headers.
      raise CheckpointError(f"{path}: not a valid safetensors file: {first_line(e)}") from None
    return self._files[path]

  def _open_index(self, model_dir: str, index: str) -> None:
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
      raise CheckpointError(f"{index}: no 'weight_map' (tensor name -> file name)")
    for name, file in weight_map.items():
      if not isinstance(file, str) or os.path.basename(file) != file or file in ("", ".", ".."):
        raise CheckpointError(
            f"{index}: tensor {name!r} names file {file!r}; only file names in {model_dir}")
    for file in sorted(set(weight_map.values())):
      path = os.path.join(model_dir, file)
      if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not found (listed in {INDEX_FILE})")
      keys = set(self._open(path).keys())
      absent = [n for n, f in weight_map.items() if f == file and n not in keys]
      if absent:
        raise CheckpointError(
            f"{path}: lacks tensors that {INDEX_FILE} places there: {short_list(absent)}")
    self._where = {name: os.path.join(model_dir, file) for name, file in weight_map.items()}

  def close(self) -> None:
    for handle in self._files.values():
      handle.__exit__(None, None, None)
    self._files = {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def file_of(self, name: str) -> str:
    """Path of the file holding normalized tensor `name`."""
    return self._where[self.names[name]]

  def _slice(self, name: str):
    real = self.names[name]
    return self._files[self._where[real]].get_slice(real)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._slice(name).get_shape())

  def check(self, name: str, want_shape: tuple[int, ...]) -> None:
    """A float dtype and the shape the config wants (HF layout), or a CheckpointError."""
    part = self._slice(name)
    dtype = part.get_dtype()
    if dtype not in FLOAT_DTYPES:
      raise CheckpointError(
          f"{self.file_of(name)}: tensor {self.names[name]!r} has dtype {dtype}, expected a "
          f"float dtype ({'/'.join(FLOAT_DTYPES)})")
    shape = tuple(part.get_shape())
    if shape != tuple(want_shape):
      raise CheckpointError(
          f"{self.file_of(name)}: tensor {self.names[name]!r} has shape {shape}, expected "
          f"{tuple(want_shape)} from {CONFIG_FILE}")

  def get(self, name: str, want_shape: tuple[int, ...]) -> np.ndarray:
    """Checks dtype and shape, returns the whole tensor as float32 numpy."""
    self.check(name, want_shape)
    return self._part(name, tuple(slice(None) for _ in want_shape)).reshape(want_shape)

  def _bf16(self, name: str) -> np.ndarray:
    """A read-only uint16 memmap of a BF16 tensor (numpy has no bfloat16; safetensors'
    numpy reader refuses it): the file's header gives the tensor's byte range."""
    real, path = self.names[name], self.file_of(name)
    if path not in self._headers:
      with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        self._headers[path] = (8 + size, json.loads(f.read(size)))
    start, header = self._headers[path]
    begin, _ = header[real]["data_offsets"]
    shape = tuple(header[real]["shape"])
    return np.memmap(path, dtype="<u2", mode="r", offset=start + begin, shape=shape)

  def _part(self, name: str, index) -> np.ndarray:
    """float32 `tensor[index]`, reading only that part of the file."""
    part = self._slice(name)
    if part.get_dtype() == "BF16":  # bfloat16 = the top 16 bits of a float32
      bits = np.asarray(self._bf16(name)[index], np.uint32)
      return (bits << 16).view(np.float32)
    return np.asarray(part[index], np.float32)

  def read(self, name: str, index: tuple[slice, ...], *, transpose: bool,
           columns: tuple[int, int] | None = None) -> np.ndarray:
    """float32 `value[index]` in our layout: of the `[out, in]` tensor when `transpose`; of
    its last-axis range `columns` when given."""
    index = tuple(index) + (slice(None),) * (len(self.shape(name)) - len(tuple(index)))
    if transpose:
      index = tuple(reversed(index))
    if columns is not None:
      last = index[-1] if index else slice(None)
      start, stop, _ = last.indices(columns[1] - columns[0])
      index = index[:-1] + (slice(columns[0] + start, columns[0] + stop),)
    part = self._part(name, index)
    return np.ascontiguousarray(part.T) if transpose else part

  def equal(self, a: str, b: str) -> bool:
    """Whether tensors `a` and `b` are equal, compared a block of rows at a time."""
    shape = self.shape(b)
    self.check(a, shape)
    self.check(b, shape)
    for start in range(0, shape[0] if shape else 1, _COMPARE_ROWS):
      rows = (slice(start, min(start + _COMPARE_ROWS, shape[0])),) if shape else ()
      if not np.array_equal(self._part(a, rows), self._part(b, rows)):
        return False
    return True


def gather(tensors: Tensors, entries: list[Entry], placement: Placement | None = None,
           prefix: str = "") -> Params:
  """The params of `entries`: host float32 arrays, or jax.Arrays read slice by slice into
  `placement(prefix + path, shape)`."""
  params: Params = {}
  for e in entries:
    tensors.check(e.name, e.shape)
    read = functools.partial(tensors.read, e.name, transpose=e.transpose, columns=e.columns)
    if placement is None:
      value = read(tuple(slice(None) for _ in e.ours))
    else:
      value = jax.make_array_from_callback(
          e.ours, placement(prefix + "/".join(e.path), e.ours), read)
    set_path(params, e.path, value)
  return params
