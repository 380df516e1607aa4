"""The diffusion training loss in continuous time.

One Monte Carlo term per example: t ~ U[0, 1], eps ~ N(0, I) (a video's frames
correlated by diffusion.frame_noise_correlation, noise.py), z = alpha_t x0 + sigma_t eps,
and the squared error between the network output and its target (v, eps or x0).

Weighting. Every choice is a weight w(logSNR) on the x0 error ||x0_hat - x0||^2, which is
how the options compare (Kingma & Gao, "Understanding diffusion objectives"):
  'v'        1 + SNR          plain MSE on v (Imagen Video, Lumiere's default)
  'eps'      SNR              plain MSE on eps (DDPM's "simple" loss)
  'x0'       1                plain MSE on x0
  'min_snr'  min(SNR, gamma)  Min-SNR-gamma (Hang et al. 2023): the eps loss with the
                              low-noise end capped, which speeds up convergence
The error actually computed is in the network's own parametrisation, scaled by
w / w_native, so the default (v-prediction, 'v' weighting) is exactly plain v-MSE.

Frame mass (diffusion.frame_mass_weight, not in the paper; 0 by default). For videos, a
second term on the x0 error: its spatial mean per frame and channel, less that mean over
the frames, squared (frame_mass_drift). An object that swells or fades over the clip
changes its frame's mean; plain MSE gives that one direction of HxW the weight of one
pixel, this term the weight it is given.
"""

import jax
import jax.numpy as jnp

from lumiere_jax.diffusion import guidance
from lumiere_jax.diffusion import noise as noise_lib
from lumiere_jax.diffusion import predictions
from lumiere_jax.diffusion.schedules import alpha_sigma_from_logsnr, schedule_from_config
from lumiere_jax.errors import ConfigError

LOSS_WEIGHTINGS = ("v", "eps", "x0", "min_snr")


def check_weighting(weighting: str) -> None:
  if weighting not in LOSS_WEIGHTINGS:
    raise ConfigError(f"diffusion.loss_weighting={weighting!r} is invalid; allowed: one of "
                      f"{LOSS_WEIGHTINGS}")


def x0_weight(logsnr, weighting: str, min_snr_gamma: float = 5.0):
  """w(logSNR) on the x0 error, for the weighting named (see the module docstring)."""
  check_weighting(weighting)
  snr = jnp.exp(logsnr)
  return {"v": lambda: 1.0 + snr, "eps": lambda: snr, "x0": lambda: jnp.ones_like(snr),
          "min_snr": lambda: jnp.minimum(snr, min_snr_gamma)}[weighting]()


def prediction_weight(logsnr, weighting: str, prediction: str, min_snr_gamma: float = 5.0):
  """The factor on the squared error of a `prediction`-type output that makes the loss
  equal to the `weighting` loss. An error of 1 in v is an x0 error of sigma (1 / (1 + SNR)
  in square); in eps, of sigma / alpha (1 / SNR)."""
  weight = x0_weight(logsnr, weighting, min_snr_gamma)
  native = x0_weight(logsnr, prediction)
  return weight / native


def _per_example_mean(x):
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def _expand(per_example, x):
  return per_example.reshape(per_example.shape + (1,) * (x.ndim - 1))


def frame_mass_drift(x0_hat, x0):
  """Per example [B]: the x0 error's mean over rows and columns per frame and channel
  (m [B, T, C]), less its mean over the frames, squared and averaged. Zero when the
  error's per-frame mass is the same in every frame, whatever the error is otherwise."""
  m = jnp.mean(x0_hat.astype(jnp.float32) - x0, axis=(2, 3))
  drift = m - jnp.mean(m, axis=1, keepdims=True)
  return jnp.mean(jnp.square(drift), axis=(1, 2))


def shifted_levels(schedule, t, rng, config):
  """Training times `t` [B] (uniform draws) moved by `config.train_logsnr_shift` in logSNR,
  for a `config.train_logsnr_shift_fraction` share of the examples (drawn per example from
  a key folded out of `rng`, so a fraction of 1 keeps the draws of a plain shift)."""
  if not config.train_logsnr_shift:
    return t
  shifted = schedule.time(schedule.logsnr(t) + config.train_logsnr_shift)
  fraction = config.get("train_logsnr_shift_fraction", 1.0)
  if fraction >= 1.0:
    return shifted
  chosen = jax.random.uniform(jax.random.fold_in(rng, 1), t.shape) < fraction
  return jnp.where(chosen, shifted, t)


def training_times(schedule, rng, batch: int, config):
  """The training times t [batch]: uniform in [config.train_t_min, config.train_t_max],
  then moved by the logSNR shift (shifted_levels)."""
  t = jax.random.uniform(rng, (batch,), jnp.float32)
  t_min, t_max = config.get("train_t_min", 0.0), config.get("train_t_max", 1.0)
  if t_min > 0.0 or t_max < 1.0:
    t = t_min + t * (t_max - t_min)
  return shifted_levels(schedule, t, rng, config)


def diffusion_loss(denoise_fn, params, x0, cond, rng, config, uncond=None, auxiliary=False):
  """The weighted denoising loss of one batch, and metrics.

  Args:
    denoise_fn: fn(params, x_t [B, ...], t [B] in [0, 1], cond) -> prediction of type
      `config.prediction` (see denoisers.text_denoiser for the Lumiere models).
    params: whatever denoise_fn differentiates.
    x0: clean data [B, ...] in [-1, 1] (videos [B, T, H, W, C] or images [B, H, W, C]).
    cond: conditioning pytree with leading batch axis (e.g. {'emb', 'mask'}, or tokens).
    rng: PRNG key for t, the noise and the conditioning dropout.
    config: the `config.diffusion` section (schedule, train_logsnr_shift, prediction,
      loss_weighting, min_snr_gamma, cfg_dropout).
    uncond: the unconditional input with the structure of `cond` (batch 1 or B). When
      given, a `config.cfg_dropout` fraction of the batch is trained on it, which is what
      classifier-free guidance needs at sampling time.
    auxiliary: denoise_fn returns (prediction, (loss, metrics)) instead, an auxiliary
      loss of the same call (its t and its conditioning after dropout), added to the
      diffusion loss; its metrics join the returned ones.

  Returns:
    (loss scalar, {'loss', 'mse', 'cfg_dropped'}); 'mse' is the unweighted error in the
    network's parametrisation, comparable across weightings.
  """
  schedule = schedule_from_config(config, resolution=x0.shape[-3])
  t_rng, noise_rng, drop_rng = jax.random.split(rng, 3)
  t = training_times(schedule, t_rng, x0.shape[0], config)
  eps = jax.random.normal(noise_rng, x0.shape, x0.dtype)
  eps = noise_lib.frame_correlated(eps, config.get("frame_noise_correlation", 0.0))
  logsnr = schedule.logsnr(t)
  alpha, sigma = (_expand(a, x0) for a in alpha_sigma_from_logsnr(logsnr))
  z = alpha * x0 + sigma * eps

  dropped = jnp.zeros((x0.shape[0],), bool)
  if uncond is not None and config.cfg_dropout > 0:
    cond, dropped = guidance.drop_conditioning(cond, uncond, drop_rng, config.cfg_dropout)

  out = denoise_fn(params, z, t, cond)
  aux_loss, aux_metrics = None, {}
  if auxiliary:
    out, (aux_loss, aux_metrics) = out
  out = out.astype(jnp.float32)
  goal = predictions.target(x0, eps, alpha, sigma, config.prediction)
  mse = _per_example_mean(jnp.square(out - goal))
  weight = prediction_weight(logsnr, config.loss_weighting, config.prediction,
                             config.min_snr_gamma)
  loss = jnp.mean(weight * mse)
  mass_weight = config.get("frame_mass_weight", 0.0)
  mass_metrics = {}
  if mass_weight and x0.ndim == 5:
    x0_hat, _ = predictions.to_x0_eps(out, z, alpha, sigma, config.prediction)
    drift = jnp.mean(frame_mass_drift(x0_hat, x0))
    loss = loss + mass_weight * drift
    mass_metrics = {"frame_mass": drift}
  if auxiliary:
    loss = loss + aux_loss
  metrics = {"loss": loss, "mse": jnp.mean(mse),
             "cfg_dropped": jnp.mean(dropped.astype(jnp.float32)), **mass_metrics,
             **aux_metrics}
  return loss, metrics
