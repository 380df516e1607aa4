"""Spatial super-resolution (SSR): low-resolution clips -> clips at the SSR model's
resolution, sampled over temporal windows fused at every step (temporal MultiDiffusion,
diffusion/windows.py), the windows sharded across the devices (parallel/windows.py).

The low-resolution clip, bilinearly upsampled and noised to `noise_level` (noise
conditioning augmentation, models/conditioning.py), is concatenated to the noisy clip on
channels, and the level is an input of the model too. A residual-form model
(diffusion.ssr_residual_scale) samples the clip's difference from the clean upsampling.
A clip whose frames are not the model's low resolution is refused, not resized: a silent
resize would hide a base model and an SSR model that were not made for each other.

One set of sampling programs (pipelines/stepped.py) per (clip length, guidance on or off):
the window plan depends on the length; seeds, prompts, guidance scales and noise levels
are arguments.
"""

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax import runtime
from lumiere_jax.diffusion import guidance, samplers
from lumiere_jax.diffusion import windows as windows_lib
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.diffusion.schedules import schedule_from_config
from lumiere_jax.errors import UserError
from lumiere_jax.io import video as video_io
from lumiere_jax.models import build, conditioning
from lumiere_jax.pipelines import stepped, windowed
from lumiere_jax.pipelines.windowed import WindowSettings

# fold_in index of each example's augmentation noise: the samplers use 0..steps.
NOISE_AUG_STREAM = 2**31 - 1
EXTRA = "extra"  # the per-frame conditioning channels in the sampler's cond
DEFAULT_SSR_MODEL = "shapes_ssr_x2"  # the shipped SSR model: upsample, generate --upsample, demo


def check_ssr_config(config) -> None:
  if conditioning.kind(config.model.in_channels) != conditioning.SSR:
    raise UserError(f"upsampling needs an SSR model (model.in_channels=6), got "
                    f"model.in_channels={config.model.in_channels} (stage {config.stage!r})")


def check_low_res_videos(config, videos, windows: WindowSettings) -> np.ndarray:
  """uint8 [N, T, h, w, 3] (or one clip [T, h, w, 3]) at the model's low resolution."""
  videos = np.asarray(videos)
  if videos.ndim == 4:
    videos = videos[None]
  if videos.ndim != 5:
    raise UserError(f"expected a video uint8 [T, H, W, 3], got shape {list(videos.shape)}")
  video_io.check_video_array(videos[0], "the input video")
  check_low_res_shape(config, videos.shape[1:4], windows)
  return videos


def check_low_res_shape(config, shape, windows: WindowSettings) -> None:
  """(T, h, w) of a clip to upsample: h = w = the model's low resolution, and a length
  the windows can cover."""
  frames, height, width = shape
  low, high = config.data.low_resolution, config.data.resolution
  if (height, width) != (low, low):
    raise UserError(f"the input video is {height}x{width}; this SSR model upsamples "
                    f"{low}x{low} clips to {high}x{high} (upsample does not resize: resize "
                    "the clip first)")
  windowed.check_clip_length(config, frames, windows)


class Upsampler:
  """An SSR model with fixed sampler and window settings; call it with clips."""

  def __init__(self, config, params: dict, settings: SamplerSettings,
               windows: WindowSettings, progress: bool = False):
    check_ssr_config(config)
    self.config = config
    self.model = build.Model(config)
    self.settings = settings
    self.windows = windows
    self.schedule = schedule_from_config(config.diffusion, config.data.resolution)
    self.sampling = windowed.WindowedSampling(config, windows)
    self.params = self.sampling.replicate(params)
    self.progress = "upsampling" if progress else None
    self._samplers = {}

  def __call__(self, videos, prompts: Sequence[str] = ("",), seed: int = 0,
               guidance_scale: float = 1.0, noise_level: Optional[float] = None
               ) -> np.ndarray:
    """uint8 [N, T, H, W, 3] from uint8 [N, T, h, w, 3] (or one clip). Clip i uses seed
    + i and prompt i (one prompt serves all; "" is no prompt). Guidance 1 runs the
    conditional model alone."""
    videos = check_low_res_videos(self.config, videos, self.windows)
    level = self.config.diffusion.noise_aug_level if noise_level is None else noise_level
    conditioning.check_noise_level(level)
    prompts = list(prompts) * (len(videos) if len(prompts) == 1 else 1)
    if len(prompts) != len(videos):
      raise UserError(f"{len(prompts)} prompts for {len(videos)} videos")
    sampler = self._sampler(videos.shape[1], guidance_scale != 1.0)
    seeds = np.arange(seed, seed + len(videos), dtype=np.int32)
    runtime.check_interrupt("interrupted before upsampling; nothing was written")
    out = sampler(self.params, video_io.from_uint8(videos), self.model.tokenize(prompts),
                  self.model.tokenize([""]), seeds, np.float32(guidance_scale),
                  np.float32(level))
    runtime.check_interrupt("interrupted while upsampling; nothing was written")
    return np.asarray(out)

  def _sampler(self, num_frames: int, guided: bool) -> stepped.Stepped:
    """The sampling programs for clips of `num_frames` frames, (un)guided. args: params,
    low_res, tokens, negative_tokens, seeds, guidance_scale, level."""
    key = (num_frames, guided)
    if key not in self._samplers:
      plan = self.sampling.plan(num_frames)
      self._samplers[key] = stepped.Stepped(
          self._prepare, lambda *a: self._problem(plan, guided, *a),
          lambda context, x, params, low_res, *_: video_io.to_uint8(self.clip(x, low_res)),
          self.schedule, self.settings, self.progress, runtime.interrupt_requested)
    return self._samplers[key]

  def denoiser(self, params, plan: windows_lib.WindowPlan):
    """fn(x, t, cond) on whole clips: the model on the plan's windows, fused; cond holds
    the text, 'noise_level' and the conditioning channels (per frame, windowed with x)."""
    model = self.model
    return self.sampling.denoiser(
        lambda x, t, cond: model.denoise(params, x, t, cond, cond[EXTRA]), plan,
        frame_fields=(EXTRA,))

  def conditioning(self, low_res, keys, level):
    """The conditioning channels: the clips [N, T, h, w, 3] upsampled and noised to
    `level`, each with its own noise; and the levels [N]."""
    n, t = low_res.shape[:2]
    r = self.config.data.resolution
    shape = (n, t, r, r, 3)
    levels = jnp.full((n,), level, jnp.float32)
    noise = samplers.per_example_normal(keys, NOISE_AUG_STREAM, shape[1:])
    upsampled = conditioning.ssr_channels(low_res, shape)
    return conditioning.noise_augment(upsampled, levels, noise, self.schedule), levels

  def _prepare(self, params, low_res, tokens, negative_tokens, seeds, guidance_scale,
               level):
    """(the conditioning of the clips and of the unconditional pass, the start noise)."""
    model = self.model
    keys = jax.vmap(jax.random.key)(seeds)
    extra, levels = self.conditioning(low_res, keys, level)
    frame_cond = {"noise_level": levels, EXTRA: extra}
    encodings = tuple({**model.encode(params["text"], t), **frame_cond}
                      for t in (tokens, negative_tokens))
    return encodings, samplers.initial_noise(keys, extra.shape, self.settings.noise_correlation)

  def _problem(self, plan, guided, encodings, params, low_res, tokens, negative_tokens,
               seeds, guidance_scale, level) -> stepped.Problem:
    """The windowed denoiser, guided when `guided` (guidance 1 runs the conditional
    pass alone)."""
    cond, negative = encodings
    denoiser = self.denoiser(params, plan)
    if guided:
      denoiser = guidance.classifier_free_guidance(denoiser, negative, guidance_scale)
    return stepped.Problem(denoiser, cond, jax.vmap(jax.random.key)(seeds))

  def clip(self, sampled, low_res):
    """The clip [-1, 1] from what the sampler diffused: the clip itself, or (residual
    form, diffusion.ssr_residual_scale = s > 0) the clean upsampling
    (diffusion.ssr_residual_base) + residual / s."""
    scale = self.config.diffusion.ssr_residual_scale
    if not scale:
      return sampled
    base = conditioning.upsample(low_res, sampled.shape, self.config.diffusion.ssr_residual_base)
    return base + sampled / scale


def upsample(config, params: dict, videos, *, settings: SamplerSettings,
             windows: WindowSettings, noise_level: Optional[float] = None,
             prompts: Sequence[str] = ("",), seed: int = 0, guidance_scale: float = 1.0,
             progress: bool = False) -> np.ndarray:
  """One-shot SSR: uint8 [N, T, h, w, 3] (or [T, h, w, 3]) -> uint8 [N, T, H, W, 3]."""
  return Upsampler(config, params, settings, windows, progress)(
      videos, prompts, seed, guidance_scale, noise_level)
