"""The one place that builds meshes and moves batches onto them.

Mesh axes are always ("data", "fsdp", "tensor"). Batches are split over
("data", "fsdp"); parameters are replicated for now (fsdp/tensor rules come
with the scale-out work), which is plain data parallelism under `jax.jit`.
"""

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from ptft_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """Resolves the config's {data, fsdp, tensor} sizes; one of them may be -1 (the rest)."""
  sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError("config.mesh: at most one of data / fsdp / tensor may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if known <= 0 or num_devices % known:
      raise ConfigError(
          f"config.mesh: {dict(zip(MESH_AXES, sizes, strict=True))} does not divide "
          f"{num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ConfigError(
        f"config.mesh: {dict(zip(MESH_AXES, sizes, strict=True))} needs "
        f"{int(np.prod(sizes))} devices but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_config: Mapping[str, int] | None = None, devices=None) -> Mesh:
  """A ("data", "fsdp", "tensor") mesh over all devices (or `devices`)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config or {"data": -1}, len(devices))
  return jax.make_mesh(
      shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


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
