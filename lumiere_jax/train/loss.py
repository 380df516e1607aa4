"""The training objective of every stage: the diffusion loss of diffusion/losses.py on the
stage's model, with the text encoder inside (it trains in t2i and is frozen afterwards).

LossFn: fn(full_params, batch, rng) -> (loss, metrics). `batch` holds global arrays of
the data pipeline's fields (pixels still uint8); `full_params` is the whole tree
{'backbone'[, 'temporal'], 'text'}. The train step decides which part is differentiated.
The SSR stage noises its conditioning clip per example (noise conditioning augmentation,
models/conditioning.py) and gives the model the level; with diffusion.ssr_residual_scale
it diffuses the clip's residual over its upsampled low-resolution clip. With
train.grounding_weight, the cross-attention grounding loss (train/grounding.py) joins it.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from lumiere_jax.data.pipeline import to_model_range
from lumiere_jax.diffusion.losses import diffusion_loss
from lumiere_jax.diffusion.schedules import schedule_from_config
from lumiere_jax.models import build, conditioning
from lumiere_jax.train import grounding

LossFn = Callable[[dict, dict, jax.Array], tuple]


def make_loss_fn(config) -> LossFn:
  """The stage's LossFn. Static choices (model layout, conditioning channels, prompt
  dropout) are made here, once, by the model object; the returned function only traces
  array work."""
  model = build.Model(config)
  empty_prompt = jnp.asarray(model.tokenize([""]))  # [1, L]

  schedule = schedule_from_config(config.diffusion, model.resolution)
  ground = config.train.get("grounding_weight", 0.0) > 0
  tables = grounding.vocabulary_tables(model.tokenizer) if ground else None
  groups = tuple(config.train.get("grounding_groups", ())) or None
  roles = tuple(config.train.get("grounding_roles", grounding.ROLES))

  def loss_fn(params, batch, rng):
    x0 = to_model_range(batch[model.pixel_field])
    low_res = batch.get("low_res_video")
    low_res = None if low_res is None else to_model_range(low_res)
    extra = conditioning.channels(
        model.conditioning, x0.shape, clip=x0, known=batch.get("mask"), low_res=low_res)
    if config.diffusion.ssr_residual_scale:
      base = conditioning.upsample(low_res, x0.shape, config.diffusion.ssr_residual_base)
      x0 = residual(x0, base, config.diffusion.ssr_residual_scale)
    levels = {}
    if model.takes_noise_level:
      rng, aug_rng = jax.random.split(rng)
      extra, levels["noise_level"] = augment_conditioning(extra, aug_rng, schedule,
                                                          config.diffusion.noise_aug_max)

    def denoise(text_and_denoiser, z, t, tokens):
      text_params, denoiser_params = text_and_denoiser
      cond = {**model.encode(text_params, tokens), **levels}
      if not ground:
        return model.denoise(denoiser_params, z, t, cond, extra)
      out, maps = model.denoise_capturing(denoiser_params, z, t, cond, extra, groups)
      leak, metrics = grounding.grounding_loss(maps, tokens, x0, t, tables,
                                               config.train.grounding_t_max, roles)
      return out, (config.train.grounding_weight * leak, metrics)

    return diffusion_loss(denoise, (params["text"], build.denoiser_params(params)), x0,
                          batch["tokens"], rng, config.diffusion, uncond=empty_prompt,
                          auxiliary=ground)

  return loss_fn


def residual(clip, upsampled, scale: float):
  """The SSR residual form's diffused signal: scale * (clip - upsampled), where
  `upsampled` is the clean low-resolution clip upsampled (diffusion.ssr_residual_base)."""
  return scale * (clip - upsampled)


def augment_conditioning(extra, rng, schedule, max_level: float):
  """Noise conditioning augmentation in training: each example's conditioning channels
  noised to its own level, uniform in [0, max_level]. Returns (noised, levels [B])."""
  level_rng, noise_rng = jax.random.split(rng)
  levels = conditioning.training_noise_levels(level_rng, extra.shape[0], max_level)
  noise = jax.random.normal(noise_rng, extra.shape, extra.dtype)
  return conditioning.noise_augment(extra, levels, noise, schedule), levels
