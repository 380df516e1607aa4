"""Device meshes from the config: axes ('data', 'fsdp', 'tensor'), -1 = the rest."""

from typing import Optional, Sequence

import jax
from jax.sharding import AxisType, Mesh

from lumiere_jax.config import resolve_mesh_shape


def make_mesh(mesh_config, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A topology-aware mesh with Auto axis types (linen's logical partitioning needs Auto;
  jax.make_mesh defaults to Explicit)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(tuple(mesh_config.shape), len(devices))
  axes = tuple(mesh_config.axes)
  return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes), devices=devices)
