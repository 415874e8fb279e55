"""Small helpers used across packages: one helper per small job.

Imports nothing from ptft_jax, so every package may import it.

The file helpers at the end (`is_remote` ... `move_path`) are how ptft_jax touches a run
directory (a workdir): a local or mounted path, or a `gs://bucket/...` URL. Local paths get
exactly the `os` calls they always did (atomic writes by rename); a URL goes through fsspec
(gcsfs for gs://), the library etils.epath, and so Orbax, uses for gs:// without TensorFlow.
"""

import json
import os
import re
import shutil
from typing import Any

import jax


def path_str(path) -> str:
  """'backbone/layer_0/kernel' for a jax key path (dict keys, attribute names, indices)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def tree_paths(tree) -> Any:
  """A tree of the same structure whose leaves are their own path strings."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def flat_paths(tree) -> dict[str, Any]:
  """{"a/b/0/c": leaf} for every leaf of `tree`, in tree order."""
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def unflatten_paths(flat: dict[str, Any]) -> dict:
  """{"a/b/c": v} -> {"a": {"b": {"c": v}}}: the inverse of `flat_paths` for dict trees."""
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


# --- run-directory files: a local path or a gs:// URL -------------------------------------------

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")
REMOTE_SCHEMES = ("gs",)  # the URL schemes a workdir may have (tested against a fake GCS)


def is_remote(path) -> bool:
  """Whether `path` is a URL (`gs://bucket/run`) rather than a local path."""
  return bool(_URL.match(os.fspath(path)))


def _remote_fs(path):
  """The fsspec file system of a URL (gcsfs for gs://), without its listing cache.

  Checkpoint arrays are written by TensorStore and, on several hosts, by other processes:
  a cached listing would not see them, and `complete_steps` must.
  """
  import fsspec  # late: local runs never need it

  return fsspec.filesystem(os.fspath(path).split("://", 1)[0], use_listings_cache=False)


def absolute_path(path) -> str:
  """`os.path.abspath` for a local path; a URL as it is (without a trailing slash).

  (`os.path.abspath("gs://b/r")` would be the local `<cwd>/gs:/b/r`.) `os.path.join`,
  `dirname` and `basename` already treat a URL's slashes right on POSIX.
  """
  path = os.fspath(path)
  return path.rstrip("/") if is_remote(path) else os.path.abspath(path)


def real_path(path) -> str:
  """`os.path.realpath` for a local path (symlinks resolved); a URL as it is."""
  path = os.fspath(path)
  return path.rstrip("/") if is_remote(path) else os.path.realpath(path)


def path_exists(path) -> bool:
  """Whether a file or directory (for a URL: an object, or a prefix with objects) exists."""
  return _remote_fs(path).exists(path) if is_remote(path) else os.path.exists(path)


def is_file(path) -> bool:
  return _remote_fs(path).isfile(path) if is_remote(path) else os.path.isfile(path)


def is_dir(path) -> bool:
  """Whether `path` is a directory (for a URL: a prefix that holds objects)."""
  return _remote_fs(path).isdir(path) if is_remote(path) else os.path.isdir(path)


def list_dir(path) -> list[str]:
  """The names in directory `path` (as `os.listdir`; for a URL, the next level of names)."""
  if not is_remote(path):
    return os.listdir(path)
  here = os.fspath(path).split("://", 1)[1].rstrip("/")
  names = [n.rstrip("/").rsplit("/", 1)[-1] for n in _remote_fs(path).ls(path, detail=False)
           if n.rstrip("/") != here]  # a "dir/" placeholder object lists as the dir itself
  return sorted(set(names))


def make_dirs(path) -> None:
  """`os.makedirs(path, exist_ok=True)`; nothing for a URL (object stores have no folders)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def read_bytes(path) -> bytes:
  """The whole file at `path`, as bytes."""
  if is_remote(path):
    return _remote_fs(path).cat_file(path)
  with open(path, "rb") as f:
    return f.read()


def read_text(path) -> str:
  """The whole text file at `path` (UTF-8)."""
  if is_remote(path):
    with _remote_fs(path).open(path, "r", encoding="utf-8") as f:
      return f.read()
  with open(path, encoding="utf-8") as f:
    return f.read()


def read_json(path) -> Any:
  """The JSON value in the file at `path`."""
  return json.loads(read_text(path))


def write_text_atomic(path: str, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically: see `write_bytes_atomic`."""
  write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically: a crash leaves the old file or the new one, never half.

  Locally through a temporary file and a rename; a URL's object is written directly (an
  object store replaces an object whole or not at all, and has no atomic rename).
  """
  if is_remote(path):
    _remote_fs(path).pipe_file(path, data)
    return
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json_atomic(path: str, obj, *, sort_keys: bool = False) -> None:
  """Writes `obj` as indented JSON to `path` atomically (see `write_text_atomic`)."""
  write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=sort_keys))


def copy_file_atomic(source: str, target: str) -> None:
  """Copies file `source` to `target` (either may be a URL); the target appears whole or not."""
  if not is_remote(source) and not is_remote(target):
    tmp = f"{target}.tmp.{os.getpid()}"
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return
  with (_remote_fs(source).open(source, "rb") if is_remote(source) else open(source, "rb")) as f:
    write_bytes_atomic(target, f.read())


def remove_tree(path) -> None:
  """Deletes directory `path` and everything under it (`shutil.rmtree`; for a URL, the prefix)."""
  if is_remote(path):
    _remote_fs(path).rm(path, recursive=True)
  else:
    shutil.rmtree(path)


def move_path(source, target) -> None:
  """Renames `source` to `target` (a file or a directory, on one file system).

  Locally `os.rename` (atomic). An object store has no rename: every object under the
  URL `source` is copied and then deleted, so a kill halfway leaves both, never neither.
  """
  if is_remote(source):
    _remote_fs(source).mv(source, target, recursive=True)
  else:
    os.rename(source, target)
