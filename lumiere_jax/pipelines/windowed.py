"""Sampling clips longer than a model's window: temporal MultiDiffusion set up from a
config, for the SSR model (pipelines/upsample.py) and for long clips from the base model
(pipelines/generate.py).

The window settings come from the config's `diffusion` section (window 0: the model's
training clip length) with command-line values on top; the windows are split over the
mesh axes that the config's rules give the logical axis 'window' (parallel/windows.py),
and a plan is padded to a multiple of those devices.
"""

import dataclasses
from typing import Optional, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

from lumiere_jax.config.validate import temporal_factor
from lumiere_jax.diffusion import windows as windows_lib
from lumiere_jax.diffusion.guidance import Denoiser
from lumiere_jax.errors import UserError
from lumiere_jax.parallel import mesh as mesh_lib
from lumiere_jax.parallel import windows as parallel_windows


@dataclasses.dataclass(frozen=True)
class WindowSettings:
  """Window and overlap in frames, how overlapping windows are weighted, the starting
  noise of a long clip (windows.NOISE_MODES), and whether denoising steps take turns
  over shifted plans (windows.plan_windows(rotate=True))."""

  window: int
  overlap: int
  weighting: str = "uniform"
  noise: str = "independent"
  rotate: bool = False


def window_settings(config, window: Optional[int] = None, overlap: Optional[int] = None,
                    weighting: Optional[str] = None,
                    noise: Optional[str] = None,
                    rotate: Optional[bool] = None) -> WindowSettings:
  """The config's window settings with the values given on top, checked: overlap >= 0,
  a window larger than the overlap and a multiple of the model's temporal factor."""
  section = config.diffusion
  window = (section.window or config.data.num_frames) if window is None else window
  overlap = section.window_overlap if overlap is None else overlap
  weighting = section.window_weighting if weighting is None else weighting
  noise = section.get("window_noise", "independent") if noise is None else noise
  rotate = bool(section.get("window_rotate", False)) if rotate is None else rotate
  windows_lib.check_windows(window, overlap)
  windows_lib.check_weighting(weighting)
  windows_lib.check_noise_mode(noise)
  factor = temporal_factor(config.model)
  if window % factor:
    raise UserError(f"the window ({window} frames) must be a multiple of {factor}, the "
                    "model's temporal down-sampling factor")
  return WindowSettings(window, overlap, weighting, noise, rotate)


def check_clip_length(config, frames: int, settings: WindowSettings) -> None:
  """A clip no longer than the window is one window, so the model must take its length."""
  factor = temporal_factor(config.model)
  if frames < 1:
    raise UserError("a clip needs at least one frame")
  if frames < settings.window and frames % factor:
    raise UserError(f"a {frames}-frame clip is shorter than the window "
                    f"({settings.window} frames), so it is one window and needs a multiple "
                    f"of {factor} frames (the model's temporal down-sampling factor)")


class WindowedSampling:
  """The windows of one model on this process's devices."""

  def __init__(self, config, settings: WindowSettings):
    self.settings = settings
    self.mesh = mesh_lib.make_mesh(config.mesh)
    self.axes = parallel_windows.window_mesh_axes(self.mesh, config.logical_axis_rules)
    self.devices = parallel_windows.window_devices(self.mesh, self.axes)

  def plan(self, num_frames: int) -> windows_lib.WindowPlan:
    s = self.settings
    return windows_lib.plan_windows(num_frames, s.window, s.overlap, s.weighting,
                                    multiple_of=self.devices, rotate=s.rotate)

  def replicate(self, params):
    """The weights on every device that evaluates windows."""
    if self.devices == 1:
      return params
    return jax.device_put(params, NamedSharding(self.mesh, PartitionSpec()))

  def denoiser(self, denoiser: Denoiser, plan: windows_lib.WindowPlan,
               frame_fields: Sequence[str] = ()) -> Denoiser:
    """`denoiser` over the plan's windows (sharded when several devices share them)."""
    return parallel_windows.make_windowed_denoiser(denoiser, plan, self.mesh, self.axes,
                                                   frame_fields)
