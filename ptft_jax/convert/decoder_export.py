"""A fine-tuned ptft_jax decoder -> a Hugging Face directory (or a PEFT LoRA adapter).

What `python -m ptft_jax.convert export-hf --workdir RUN --out DIR` does for a run whose
`config.model.name` is `gpt` (causal_lm, sft, or any task with the LM head):

  config.json              the model_type of the run's origin: a run fine-tuned from an
                           imported HF model (`config.init.pretrained_workdir` holding
                           hf_config.json, also through a chain of runs) gets that config
                           with only what its model config changed; otherwise the type its
                           model config is shaped like (`hf_decoder.choose_model_type`:
                           gpt2, llama, mistral, qwen2 or gemma) or one error line naming
                           the field no HF decoder expresses
  model.safetensors        the weights, LoRA adapters merged (W + alpha / rank * a @ b), in
   (or model-0000k-of-0000n.safetensors + model.safetensors.index.json above
                           --max-shard-size) HF names and layouts: Linear weights [out, in],
                           GPT-2's Conv1D [in, out] with c_attn = q|k|v; no lm_head when tied
  generation_config.json   the origin's, else the tokenizer's, else its bos / eos / pad ids
  tokenizer files          tokenizer.json, tokenizer_config.json, special_tokens_map.json,
                           chat_template.jinja: from the run dir, config.data.tokenizer.path
                           or the init workdir (the first that has tokenizer.json)

`--adapter-only` (a LoRA run fine-tuned from a base it did not change) writes the adapters
in HF PEFT's format instead: adapter_config.json (peft_type LORA, task_type CAUSAL_LM, r,
lora_alpha, target_modules as HF module names) and adapter_model.safetensors with
`base_model.model.<module>.lora_A.weight` [r, in] = a.T and `lora_B.weight` [out, r] = b.T
(PEFT adds (lora_alpha / r) * B @ A to the [out, in] weight: our (alpha / rank) * (a @ b).T).
GPT-2's packed c_attn gets one adapter whose rank is the sum of its q / k / v adapters'
(A = the a.T stacked, B block-diagonal; `rank_pattern` / `alpha_pattern` keep the scale).

Nothing is gathered whole: params are restored straight into shardings over all devices
(`train.placement`), and the files are written tensor by tensor: each HF tensor is built
from its leaves (one LoRA merge on the devices, one gather of that array to the host) and
streamed into its safetensors file, whose header is computed from the shapes first. With
several processes, all take part in each gather and process 0 writes. The directory is
written under a temporary name beside DIR and renamed at the end: a failed export leaves
no DIR, and an existing non-empty DIR is refused before anything is written.
"""

import dataclasses
import functools
import json
import math
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ptft_jax.convert import hf_decoder, safetensors_io
from ptft_jax.convert.safetensors_io import CONFIG_FILE
from ptft_jax.errors import CheckpointError, ConfigError, UserError
from ptft_jax.models import layout as model_layout

DEFAULT_MAX_SHARD_SIZE = "2GB"
GENERATION_CONFIG = "generation_config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
HF_CONFIG_COPY = "hf_config.json"  # what `convert hf` writes in an imported workdir
TOKENIZER_FILE = "tokenizer.json"
# Copied beside tokenizer.json (what transformers' AutoTokenizer and our loader read).
TOKENIZER_SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json",
                        "chat_template.jinja", "chat_template.json")
LORA = "lora"  # the params subtree of LoRA adapters (optim/lora.py)
DTYPES = {"float32": ("F32", np.dtype("<f4")), "float16": ("F16", np.dtype("<f2")),
          "bfloat16": ("BF16", None)}  # bfloat16: ml_dtypes, set in _numpy_dtype
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]i?B)?", re.I)
_UNITS = {"": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30}
_LAYER = re.compile(r"layer_(\d+)")
_INIT_CHAIN = 8  # runs followed back to an imported model
_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")

Tree = Mapping[str, Any]


# --- sizes, dtypes, host copies ----------------------------------------------------------------


def parse_size(size: int | str) -> int:
  """Bytes of `2GB` (10^9), `500MiB` (2^20), `12KB` or a plain integer; one-line UserError."""
  if isinstance(size, int):
    value = size
  else:
    match = _SIZE.fullmatch(str(size).strip())
    if not match:
      raise UserError(f"--max-shard-size {size!r}: use bytes or a number with KB, MB, GB "
                      "(or KiB, MiB, GiB), e.g. 2GB")
    value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])
  if value < 1:
    raise UserError(f"--max-shard-size {size!r}: must be at least 1 byte")
  return value


def _numpy_dtype(dtype: str) -> tuple[str, np.dtype]:
  if dtype not in DTYPES:
    raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
  tag, np_dtype = DTYPES[dtype]
  if np_dtype is None:
    import ml_dtypes

    np_dtype = np.dtype(ml_dtypes.bfloat16)
  return tag, np_dtype


def to_host(x) -> np.ndarray:
  """One array on the host: a numpy array as is, a jax.Array gathered (only this array; an
  array spread over several processes through `process_allgather`, which all join)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


# --- streamed safetensors ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Planned:
  """One tensor to write: its name, shape, and a function giving its float32 host value."""

  name: str
  shape: tuple[int, ...]
  value: Callable[[], np.ndarray]


def _header_bytes(tensors: Sequence[Planned], tag: str, itemsize: int) -> bytes:
  """The safetensors header (8-byte little-endian length + JSON padded to 8 bytes)."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for t in tensors:
    size = math.prod(t.shape) * itemsize
    header[t.name] = {"dtype": tag, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
    offset += size
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  return struct.pack("<Q", len(blob)) + blob


def write_safetensors_streamed(path: str | None, tensors: Sequence[Planned], dtype: str) -> int:
  """Writes one safetensors file tensor by tensor: the header from the shapes, then each
  value in turn (one tensor on the host at a time). Returns the bytes of tensor data.

  `path` None (processes other than 0): the values are still computed, since computing
  one may need every process (a gather), but nothing is written.
  """
  tag, np_dtype = _numpy_dtype(dtype)
  total = sum(math.prod(t.shape) for t in tensors) * np_dtype.itemsize
  f = open(path, "wb") if path is not None else None
  try:
    if f is not None:
      f.write(_header_bytes(tensors, tag, np_dtype.itemsize))
    for t in tensors:
      value = np.asarray(t.value())
      if value.shape != t.shape:
        raise CheckpointError(f"{t.name}: built with shape {value.shape}, expected {t.shape}")
      if f is not None:
        f.write(np.ascontiguousarray(value.astype(np_dtype)).tobytes())
  finally:
    if f is not None:
      f.close()
  return total


def plan_shards(tensors: Sequence[Planned], itemsize: int, max_bytes: int) -> list[list[Planned]]:
  """Tensors in order, cut into files of at most `max_bytes` of data (a larger tensor gets
  a file of its own), as transformers' save_pretrained cuts them."""
  shards: list[list[Planned]] = [[]]
  size = 0
  for t in tensors:
    n = math.prod(t.shape) * itemsize
    if shards[-1] and size + n > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += n
  return shards


def write_weight_files(directory: str | None, tensors: Sequence[Planned], *, dtype: str,
                       max_shard_size: int | str, stem: str = "model") -> list[str]:
  """`{stem}.safetensors`, or `{stem}-0000k-of-0000n.safetensors` + `{stem}.safetensors.
  index.json` when the data exceed `max_shard_size`. Returns the file names (index last)."""
  _, np_dtype = _numpy_dtype(dtype)
  shards = plan_shards(tensors, np_dtype.itemsize, parse_size(max_shard_size))
  if len(shards) == 1:
    names = [f"{stem}.safetensors"]
  else:
    names = [f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  total = 0
  for name, shard in zip(names, shards, strict=True):
    total += write_safetensors_streamed(
        os.path.join(directory, name) if directory else None, shard, dtype)
  if len(shards) > 1:
    index = {"metadata": {"total_size": total},
             "weight_map": {t.name: name for name, shard in zip(names, shards, strict=True)
                            for t in shard}}
    names.append(f"{stem}.safetensors.index.json")
    if directory:
      _write_json(os.path.join(directory, names[-1]), index)
  return names


def _write_json(path: str, obj) -> None:
  with open(path, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")


# --- params, one leaf at a time ----------------------------------------------------------------


def _find(tree: Tree, path: Sequence[str]):
  """(node at `path`, layer index or None): `layer_{i}` is also found in a scanned `layers`
  stack (the index is then applied by the caller); (None, None) when absent."""
  node, index = tree, None
  for key in path:
    if isinstance(node, Mapping) and key in node:
      node = node[key]
      continue
    match = _LAYER.fullmatch(key)
    if (match and index is None and isinstance(node, Mapping)
        and model_layout.SCANNED in node):
      node, index = node[model_layout.SCANNED], int(match.group(1))
      continue
    return None, None
  return node, index


@functools.lru_cache(maxsize=64)
def _merge_fn(sharding, scale: float):
  """One jitted merge per (output sharding, scale): compiled once per kernel shape."""
  def merge(w, a, b):
    delta = (a.astype(jnp.float32) @ b.astype(jnp.float32)) * scale
    return (w.astype(jnp.float32) + delta.reshape(w.shape)).astype(w.dtype)

  return jax.jit(merge, out_shardings=sharding)


def _merge(kernel, a, b, alpha: float):
  """optim.lora.merge_lora for one kernel: W + (alpha / rank) * (a @ b), in float32, back in
  W's dtype. On the devices (in W's sharding) for jax arrays."""
  scale = alpha / a.shape[-1]
  if isinstance(kernel, jax.Array):
    return _merge_fn(kernel.sharding, scale)(kernel, a, b)
  delta = (np.asarray(a, np.float32) @ np.asarray(b, np.float32)) * np.float32(scale)
  kernel = np.asarray(kernel)
  return (kernel.astype(np.float32) + delta.reshape(kernel.shape)).astype(kernel.dtype)


class Leaves:
  """A Model-layout params tree (`backbone`, `heads`, optionally `lora`) read leaf by leaf
  under looped paths (`backbone/layer_3/...` also from a scanned `layers` stack)."""

  def __init__(self, params: Tree, lora_alpha: float | None = None):
    self.params = params
    self.lora = params.get(LORA) or {}
    self.alpha = lora_alpha
    if self.lora and lora_alpha is None:
      raise CheckpointError("the params hold LoRA adapters but no lora alpha was given to "
                            "merge them")

  def raw(self, path: Sequence[str]):
    """The leaf at `path` as stored (jax or numpy), no merge; None when absent."""
    node, index = _find(self.params, path)
    if node is None or isinstance(node, Mapping):
      return None
    return node if index is None else node[index]

  def adapter(self, path: Sequence[str]):
    """(a, b) of the kernel at `path` (a layer's own rows of a scanned adapter), or None."""
    node, index = _find(self.lora, path)
    if not isinstance(node, Mapping) or "a" not in node:
      return None
    a, b = node["a"], node["b"]
    if index is not None and np.ndim(a) == 3:  # a scanned kernel's per-layer adapters [L, ...]
      a, b = a[index], b[index]
    elif index is not None:  # written before per-layer LoRA: a [L * in, rank], one b
      stacked, _ = _find(self.params, path)
      a = a.reshape(stacked.shape[0], -1, a.shape[-1])[index]
    return a, b

  def merged(self, path: Sequence[str]):
    """The leaf with its adapter (if any) merged: `optim.lora.merge_lora` for this leaf."""
    leaf = self.raw(path)
    if leaf is None:
      raise CheckpointError(f"the params have no {'/'.join(path)} (not the model's params)")
    ab = self.adapter(path)
    return leaf if ab is None else _merge(leaf, *ab, self.alpha)

  def host(self, path: Sequence[str]) -> np.ndarray:
    """`merged(path)` as float32 on the host (one gather of this leaf)."""
    return to_host(self.merged(path)).astype(np.float32)


def _tensor_value(leaves: Leaves, tensor: hf_decoder.HfTensor) -> np.ndarray:
  """One HF tensor in float32 from its leaves (transposed / packed as HF lays it out)."""
  out = None
  for part in tensor.parts:
    value = leaves.host(part.path)
    if part.transpose:
      value = value.T
    if part.columns is None:
      return np.ascontiguousarray(value)
    if out is None:
      out = np.empty(tensor.shape, np.float32)
    out[..., part.columns[0]:part.columns[1]] = value
  return out


def planned_tensors(model_type: str, model_config: Mapping[str, Any], params: Tree, *,
                    tied: bool, lora_alpha: float | None = None) -> list[Planned]:
  """The HF tensors of `params` in `model_type`'s names, each computed when written."""
  layout = hf_decoder.export_layout(model_type, model_config, tied=tied)
  leaves = Leaves(params, lora_alpha)
  for tensor in layout:
    for part in tensor.parts:
      leaf = leaves.raw(part.path)
      if leaf is None:
        raise CheckpointError(f"the params have no {'/'.join(part.path)} (needed for "
                              f"{tensor.name}; not a {model_type}-shaped model's params?)")
      want = part.ours
      if tuple(np.shape(leaf)) != tuple(want):
        raise CheckpointError(f"{'/'.join(part.path)} has shape {tuple(np.shape(leaf))}, the "
                              f"model config gives {tuple(want)}")
  return [Planned(t.name, t.shape, lambda t=t: _tensor_value(leaves, t)) for t in layout]


# --- directories ---------------------------------------------------------------------------------


def check_out_dir(out_dir: str) -> None:
  """`out_dir` is new or an empty directory (an export never writes over files)."""
  if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
    raise UserError(f"--out {out_dir} exists and is not an empty directory; choose a new "
                    "directory for the export")


class _Staging:
  """A temporary directory beside `out_dir`, renamed to it on success, removed on failure
  (process 0 only; the others get `path` None)."""

  def __init__(self, out_dir: str):
    self.out_dir = os.path.abspath(out_dir)
    self.path = None

  def __enter__(self) -> str | None:
    check_out_dir(self.out_dir)
    if jax.process_index() == 0:
      parent = os.path.dirname(self.out_dir)
      os.makedirs(parent, exist_ok=True)
      self.path = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out_dir)}.export-",
                                   dir=parent)
    return self.path

  def __exit__(self, kind, error, tb):
    if self.path is None:
      return
    if kind is not None:
      shutil.rmtree(self.path, ignore_errors=True)
      return
    try:
      umask = os.umask(0)
      os.umask(umask)
      os.chmod(self.path, 0o777 & ~umask)  # mkdtemp made it private
      check_out_dir(self.out_dir)  # still new (or empty): rename replaces an empty directory
      os.rename(self.path, self.out_dir)
    except BaseException:
      shutil.rmtree(self.path, ignore_errors=True)
      raise


def _copy_files(files: Mapping[str, str], directory: str | None) -> None:
  if directory is None:
    return
  for name, src in files.items():
    shutil.copyfile(src, os.path.join(directory, name))


def export_hf_decoder(model_config: Mapping[str, Any], params: Tree,
                      out_dir: str | os.PathLike, *, tied: bool,
                      hf_config: Mapping[str, Any] | None = None,
                      model_type: str | None = None, lora_alpha: float | None = None,
                      dtype: str = "float32",
                      max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                      generation_config: Mapping[str, Any] | None = None,
                      files: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Writes a decoder's params as a HF `*ForCausalLM` directory (written tensor by tensor).

  Args:
    model_config: `config.model` of a decoder (`name="gpt"` + TransformerConfig fields).
    params: Model-layout params `{"backbone", "heads"}` (looped or scanned layers; host
      numpy or jax.Arrays in any sharding), with a `lora` subtree when `lora_alpha` is given
      (merged tensor by tensor).
    out_dir: created (new or empty); written under a temporary name and renamed.
    tied: no untied `heads/lm`: the LM head is the embedding table.
    hf_config: the HF config to start from (an imported model's): kept but for what
      `model_config` changes (`hf_decoder.update_hf_config`). Default: `config_to_hf`.
    model_type: gpt2 / llama / mistral / qwen2 / gemma when no hf_config (default: chosen
      from the model config's shape).
    dtype: float32 (default), bfloat16 or float16 tensors.
    max_shard_size: above this, several files and `model.safetensors.index.json`.
    generation_config: written as generation_config.json when given.
    files: {file name in out_dir: source path} copied as they are (tokenizer files).

  Returns the config.json written.
  """
  if hf_config is not None:
    config = hf_decoder.update_hf_config(hf_config, model_config, tied=tied)
  else:
    config = hf_decoder.config_to_hf(model_config, model_type, tied=tied)
  for key in ("dtype", "torch_dtype"):  # transformers 5 reads dtype, 4 torch_dtype
    if key in config or not {"dtype", "torch_dtype"} & set(config):
      config[key] = dtype
  tensors = planned_tensors(config["model_type"], model_config, params, tied=tied,
                            lora_alpha=lora_alpha)
  with _Staging(os.fspath(out_dir)) as tmp:
    write_weight_files(tmp, tensors, dtype=dtype, max_shard_size=max_shard_size)
    if tmp is not None:
      _write_json(os.path.join(tmp, CONFIG_FILE), config)
      if generation_config is not None:
        _write_json(os.path.join(tmp, GENERATION_CONFIG), dict(generation_config))
      _copy_files(files or {}, tmp)
  return config


# --- PEFT adapters -------------------------------------------------------------------------------

_IN_LAYER = re.compile(r"^(.*?\.\d+\.)(.*)$")  # "model.layers.3.self_attn.q_proj" -> prefix, kind


def _kind(module: str) -> tuple[str, str]:
  """(layer prefix "model.layers.3." or "", module kind "self_attn.q_proj" / "lm_head")."""
  match = _IN_LAYER.match(module)
  return (match.group(1), match.group(2)) if match else ("", module)


@dataclasses.dataclass
class _Adapter:
  """One PEFT LoRA module and the kernels of ours (with their HfModule) adapted in it."""

  module: str
  width: int  # the module's output width
  parts: list[tuple[str, hf_decoder.HfModule]] = dataclasses.field(default_factory=list)


def _adapters(model_type: str, model_config: Mapping[str, Any], leaves: Leaves, *,
              tied: bool) -> tuple[list[_Adapter], list[str]]:
  """(the adapted HF modules in checkpoint order, every adaptable module of the model).

  Raises a one-line ConfigError for adapters on params that are no HF Linear / Conv1D
  module (embeddings): PEFT's LoRA for those is another format; merge them instead.
  """
  layout = hf_decoder.export_layout(model_type, model_config, tied=tied)
  modules = hf_decoder.kernel_modules(layout)
  looped = lambda p: re.sub(r"/layers/", "/layer_*/", re.sub(r"/layer_\d+/", "/layer_*/", p))
  known = {looped(p) for p in modules}
  lora_paths = sorted({"/".join(str(getattr(k, "key", k)) for k in kp[:-1])
                       for kp, _ in jax.tree_util.tree_leaves_with_path(leaves.lora)})
  strange = [p for p in lora_paths if looped(p) not in known]
  if strange:
    raise ConfigError(
        f"--adapter-only: the LoRA adapter on {strange[0]} has no PEFT LoRA module in "
        f"{model_type} (only attention / MLP projections and an untied LM head); export "
        "without --adapter-only to merge it")
  out: dict[str, _Adapter] = {}
  for path, module in modules.items():
    if leaves.adapter(path.split("/")) is not None:
      entry = out.setdefault(module.module, _Adapter(module.module, module.width))
      entry.parts.append((path, module))
  return list(out.values()), sorted({m.module for m in modules.values()})


def _peft_pair(adapter: _Adapter, leaves: Leaves, rank: int) -> tuple[np.ndarray, np.ndarray]:
  """(lora_A [rank * parts, in], lora_B [out, rank * parts]) of one module, float32: a.T and
  b.T; a packed module's parts stack their A rows and lay their B blocks on its diagonal."""
  rows, b = [], np.zeros((adapter.width, rank * len(adapter.parts)), np.float32)
  for k, (path, module) in enumerate(adapter.parts):
    a_part, b_part = (to_host(x).astype(np.float32) for x in leaves.adapter(path.split("/")))
    if a_part.shape[-1] != rank:
      raise CheckpointError(f"the LoRA adapter of {path} has rank {a_part.shape[-1]}, the "
                            f"others {rank}; PEFT needs one rank per module kind")
    rows.append(a_part.T)
    start, stop = module.columns or (0, adapter.width)
    b[start:stop, k * rank:(k + 1) * rank] = b_part.T
  return np.ascontiguousarray(np.concatenate(rows, axis=0)), b


def _peft_names(adapters: list[_Adapter], all_modules: list[str]) -> dict[str, str]:
  """{module: its name in target_modules / rank_pattern}. When every layer has the same
  adapted kinds (with the same parts of a packed module): the kind (`q_proj`; `attn.c_proj`
  where the last name alone would also match another kind, as GPT-2's mlp.c_proj);
  otherwise the full module paths."""
  layers = {prefix for prefix, _ in map(_kind, all_modules) if prefix}
  kinds_by_layer: dict[str, set[tuple[str, tuple[str, ...]]]] = {}
  for a in adapters:
    prefix, kind = _kind(a.module)
    if prefix:
      parts = tuple(path.rsplit("/", 2)[-2] for path, _ in a.parts)  # query, value, ...
      kinds_by_layer.setdefault(prefix, set()).add((kind, parts))
  uniform = not kinds_by_layer or (
      set(kinds_by_layer) == layers and len({frozenset(v) for v in kinds_by_layer.values()}) == 1)
  if not uniform:
    return {a.module: a.module for a in adapters}
  all_kinds = {kind for _, kind in map(_kind, all_modules)}
  last = lambda kind: kind.rsplit(".", 1)[-1]
  out = {}
  for a in adapters:
    kind = _kind(a.module)[1]
    unique = sum(last(k) == last(kind) for k in all_kinds) == 1
    out[a.module] = last(kind) if unique else kind
  return out


def export_hf_adapter(model_config: Mapping[str, Any], params: Tree,
                      out_dir: str | os.PathLike, *, model_type: str, lora_alpha: float,
                      base_model: str, tied: bool,
                      files: Mapping[str, str] | None = None) -> dict[str, Any]:
  """Writes the LoRA adapters of `params` as a HF PEFT adapter directory.

  `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out_dir)` then
  computes what `params` with the adapters merged compute, when the base is the HF export
  of `params` without the `lora` subtree. Every adapter must have one rank. `files` are
  copied as they are (tokenizer files).

  Returns the adapter_config.json written.
  """
  leaves = Leaves(params, lora_alpha)
  if not leaves.lora:
    raise UserError("--adapter-only: the params hold no LoRA adapters; export the model "
                    "without --adapter-only")
  adapters, all_modules = _adapters(model_type, model_config, leaves, tied=tied)
  if not adapters:
    raise ConfigError(f"--adapter-only: no LoRA adapter sits on a {model_type} module")
  rank = int(np.shape(leaves.adapter(adapters[0].parts[0][0].split("/"))[0])[-1])
  names = _peft_names(adapters, all_modules)
  rank_pattern, alpha_pattern = {}, {}
  for a in adapters:  # a packed module (GPT-2's c_attn) has rank and alpha times its parts
    if len(a.parts) > 1:
      rank_pattern[names[a.module]] = rank * len(a.parts)
      alpha_pattern[names[a.module]] = lora_alpha * len(a.parts)
  config = {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
      "r": rank, "lora_alpha": lora_alpha, "target_modules": sorted(set(names.values())),
      "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
      "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": model_type == "gpt2",
      "use_rslora": False, "use_dora": False, "init_lora_weights": True,
      "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
      "layers_pattern": None, "revision": None,
  }
  pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

  def pair(a: _Adapter, which: int) -> np.ndarray:
    if a.module not in pairs:
      pairs.clear()  # one module's pair on the host at a time
      pairs[a.module] = _peft_pair(a, leaves, rank)
    return pairs[a.module][which]

  tensors = []
  for a in adapters:
    r = rank * len(a.parts)
    n_in = int(np.shape(leaves.raw(a.parts[0][0].split("/")))[0])
    prefix = f"base_model.model.{a.module}"
    tensors.append(Planned(f"{prefix}.lora_A.weight", (r, n_in), lambda a=a: pair(a, 0)))
    tensors.append(Planned(f"{prefix}.lora_B.weight", (a.width, r), lambda a=a: pair(a, 1)))
  with _Staging(os.fspath(out_dir)) as tmp:
    write_safetensors_streamed(os.path.join(tmp, ADAPTER_WEIGHTS) if tmp else None, tensors,
                               "float32")
    if tmp is not None:
      _write_json(os.path.join(tmp, ADAPTER_CONFIG), config)
    _copy_files(files or {}, tmp)
  return config


# --- runs ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunOrigin:
  """Where a decoder run came from: the HF config of the imported model it was fine-tuned
  from (through a chain of runs), and the files found along the way."""

  hf_config: dict | None = None
  hf_config_path: str = ""
  init_dirs: list[str] = dataclasses.field(default_factory=list)


def _resolve_dir(path: str, workdir: str) -> str:
  """A path from a run's config: as given (relative to the working directory), else
  relative to the run's parent directory."""
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  beside = os.path.join(os.path.dirname(workdir), path)
  return os.path.abspath(beside if os.path.exists(beside) else path)


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: cannot parse: {(str(e).splitlines() or ['?'])[0]}") from None


def run_origin(workdir: str, config: Mapping[str, Any]) -> RunOrigin:
  """Follows `config.init.pretrained_workdir` back (runs fine-tuned from runs) to an imported
  HF model (a workdir holding hf_config.json), collecting the init directories."""
  origin = RunOrigin()
  seen = {os.path.abspath(workdir)}
  here, cfg = workdir, config
  for _ in range(_INIT_CHAIN):
    init = ((cfg.get("init") or {}).get("pretrained_workdir") or "") if cfg else ""
    if not init:
      break
    init = _resolve_dir(str(init), here)
    if init in seen or not os.path.isdir(init):
      break
    seen.add(init)
    origin.init_dirs.append(init)
    hf_path = os.path.join(init, HF_CONFIG_COPY)
    if os.path.isfile(hf_path):  # an imported workdir
      origin.hf_config, origin.hf_config_path = _read_json(hf_path), hf_path
      break
    run_config = os.path.join(init, CONFIG_FILE)
    cfg = _read_json(run_config) if os.path.isfile(run_config) else None
    if isinstance(cfg, dict) and "model_type" in cfg:  # a HF directory itself
      origin.hf_config, origin.hf_config_path = cfg, run_config
      break
    here = init
  return origin


def tokenizer_files(workdir: str, config: Mapping[str, Any],
                    origin: RunOrigin) -> tuple[dict[str, str], str]:
  """({file name: source path} of the tokenizer to ship, the directory it came from):
  the first of the run dir, config.data.tokenizer.path and the init directories that has a
  tokenizer.json. ({}, "") when none does."""
  from ptft_jax.data.text.sources import resolve_path

  candidates = [workdir]
  named = ((config.get("data") or {}).get("tokenizer") or {})
  named = named.get("path", "") if isinstance(named, Mapping) else named
  if named:
    candidates.append(_resolve_dir(resolve_path(str(named)), workdir))
  candidates += origin.init_dirs
  for where in candidates:
    file = where if os.path.isfile(where) else os.path.join(where, TOKENIZER_FILE)
    if not os.path.isfile(file):
      continue
    folder = os.path.dirname(file)
    files = {TOKENIZER_FILE: file}
    files.update({n: os.path.join(folder, n) for n in TOKENIZER_SIDE_FILES
                  if os.path.isfile(os.path.join(folder, n))})
    return files, folder
  return {}, ""


def generation_config(origin: RunOrigin, tokenizer_dir: str) -> dict[str, Any] | None:
  """The origin's generation_config.json, else the tokenizer directory's, else the
  tokenizer's bos / eos / pad ids (None without a tokenizer)."""
  for folder in origin.init_dirs + ([tokenizer_dir] if tokenizer_dir else []):
    path = os.path.join(folder, GENERATION_CONFIG)
    if os.path.isfile(path):
      return _read_json(path)
  ids = token_ids(tokenizer_dir)
  return ids or None


def token_ids(tokenizer_dir: str) -> dict[str, int]:
  """bos_token_id / eos_token_id / pad_token_id of a tokenizer directory ({} if none)."""
  if not tokenizer_dir:
    return {}
  from ptft_jax.data.text import hf_tokenizer

  tok = hf_tokenizer.load_hf_tokenizer(tokenizer_dir, "the run's tokenizer")
  out = dict(zip(_TOKEN_ID_KEYS, (tok.bos_id, tok.eos_id, tok.pad_id), strict=True))
  return {k: v for k, v in out.items() if v is not None}


@dataclasses.dataclass
class DecoderExport:
  """What `export_decoder_run` wrote."""

  model_type: str
  config: dict  # config.json, or adapter_config.json for an adapter
  adapter: bool
  merged: bool  # LoRA adapters were merged into the weights
  files: list[str]
  tokenizer: str  # where the tokenizer files came from ("" = none found)


def _lora_alpha(config: Mapping[str, Any], workdir: str) -> float:
  lora = config.get("lora") or {}
  try:
    return float(lora["alpha"])
  except (KeyError, TypeError, ValueError):
    raise CheckpointError(f"--workdir {workdir}: the checkpoint holds LoRA adapters but "
                          "config.json gives no lora.alpha to merge them") from None


def _restore(where: str, step: int, mesh) -> Tree:
  from ptft_jax.train import checkpoint, placement

  target = placement.layout(placement.import_mesh() if mesh is None else mesh)
  loaded, _ = checkpoint.load_params(where, step=step, sharding=target)
  return loaded["params"]


def _check_base_unchanged(workdir: str, params: Tree, origin: RunOrigin, mesh) -> None:
  """The run's params outside `lora` equal its init's (what the adapter applies to),
  compared leaf by leaf on the devices."""
  from ptft_jax.train import placement

  if not origin.init_dirs:
    raise UserError(f"--adapter-only: {workdir} has no config.init.pretrained_workdir (its base "
                    "weights exist only in this run); export the merged model instead")
  init = origin.init_dirs[0]
  base = {k: v for k, v in params.items() if k != LORA}
  try:  # a run (LoRA merged), an imported workdir or a HF directory
    _, theirs = placement.load_params(
        init, mesh=placement.import_mesh() if mesh is None else mesh)
  except UserError as e:
    raise CheckpointError(f"--adapter-only: cannot read the run's base {init} to check that its "
                          f"weights are unchanged: {safetensors_io.first_line(e)}") from None
  theirs = {"/".join(p): v for p, v in safetensors_io.flatten(
      model_layout.match_layout(theirs, base))}
  for path, value in safetensors_io.flatten(base):
    key = "/".join(path)
    other = theirs.get(key)
    if other is None or tuple(other.shape) != tuple(value.shape) or not bool(
        jnp.array_equal(value, other)):
      raise UserError(
          f"--adapter-only: {key} differs from the init {init}'s (the run trained more than "
          "its LoRA adapters); export the merged model instead (without --adapter-only)")


def export_decoder_run(workdir: str, config: Mapping[str, Any], out_dir: str, *,
                       where: str, step: int, adapter_only: bool = False,
                       max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
                       dtype: str = "float32", base_model: str | None = None,
                       mesh=None) -> DecoderExport:
  """Exports checkpoint `step` of `where` (the run or its best/) of decoder run `workdir`
  (its parsed config.json `config`) to `out_dir`; see the module docstring."""
  model_config = ml_collections.ConfigDict(dict(config["model"]))
  task = config.get("task") or {}
  parse_size(max_shard_size)
  _numpy_dtype(dtype)
  check_out_dir(out_dir)
  params = _restore(where, step, mesh)
  tied = not (params.get("heads") or {}).get("lm")
  if tied and task.get("tied") is False:
    raise CheckpointError(f"--workdir {workdir}: config.task.tied is false but the checkpoint "
                          "has no heads/lm/output/kernel")
  if set(params.get("heads") or {}) - {"lm"}:
    raise CheckpointError(f"--workdir {workdir}: the checkpoint has heads "
                          f"{sorted(set(params['heads']) - {'lm'})} besides the LM head; "
                          "export-hf writes causal LMs")
  has_lora = bool(params.get(LORA))
  alpha = _lora_alpha(config, workdir) if has_lora else None
  origin = run_origin(workdir, config)
  files, tokenizer_dir = tokenizer_files(workdir, config, origin)
  if origin.hf_config is not None:
    model_type = hf_decoder.model_type_of(origin.hf_config, origin.hf_config_path)
  else:
    model_type = hf_decoder.choose_model_type(model_config)
  if adapter_only:
    if not has_lora:
      raise UserError(f"--adapter-only: {workdir}'s checkpoint holds no LoRA adapters "
                      "(config.lora.rank 0, or --checkpoint=best, which is merged); export "
                      "without --adapter-only")
    if origin.hf_config is not None:  # the base computes what the run's model config says
      base = hf_decoder.config_from_hf(origin.hf_config, origin.hf_config_path)
      if not hf_decoder.same_architecture(base, model_config):
        raise UserError(f"--adapter-only: the run's model config differs from its base's "
                        f"{origin.hf_config_path}; export the merged model instead")
    else:
      hf_decoder.config_to_hf(model_config, model_type, tied=tied)  # one the base can have
    _check_base_unchanged(workdir, params, origin, mesh)
    name = base_model or (origin.hf_config or {}).get("_name_or_path") or origin.init_dirs[0]
    written = export_hf_adapter(model_config, params, out_dir, model_type=model_type,
                                lora_alpha=alpha, base_model=name, tied=tied, files=files)
    return DecoderExport(model_type, written, True, False, _listing(out_dir), tokenizer_dir)
  gen = generation_config(origin, tokenizer_dir)
  if origin.hf_config is not None:
    written = export_hf_decoder(model_config, params, out_dir, tied=tied,
                                hf_config=origin.hf_config, lora_alpha=alpha, dtype=dtype,
                                max_shard_size=max_shard_size, generation_config=gen,
                                files=files)
  else:
    hf = hf_decoder.config_to_hf(model_config, model_type, tied=tied)
    # The tokenizer's special ids; none known: null (not the HF class's defaults, which
    # may lie outside this vocabulary, e.g. GPT-2's 50256).
    hf.update({k: None for k in _TOKEN_ID_KEYS}, **token_ids(tokenizer_dir))
    written = export_hf_decoder(model_config, params, out_dir, tied=tied, hf_config=hf,
                                lora_alpha=alpha, dtype=dtype, max_shard_size=max_shard_size,
                                generation_config=gen, files=files)
  return DecoderExport(model_type, written, False, has_lora, _listing(out_dir), tokenizer_dir)


def _listing(out_dir: str) -> list[str]:
  """The files written (process 0; the others wrote nothing)."""
  return sorted(os.listdir(out_dir)) if jax.process_index() == 0 else []


