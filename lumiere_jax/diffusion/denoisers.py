"""Adapting Lumiere's flax denoisers to the diffusion code's interfaces.

The models take diffusers-style timesteps (the time embedding was designed for integers
0..999); the diffusion code works in continuous t in [0, 1]. The scaling happens here and
nowhere else.
"""

import jax

from lumiere_jax.diffusion.guidance import Denoiser

TIMESTEP_SCALE = 1000.0


def text_denoiser(module):
  """fn(params, x, t [B] in [0, 1], cond) -> prediction for a module built by
  models.build.build_denoiser; cond = {'emb': [B, L, D], 'mask': [B, L] bool} and, for
  an SSR model, 'noise_level' [B] in [0, 1] (the conditioning's noise augmentation, a
  time of the same schedule, scaled like t); params are the module's own
  ({'backbone'[, 'temporal']}). This is the denoise_fn that losses.diffusion_loss takes."""

  def fn(params, x, t, cond):
    level = cond.get("noise_level")
    level = None if level is None else level * TIMESTEP_SCALE
    return module.apply({"params": params}, x, t * TIMESTEP_SCALE, cond["emb"],
                        cond["mask"], level)

  return fn


def capturing_text_denoiser(module):
  """text_denoiser's fn, returning (prediction, cross-attention maps): every
  cross-attention that knows its query layout sows its head-mean weights [B, T, H, W, L]
  (layers.Attention), listed in the module's order; `groups` (static) keeps those of the
  named top-level parameter groups only (None: all)."""

  def fn(params, x, t, cond, groups=None):
    level = cond.get("noise_level")
    level = None if level is None else level * TIMESTEP_SCALE
    out, state = module.apply({"params": params}, x, t * TIMESTEP_SCALE, cond["emb"],
                              cond["mask"], level, mutable=["intermediates"])
    captured = state.get("intermediates", {})
    return out, [m for group in sorted(captured) if groups is None or group in groups
                 for m in jax.tree_util.tree_leaves(captured[group])]

  return fn


def bind(denoise_fn, params) -> Denoiser:
  """Fixes the parameters: the fn(x, t, cond) form the samplers take."""
  return lambda x, t, cond: denoise_fn(params, x, t, cond)
