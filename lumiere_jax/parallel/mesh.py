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
  """The config's mesh shape on `num_devices` (resolve_mesh_shape), refusing a batch of
  clips that the mesh axes of the 'batch' rules cannot split: the batch, and where it
  is too small the clips' frames ('time'), must cover every one of those devices, or
  the rules would fall through and devices would compute the same work again. Needs no
  devices, so it runs before anything is built."""
  from lumiere_jax.parallel import sharding  # pylint: disable=import-outside-toplevel
  shape = resolve_mesh_shape(tuple(config.mesh.shape), num_devices)
  sizes = dict(zip(config.mesh.axes, shape))
  rules = config.logical_axis_rules
  batch_axes = {a for name, axes in rules if name == "batch"
                for a in ((axes,) if isinstance(axes, str) else axes or ()) if sizes.get(a, 1) > 1}
  video = config.model.kind != "unet2d"
  dims = (config.data.batch_size, config.data.num_frames if video else 1)
  spec = sharding.logical_to_spec(("batch", "time"), dims, rules, sizes)
  covered = {a for entry in spec if entry
             for a in ((entry,) if isinstance(entry, str) else entry)}
  if not batch_axes <= covered:
    ways = math.prod(sizes[a] for a in batch_axes)
    raise ConfigError(
        f"data.batch_size={dims[0]} "
        f"{f'(clips of {dims[1]} frames)' if video else '(images)'} cannot be split over the "
        f"{ways} devices of mesh axes {' x '.join(f'{a}={sizes[a]}' for a in sorted(batch_axes))} "
        f"(mesh.shape={shape}); use a batch that is a multiple of {ways}")
  return shape


def make_mesh(mesh_config, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A topology-aware mesh with Auto axis types (linen's logical partitioning needs Auto;
  jax.make_mesh defaults to Explicit)."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(tuple(mesh_config.shape), len(devices))
  axes = tuple(mesh_config.axes)
  return jax.make_mesh(shape, axes, axis_types=(AxisType.Auto,) * len(axes), devices=devices)
