"""Noise correlated across frames (diffusion/noise.py, PYoCo's mixed prior): the map has
the closed-form covariance, training and every sampler draw use it, and 0 is the paper's
independent noise, unchanged."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lumiere_jax.diffusion import losses, noise, samplers, schedules
from lumiere_jax.diffusion.config import (default_diffusion_config, sampler_settings,
                                          validate_diffusion_config)
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.errors import ConfigError

SCHEDULE = schedules.cosine_schedule()


def frame_moments(videos):
  """(variance of a frame's values, mean correlation of two frames' values at a pixel) of
  videos [B, T, H, W, C], over every pixel and frame pair."""
  v = np.asarray(videos, np.float64)
  per_pixel = np.moveaxis(v, 1, -1).reshape(-1, v.shape[1])
  cov = np.cov(per_pixel, rowvar=False)
  t = cov.shape[0]
  return float(np.trace(cov) / t), float((cov.sum() - np.trace(cov)) / (t * (t - 1)))


@pytest.mark.parametrize("frames", [2, 5, 16])
@pytest.mark.parametrize("rho", [0.25, 0.5, 0.9])
def test_the_map_has_the_closed_form_covariance(frames, rho):
  """Applied to the unit vectors, the map's matrix M over the frames; M M^T is the
  covariance of the output of N(0, I): (1 - rho) I + rho 1 1^T, exactly."""
  basis = jnp.eye(frames, dtype=jnp.float32).reshape(frames, frames, 1, 1, 1)
  m = np.asarray(noise.frame_correlated(basis, rho)[:, :, 0, 0, 0], np.float64).T
  want = (1 - rho) * np.eye(frames) + rho * np.ones((frames, frames))
  np.testing.assert_allclose(m @ m.T, want, atol=2e-6)


def test_zero_and_images_are_returned_unchanged():
  video = jax.random.normal(jax.random.key(0), (2, 4, 3, 3, 1))
  image = video[:, 0]
  assert noise.frame_correlated(video, 0.0) is video
  assert noise.frame_correlated(image, 0.7) is image


@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_the_training_loss_draws_the_correlated_noise(rho):
  """x0 = 0, so the denoiser's input is sigma_t eps: its frames have unit variance and
  correlation rho (12288 pixel pairs per frame pair; the estimate's std is about 0.01)."""
  config = default_diffusion_config()
  config.frame_noise_correlation = rho
  seen = []

  def fn(params, z, t, cond):
    del params, cond
    _, sigma = SCHEDULE.alpha_sigma(t)
    seen.append(z / sigma.reshape(-1, 1, 1, 1, 1))
    return z

  losses.diffusion_loss(fn, None, jnp.zeros((64, 4, 8, 8, 3)), None, jax.random.key(1),
                        config)
  variance, correlation = frame_moments(seen[0])
  assert variance == pytest.approx(1.0, abs=0.05)
  assert correlation == pytest.approx(rho, abs=0.05)


def test_initial_noise_and_sdedit_take_the_correlation():
  keys = jax.vmap(jax.random.key)(jnp.arange(3))
  shape = (3, 6, 4, 4, 3)
  plain = samplers.initial_noise(keys, shape)
  np.testing.assert_array_equal(samplers.initial_noise(keys, shape, 0.6),
                                noise.frame_correlated(plain, 0.6))
  video = jnp.zeros(shape)
  _, sigma = SCHEDULE.alpha_sigma(0.5)
  np.testing.assert_allclose(samplers.sdedit_start(video, keys, SCHEDULE, 0.5, 0.6),
                             sigma * noise.frame_correlated(plain, 0.6), rtol=1e-6)


@pytest.mark.parametrize("rho", [0.0, 0.7])
def test_ancestral_steps_draw_correlated_fresh_noise(rho):
  """A denoiser that predicts x0 = 0 from independent starting noise: what DDPM's steps
  leave at t = 0.3 is mostly their fresh noise, whose frames must then correlate."""
  settings = SamplerSettings("ddpm", steps=8, prediction="x0", noise_correlation=rho)
  keys = jax.vmap(jax.random.key)(jnp.arange(16))
  start = samplers.initial_noise(keys, (16, 4, 16, 16, 3))
  denoiser = lambda x, t, cond: jnp.zeros_like(x)
  out = samplers.sample(denoiser, start, None, keys, SCHEDULE, settings, t_end=0.3)
  _, sigma = SCHEDULE.alpha_sigma(0.3)
  variance, correlation = frame_moments(out / sigma)
  assert variance == pytest.approx(1.0, abs=0.05)
  # each step keeps a share 1 - c = SNR_t / SNR_s of the variance it had; over the steps
  # that telescopes to SNR(1) / SNR(0.3), below 1e-6: the rest is fresh noise
  assert correlation == pytest.approx(rho, abs=0.05)


def test_the_config_field_is_validated_and_reaches_the_sampler():
  for value in (1.0, -0.1, True, "half"):
    loaded = default_diffusion_config().to_dict()  # a config read from JSON is not typed
    loaded["frame_noise_correlation"] = value
    with pytest.raises(ConfigError, match="frame_noise_correlation"):
      validate_diffusion_config(ml_collections.ConfigDict(loaded))
  config = default_diffusion_config()
  config.frame_noise_correlation = 0.5
  validate_diffusion_config(config)
  assert sampler_settings(config).noise_correlation == 0.5
  legacy = default_diffusion_config().to_dict()
  del legacy["frame_noise_correlation"]  # a model config written before the field existed
  assert sampler_settings(ml_collections.ConfigDict(legacy)).noise_correlation == 0.0
