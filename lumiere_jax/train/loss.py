"""The training objective of every stage: the diffusion loss of diffusion/losses.py on the
stage's model, with the text encoder inside (it trains in t2i and is frozen afterwards).

LossFn: fn(full_params, batch, rng) -> (loss, metrics). `batch` holds global arrays of
the data pipeline's fields (pixels still uint8); `full_params` is the whole tree
{'backbone'[, 'temporal'], 'text'}. The train step decides which part is differentiated.
"""

from typing import Callable

import jax
import jax.numpy as jnp

from lumiere_jax.data.pipeline import to_model_range
from lumiere_jax.diffusion import denoisers
from lumiere_jax.diffusion.losses import diffusion_loss
from lumiere_jax.models import build

LossFn = Callable[[dict, dict, jax.Array], tuple]


def clean_pixels(batch: dict) -> jax.Array:
  """The training target x0 in [-1, 1]: frames for the 2D model, clips otherwise."""
  return to_model_range(batch["image"] if "image" in batch else batch["video"])


def conditioning_channels(in_channels: int, batch: dict, x0):
  """Channels concatenated to the noisy input, or None for a plain 3-channel model:
    6 (SSR): the low-resolution clip, bilinearly upsampled to the output size;
    7 (conditional <J, C, M>): the masked clip C = x0 * M and the mask M (1 = known).
  """
  if in_channels == 6:
    low = to_model_range(batch["low_res_video"])
    return jax.image.resize(low, x0.shape, "bilinear")
  if in_channels == 7:
    known = batch["mask"].astype(x0.dtype)
    return jnp.concatenate([x0 * known, known], axis=-1)
  return None


def make_loss_fn(config) -> LossFn:
  """The stage's LossFn. Static choices (model kind, channels, prompt dropout) are made
  here, once, in Python; the returned function only traces array work."""
  model_fn = denoisers.text_denoiser(build.build_denoiser(config.model))
  text_encoder = build.build_text_encoder(config)
  diffusion = config.diffusion
  empty_prompt = jnp.asarray(build.tokenizer(config).encode([""]))  # [1, L]
  in_channels = config.model.in_channels

  def loss_fn(params, batch, rng):
    x0 = clean_pixels(batch)
    extra = conditioning_channels(in_channels, batch, x0)
    denoiser_params = {k: v for k, v in params.items() if k != "text"}

    def denoise(text_and_denoiser, z, t, tokens):
      text_params, model_params = text_and_denoiser
      emb, mask = text_encoder.apply({"params": text_params}, tokens)
      x = z if extra is None else jnp.concatenate([z, extra.astype(z.dtype)], axis=-1)
      return model_fn(model_params, x, t, {"emb": emb, "mask": mask})

    return diffusion_loss(denoise, (params["text"], denoiser_params), x0, batch["tokens"],
                          rng, diffusion, uncond=empty_prompt)

  return loss_fn
