"""Device meshes from the config: axes ('data', 'fsdp', 'tensor'), -1 = the rest."""

import math
from typing import Optional, Sequence

import jax
from jax.sharding import AxisType, Mesh

from lumiere_jax.errors import ConfigError


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple:
  """Replaces -1 by the rest of the devices; refuses shapes that don't use them all."""
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"mesh.shape={tuple(shape)} does not divide {num_devices} devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ConfigError(f"mesh.shape={tuple(shape)} needs {math.prod(shape)} devices, "
                      f"have {num_devices}")
  return tuple(shape)


def check_batch_fits(config, num_devices: int) -> tuple:
  """The config's mesh shape on `num_devices` (resolve_mesh_shape), refusing a global
  batch that the mesh axes of the first 'batch' rule do not divide: the sharding rules
  would fall through to fewer axes and the batch would silently be computed again on
  every device of the rest. Needs no devices, so runs before anything is built."""
  shape = resolve_mesh_shape(tuple(config.mesh.shape), num_devices)
  sizes = dict(zip(config.mesh.axes, shape))
  for name, mesh_axes in config.logical_axis_rules:
    if name != "batch":
      continue
    axes = [a for a in ((mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes or ())
            if sizes.get(a, 1) > 1]
    ways = math.prod(sizes[a] for a in axes)
    if config.data.batch_size % ways:
      raise ConfigError(
          f"data.batch_size={config.data.batch_size} is not a multiple of {ways}, the "
          f"devices the batch is split over (mesh axes "
          f"{' x '.join(f'{a}={sizes[a]}' for a in axes)} of mesh.shape={shape})")
    break
  return shape


def make_mesh(mesh_config, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A topology-aware mesh with Auto axis types (linen's logical partitioning needs Auto;
  jax.make_mesh defaults to Explicit)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(tuple(mesh_config.shape), len(devices))
  axes = tuple(mesh_config.axes)
  return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes), devices=devices)
