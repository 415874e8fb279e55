"""Meshes, sharding rules, and host-local <-> global batches.

Mesh. Axes are always ("data", "fsdp", "tensor"). `config.mesh.{data,fsdp,tensor}`
are the sizes within one slice (one of them may be -1: the rest of the devices).
On a multi-slice TPU (devices with several `slice_index` values)
`config.mesh.dcn_{data,fsdp,tensor}` split the slices (default: `dcn_data=-1`,
pure data parallelism across slices, whose network is slower), and the mesh is
built by `mesh_utils.create_hybrid_device_mesh`; each mesh axis is then
`ici size * dcn size` long.

Batches are split over ("fsdp", "data") (see BATCH_AXES for why in that order):
every process loads its own rows and `host_to_global` assembles the global array
without copying between hosts.

Parameters: logical axes from a path table, mesh axes from rules.
Every parameter gets logical axis names ("embed", "mlp", "heads", "vocab",
"conv_in", "conv_out") from an ordered table of `(path regex, axes)`: the first
regex that fully matches its path (`backbone/layer_0/attention/query/kernel`)
*and* names as many axes as the parameter has dimensions wins
(`config.sharding.param_axes` is tried before `PARAM_AXES`). Then
`config.sharding.rules` maps each logical axis to a mesh axis (default: embed
and conv_in -> fsdp, mlp / heads / vocab / conv_out -> tensor; "" keeps it
whole). A dimension that its mesh axis does not divide stays whole (per
dimension), and `Layout.summary()` lists those once. Leaves no rule names
(biases, norms, scalars, RNG, step) are replicated.

Why a path table instead of annotating each Linen module
(`nn.with_logical_partitioning`): it covers every model family, including ones
written without sharding in mind and imported checkpoints, with no change to
model code, and the same table shards the optimizer state: the optax state
leaves that mirror a parameter (Adam's mu and nu, EMA weights) sit under that
parameter's own path, so `Layout.shardings` gives them the parameter's
sharding by reading the trailing dict keys of each leaf's path.

Activations. A model may pin its activations' batch axis to the batch axes
(`constrain_batch`, e.g. the residual stream between transformer layers); that
needs the mesh in context while the step is traced, which `traced_in(mesh, fn)`
provides (the train loop jits its steps through it). Without a mesh in context
the constraint does nothing. Why: inside a scanned layer stack (a while loop)
GSPMD otherwise takes the activations' layout from the fsdp-split weights
(hidden split, batch whole) and all-gathers activations instead of weights; see
docs/scaling.md.
"""

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ptft_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
# The batch is split over fsdp x data, fsdp-major. Not ("data", "fsdp"): with data, fsdp and
# tensor all > 1 and kernels split over (fsdp, tensor), XLA (jax 0.10.2, Shardy and GSPMD
# alike) partitions the backward pass of a dense layer after a ReLU wrongly (a
# collective-permute between the two batch orders; gradients off by up to 60% for an MLP,
# a CNN and BERT with a classifier, while the loss is right). tests/test_sharding.py checks
# gradients on a 2 x 2 x 2 mesh. Each process's rows may then be strided in the global batch,
# which `jax.make_array_from_process_local_data` handles; no result depends on the row order.
BATCH_AXES = ("fsdp", "data")

LogicalAxes = tuple[str | None, ...]

# (path regex, logical axes): the first fullmatch with as many axes as the leaf has dims wins.
PARAM_AXES: tuple[tuple[str, LogicalAxes], ...] = (
    # Scanned transformer stacks (model.scan_layers): a leading [num_layers] axis, kept whole.
    (r".*/layers/attention/(query|key|value)/kernel", (None, "embed", "heads")),
    (r".*/layers/attention/(query|key|value)/bias", (None, "heads")),
    (r".*/layers/attention/out/kernel", (None, "heads", "embed")),
    (r".*/layers/mlp/(intermediate|gate)/kernel", (None, "embed", "mlp")),
    (r".*/layers/mlp/(intermediate|gate)/bias", (None, "mlp")),
    (r".*/layers/mlp/output/kernel", (None, "mlp", "embed")),
    (r".*(position|token_type)_embeddings/embedding", (None, "embed")),
    (r".*/embedding", ("vocab", "embed")),  # word embeddings (also tied output layers)
    (r".*/(query|key|value)/kernel", ("embed", "heads")),
    (r".*/(query|key|value)/bias", ("heads",)),
    (r".*/attention/out/kernel", ("heads", "embed")),
    (r".*/mlp/(intermediate|gate)/kernel", ("embed", "mlp")),  # gate: SwiGLU / GeGLU
    (r".*/mlp/(intermediate|gate)/bias", ("mlp",)),
    (r".*/intermediate/kernel", ("embed", "mlp")),
    (r".*/intermediate/bias", ("mlp",)),
    (r"heads/lm/output/kernel", ("embed", "vocab")),  # an untied LM head [hidden, vocab]
    (r".*/mlp/output/kernel", ("mlp", "embed")),
    (r".*/kernel", (None, None, "conv_in", "conv_out")),  # 2-D convolution [h, w, in, out]
    (r".*/kernel", (None, "conv_in", "conv_out")),  # 1-D convolution [w, in, out]
    (r".*/kernel", ("embed", "mlp")),  # any other dense layer [in, out]
)

# logical axis -> mesh axis ("" or None: not split).
DEFAULT_RULES: dict[str, str] = {
    "embed": "fsdp", "mlp": "tensor", "heads": "tensor", "vocab": "tensor",
    "conv_in": "fsdp", "conv_out": "tensor",
}


def _resolve(sizes: dict[str, int], num: int, what: str, key: str) -> tuple[int, ...]:
  """Fills the one -1 in `sizes` so that their product is `num`."""
  values = [int(v) for v in sizes.values()]
  if values.count(-1) > 1:
    raise ConfigError(f"{key}: at most one of {' / '.join(sizes)} may be -1")
  known = int(np.prod([v for v in values if v != -1]))
  if -1 in values:
    if known <= 0 or num % known:
      raise ConfigError(f"{key}: {sizes} does not divide {num} {what}")
    values[values.index(-1)] = num // known
  if int(np.prod(values)) != num:
    raise ConfigError(
        f"{key}: {sizes} needs {int(np.prod(values))} {what} but {num} are available")
  return tuple(values)


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """Resolves the config's {data, fsdp, tensor} sizes; one of them may be -1 (the rest)."""
  sizes = {a: int(mesh_config.get(a, 1)) for a in MESH_AXES}
  return _resolve(sizes, num_devices, "devices", "config.mesh")


def hybrid_mesh_shape(mesh_config: Mapping[str, int], num_devices: int,
                      num_slices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(per-slice shape, across-slices shape) of a multi-slice mesh, in MESH_AXES order.

  `config.mesh.{data,fsdp,tensor}` resolve over the devices of one slice and
  `config.mesh.dcn_{data,fsdp,tensor}` (default dcn_data=-1) over the slices.
  """
  if num_slices < 1 or num_devices % num_slices:
    raise ConfigError(f"{num_devices} devices do not split into {num_slices} equal slices")
  dcn = {f"dcn_{a}": int(mesh_config.get(f"dcn_{a}", -1 if a == "data" else 1))
         for a in MESH_AXES}
  return (mesh_shape(mesh_config, num_devices // num_slices),
          _resolve(dcn, num_slices, "slices", "config.mesh"))


def num_slices(devices: Sequence[Any]) -> int:
  """Distinct `slice_index` values (1 on GPUs, CPUs and single-slice TPUs)."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def device_array(mesh_config: Mapping[str, int], devices: Sequence[Any]) -> np.ndarray:
  """Devices arranged as the multi-slice mesh: slices tile the dcn axes."""
  ici, dcn = hybrid_mesh_shape(mesh_config, len(devices), num_slices(devices))
  return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)


def make_mesh(mesh_config: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over all devices (or `devices`), multi-slice aware."""
  devices = jax.devices() if devices is None else list(devices)
  mesh_config = mesh_config or {"data": -1}
  auto = (AxisType.Auto,) * 3
  if num_slices(devices) > 1:
    return Mesh(device_array(mesh_config, devices), MESH_AXES, axis_types=auto)
  ici, dcn = hybrid_mesh_shape(mesh_config, len(devices), 1)
  del dcn  # all 1 in one slice (a dcn size > 1 raised above)
  return jax.make_mesh(ici, MESH_AXES, axis_types=auto, devices=devices)


# --- sharding rules -------------------------------------------------------------------------


def param_path(key_path) -> str:
  """'backbone/layer_0/kernel': the trailing dict keys of a leaf's key path.

  For params that is the whole path; for optax state leaves that mirror a
  parameter (`.../mu/backbone/layer_0/kernel`) it is that parameter's path.
  """
  names = []
  for k in reversed(key_path):
    if not isinstance(k, jax.tree_util.DictKey):
      break
    names.append(str(k.key))
  return "/".join(reversed(names))


def logical_axes(path: str, ndim: int,
                 table: Sequence[tuple[str, LogicalAxes]] = PARAM_AXES) -> LogicalAxes | None:
  """The logical axes of the first `(regex, axes)` that fullmatches `path` with `ndim` axes."""
  for regex, axes in table:
    if len(axes) == ndim and re.fullmatch(regex, path):
      return tuple(axes)
  return None


def _mesh_axes(value, key: str) -> tuple[str, ...]:
  """A rule value ("fsdp", "", None, or a sequence of mesh axes) as a tuple of mesh axes."""
  axes = (value,) if isinstance(value, str) or value is None else tuple(value)
  axes = tuple(a for a in axes if a)
  for a in axes:
    if a not in MESH_AXES:
      raise ConfigError(f"{key}={value!r}: {a!r} is not a mesh axis; use one of {MESH_AXES} "
                        "or '' (not split)")
  return axes


@dataclasses.dataclass
class Layout:
  """How a run's arrays lie on the mesh: logical-axis rules applied by parameter path.

  Attributes:
    mesh: the ("data", "fsdp", "tensor") mesh.
    rules: logical axis -> mesh axes, e.g. {"embed": ("fsdp",), "mlp": ("tensor",)}.
    table: ordered (path regex, logical axes); see `logical_axes`.
    replicated_dims: dimensions left whole because their mesh axis does not
      divide them ("path[dim]" -> why), filled in as shardings are computed.
  """

  mesh: Mesh
  rules: dict[str, tuple[str, ...]] = dataclasses.field(
      default_factory=lambda: {k: (v,) for k, v in DEFAULT_RULES.items()})
  table: tuple[tuple[str, LogicalAxes], ...] = PARAM_AXES
  replicated_dims: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> why

  @classmethod
  def from_config(cls, config, mesh: Mesh) -> "Layout":
    """Reads `config.sharding.rules` and `config.sharding.param_axes` (both optional)."""
    sc = config.get("sharding") or {}
    rules = dict(DEFAULT_RULES, **dict(sc.get("rules") or {}))
    extra = []
    for i, entry in enumerate(sc.get("param_axes") or ()):
      try:
        regex, axes = entry
        re.compile(regex)
      except (TypeError, ValueError, re.error) as e:
        raise ConfigError(f"config.sharding.param_axes[{i}]={entry!r}: expected "
                          f"(path regex, logical axes) ({e})") from None
      for a in axes:
        if a is not None and a not in rules:
          raise ConfigError(f"config.sharding.param_axes[{i}]: logical axis {a!r} has no entry "
                            f"in config.sharding.rules (known: {sorted(rules)})")
      extra.append((regex, tuple(axes)))
    return cls(mesh, {k: _mesh_axes(v, f"config.sharding.rules.{k}") for k, v in rules.items()},
               tuple(extra) + PARAM_AXES)

  def spec(self, path: str, shape: Sequence[int]) -> PartitionSpec:
    """The PartitionSpec of a leaf at `path`; records dimensions left whole."""
    axes = logical_axes(path, len(shape), self.table)
    if axes is None:
      return PartitionSpec()
    used: set[str] = set()
    spec = []
    for dim, (size, name) in enumerate(zip(shape, axes, strict=True)):
      mesh_axes = tuple(a for a in self.rules.get(name, ()) if a not in used) if name else ()
      split = int(np.prod([self.mesh.shape[a] for a in mesh_axes]))
      if mesh_axes and size % split:
        self.replicated_dims[f"{path}[{dim}]"] = (
            f"{path} dim {dim} ({name}, size {size}) not divisible by "
            f"{'x'.join(mesh_axes)}={split}")
        mesh_axes = ()
      used.update(mesh_axes)
      spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    while spec and spec[-1] is None:
      spec.pop()
    return PartitionSpec(*spec)

  def shardings(self, tree) -> Any:
    """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs), by path."""
    return jax.tree_util.tree_map_with_path(
        lambda p, x: NamedSharding(self.mesh, self.spec(param_path(p), np.shape(x))), tree)

  def state_shardings(self, state: Mapping[str, Any]) -> dict[str, Any]:
    """Shardings of a train-state dict; each entry's paths start inside it (`backbone/...`)."""
    return {k: self.shardings(v) for k, v in state.items()}

  def init(self, fn: Callable, *args) -> Any:
    """`fn(*args)` computed directly into its shardings (no full copy on one device)."""
    out = self.shardings(jax.eval_shape(fn, *args))
    return jax.jit(fn, out_shardings=out)(*args)

  def put(self, state: Mapping[str, Any]) -> dict[str, Any]:
    """Moves a train-state dict onto its shardings."""
    return jax.device_put(dict(state), self.state_shardings(state))

  def summary(self) -> str:
    """One line on dimensions left whole (their mesh axis does not divide them), or ''."""
    if not self.replicated_dims:
      return ""
    notes = sorted(self.replicated_dims.values())
    more = f"; and {len(notes) - 5} more" if len(notes) > 5 else ""
    return (f"sharding: {len(notes)} dimension(s) kept whole: " + "; ".join(notes[:5]) + more)


def param_shardings(abstract_params, mesh: Mesh, rules: Mapping[str, Any] | None = None,
                    param_axes: Sequence[tuple[str, LogicalAxes]] = ()) -> Any:
  """NamedShardings for a params tree (or any tree whose leaves sit under param paths).

  Args:
    abstract_params: params or `jax.eval_shape` of them.
    mesh: a ("data", "fsdp", "tensor") mesh.
    rules: logical axis -> mesh axis ("" = not split); DEFAULT_RULES where not given.
    param_axes: (path regex, logical axes) tried before PARAM_AXES.
  """
  merged = dict(DEFAULT_RULES, **dict(rules or {}))
  layout = Layout(mesh, {k: _mesh_axes(v, f"rules[{k!r}]") for k, v in merged.items()},
                  tuple(param_axes) + PARAM_AXES)
  return layout.shardings(abstract_params)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over fsdp x data (BATCH_AXES)."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def traced_in(mesh, fn: Callable) -> Callable:
  """`fn` traced with `mesh` in context (its abstract mesh), for `constrain_batch`.

  Wrap a step before `jax.jit`: `jax.jit(traced_in(mesh, step), ...)`.
  """
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return fn(*args, **kwargs)
  return wrapped


def constrain_batch(x: jax.Array) -> jax.Array:
  """`x` `[batch, ...]` with its batch split over BATCH_AXES of the mesh in context.

  Unchanged when no mesh is in context (see `traced_in`), when the batch axes are
  all of size 1, or when they do not divide the batch. The other dimensions are
  whole (replicated over tensor, as the residual stream is in Megatron layers).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not x.ndim:
    return x
  axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)
  size = int(np.prod([mesh.shape[a] for a in axes]))
  if not axes or x.shape[0] % size:
    return x
  return jax.lax.with_sharding_constraint(x, PartitionSpec(axes))


def batch_divisor(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(global_batch_size: int, mesh: Mesh, key: str = "config.data.batch_size"):
  div = batch_divisor(mesh)
  per_process = global_batch_size // jax.process_count()
  if global_batch_size % div or global_batch_size % jax.process_count():
    raise ConfigError(
        f"{key}={global_batch_size} is not divisible by the {div} data-parallel devices "
        f"(and {jax.process_count()} processes); use a multiple of {div}")
  return per_process


def host_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's local batch [local_batch, ...] into global jax.Arrays."""
  sharding = batch_sharding(mesh)
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
      for k, v in batch.items()
  }
