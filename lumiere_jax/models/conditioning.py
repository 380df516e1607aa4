"""What a denoiser takes besides the noisy clip: the channels concatenated to its input.

One place builds them, for training (from a data batch) and for the pipelines (from a
user's low-resolution clip, or a clip and a mask), so each new stage adds one case here:
  none    3 channels: the noisy clip alone (t2i, t2v, style)
  ssr     6 channels: + the low-resolution clip, bilinearly upsampled to the output size
          and noised to a level that is also an input of the model (noise conditioning
          augmentation, Cascaded Diffusion Models / Imagen Video)
  masked  7 channels: <J, C, M> (LUMIERE.md): + C = clip * M and M (1 on known pixels)

Noise conditioning augmentation: the upsampled clip is noised as the forward process
would noise it at time s of the model's own schedule, alpha(s) clip + sigma(s) eps, and
s goes in beside t. Training draws s per example, uniform in [0, max]; sampling uses one
small s (about 0.1-0.2): the model learns not to trust the low-resolution clip's exact
pixels, so the artefacts of a generated clip, which the training data never had, do not
carry over to the high-resolution output.
"""

import jax
import jax.numpy as jnp

from lumiere_jax.errors import UserError

NONE, SSR, MASKED = "none", "ssr", "masked"
CHANNELS = {NONE: 3, SSR: 6, MASKED: 7}


def kind(in_channels: int) -> str:
  """The conditioning a model with `in_channels` input channels takes."""
  for name, channels in CHANNELS.items():
    if channels == in_channels:
      return name
  raise ValueError(f"no conditioning has {in_channels} input channels; "
                   f"known: {', '.join(f'{k}={v}' for k, v in CHANNELS.items())}")


def takes_noise_level(in_channels: int) -> bool:
  """Whether a model with `in_channels` input channels takes the conditioning's noise
  level as an input (the SSR model)."""
  return in_channels == CHANNELS[SSR]


def check_noise_level(level: float) -> None:
  """A noise level is a time of the schedule, in [0, 1] (0: clean conditioning)."""
  if not 0.0 <= level <= 1.0:
    raise UserError(f"noise level {level} is outside the schedule; allowed: [0, 1] "
                    "(0: clean conditioning, 1: pure noise)")


def noise_augment(clip, level, noise, schedule):
  """alpha(level) clip + sigma(level) noise, per example: clip and noise [B, ...], level
  [B] a time of `schedule` (anything with alpha_sigma(t), diffusion/schedules.py)."""
  alpha, sigma = schedule.alpha_sigma(level)
  expand = lambda a: a.reshape(a.shape + (1,) * (clip.ndim - 1)).astype(clip.dtype)
  return expand(alpha) * clip + expand(sigma) * noise.astype(clip.dtype)


def training_noise_levels(rng, batch: int, max_level: float):
  """One level per example, uniform in [0, max_level]: [B] float32."""
  return jax.random.uniform(rng, (batch,), jnp.float32, 0.0, max_level)


def ssr_channels(low_res, shape):
  """Low-resolution clip [..., h, w, 3] in [-1, 1] -> bilinear upsampling to `shape`."""
  return upsample(low_res, shape, "bilinear")


def upsample(low_res, shape, method: str):
  """[..., h, w, C] -> `shape`[:-1] + (C,) by 'bilinear' or 'bicubic' (Keys, a = -0.5:
  PIL's and OpenCV's bicubic)."""
  return jax.image.resize(low_res, tuple(shape[:-1]) + (low_res.shape[-1],),
                          {"bilinear": "bilinear", "bicubic": "cubic"}[method])


def masked_channels(clip, known):
  """C = clip * M and M, concatenated: [..., 3] and [..., 1] (1 = known) -> [..., 4]."""
  known = known.astype(clip.dtype)
  return jnp.concatenate([clip * known, known], axis=-1)


def channels(conditioning: str, shape, low_res=None, clip=None, known=None):
  """The extra input channels for a clip of `shape` [..., 3], or None for `none`.
  `ssr` needs `low_res` ([-1, 1]); `masked` needs `clip` ([-1, 1]) and `known` (1 = known)."""
  if conditioning == SSR:
    return ssr_channels(low_res, tuple(shape))
  if conditioning == MASKED:
    return masked_channels(clip, known)
  return None


def model_input(noisy, extra):
  """The denoiser's input: the noisy clip, then the conditioning channels (if any)."""
  return noisy if extra is None else jnp.concatenate([noisy, extra.astype(noisy.dtype)], -1)
