"""What a denoiser takes besides the noisy clip: the channels concatenated to its input.

One place builds them, for training (from a data batch) and for the pipelines (from a
user's low-resolution clip, or a clip and a mask), so each new stage adds one case here:
  none    3 channels: the noisy clip alone (t2i, t2v, style)
  ssr     6 channels: + the low-resolution clip, bilinearly upsampled to the output size
  masked  7 channels: <J, C, M> (LUMIERE.md): + C = clip * M and M (1 on known pixels)
"""

import jax
import jax.numpy as jnp

NONE, SSR, MASKED = "none", "ssr", "masked"
CHANNELS = {NONE: 3, SSR: 6, MASKED: 7}


def kind(in_channels: int) -> str:
  """The conditioning a model with `in_channels` input channels takes."""
  for name, channels in CHANNELS.items():
    if channels == in_channels:
      return name
  raise ValueError(f"no conditioning has {in_channels} input channels; "
                   f"known: {', '.join(f'{k}={v}' for k, v in CHANNELS.items())}")


def ssr_channels(low_res, shape):
  """Low-resolution clip [..., h, w, 3] in [-1, 1] -> bilinear upsampling to `shape`."""
  return jax.image.resize(low_res, shape[:-1] + (low_res.shape[-1],), "bilinear")


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
