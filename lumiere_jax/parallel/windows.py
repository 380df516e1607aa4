"""Temporal MultiDiffusion windows sharded across devices (jax.shard_map).

The window axis is a batch axis (diffusion/windows.py); here its windows are split over
the mesh axes that the config's rules give the logical axis 'window'. Each device
gathers its own windows from the whole clip (replicated: 3 channels, small next to a
window's activations), denoises them, and adds its share of the fused prediction; one
psum sums the shares. Per-device memory therefore grows with the windows per device (W
frames each), not with T. The plan must be padded to a multiple of the devices that share
the windows (`plan_windows(..., multiple_of=window_devices(...))`): padding windows have
weight 0 and add nothing.
"""

import math
from typing import Sequence

import jax
from jax.sharding import Mesh, PartitionSpec

from lumiere_jax.diffusion import windows as windows_lib
from lumiere_jax.diffusion.guidance import Denoiser
from lumiere_jax.parallel import sharding

WINDOW = "window"  # the logical axis of the window batch


def window_mesh_axes(mesh: Mesh, rules: sharding.Rules) -> tuple:
  """The mesh axes (of size > 1) the window axis is split over: those the first rule for
  'window' names; where the rules have none (a config saved before the axis existed),
  every mesh axis, since windows are the only parallel work of sampling."""
  named = [axes for name, axes in rules if name == WINDOW]
  if not named:
    axes = tuple(mesh.axis_names)
  elif named[0] is None:
    axes = ()
  else:
    axes = (named[0],) if isinstance(named[0], str) else tuple(named[0])
  return tuple(a for a in axes if mesh.shape[a] > 1)


def window_devices(mesh: Mesh, axes: Sequence[str]) -> int:
  """How many devices share the windows (the plan's padding multiple)."""
  return math.prod(mesh.shape[a] for a in axes)


def sharded_windowed_denoiser(denoiser: Denoiser, plan: windows_lib.WindowPlan, mesh: Mesh,
                              axes: Sequence[str], frame_fields: Sequence[str] = ()
                              ) -> Denoiser:
  """windows.windowed_denoiser with the windows split over `axes` of `mesh`. x, t and
  cond come in (and the fused prediction goes out) replicated over those axes."""
  axes = tuple(axes)
  devices = window_devices(mesh, axes)
  if plan.count % devices:
    raise ValueError(f"{plan.count} windows do not split over {devices} devices; plan "
                     f"them with multiple_of={devices}")
  split, whole = PartitionSpec(axes), PartitionSpec()

  def per_device(indices, weights, x, t, cond):
    predictions = windows_lib.evaluate_windows(denoiser, x, t, cond, indices, frame_fields)
    share = windows_lib.fuse(predictions, indices, weights, plan.num_frames)
    return jax.lax.psum(share, axes)

  fused = jax.shard_map(per_device, mesh=mesh, in_specs=(split, split, whole, whole, whole),
                        out_specs=whole)
  tables = windows_lib.plan_tables(plan)
  return lambda x, t, cond: fused(*tables(t), x, t, cond)


def make_windowed_denoiser(denoiser: Denoiser, plan: windows_lib.WindowPlan,
                           mesh: Mesh = None, axes: Sequence[str] = (),
                           frame_fields: Sequence[str] = ()) -> Denoiser:
  """The windowed denoiser: sharded over `axes` of `mesh` when they hold several devices,
  else all windows as one batch on one device."""
  if mesh is None or window_devices(mesh, axes) == 1:
    return windows_lib.windowed_denoiser(denoiser, plan, frame_fields)
  return sharded_windowed_denoiser(denoiser, plan, mesh, axes, frame_fields)
