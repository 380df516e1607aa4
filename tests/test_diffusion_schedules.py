"""Schedules are monotone with the right endpoints; the three parametrisations agree."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax.diffusion import predictions, schedules
from lumiere_jax.diffusion.config import default_diffusion_config
from lumiere_jax.errors import ConfigError

GRID = jnp.linspace(0.0, 1.0, 2001)


@pytest.mark.parametrize("schedule", [
    schedules.cosine_schedule(),
    schedules.cosine_schedule(-10.0, 12.0),
    schedules.shifted_cosine_schedule(resolution=128, base_resolution=64),
    schedules.shifted_cosine_schedule(resolution=32, base_resolution=64),
], ids=["cosine", "cosine-clipped", "shifted-up", "shifted-down"])
def test_schedule_is_monotone_with_the_right_endpoints(schedule):
  logsnr = np.asarray(schedule.logsnr(GRID), np.float64)
  alpha, sigma = (np.asarray(a, np.float64) for a in schedule.alpha_sigma(GRID))
  assert np.all(np.diff(logsnr) < 0)
  assert np.all(np.diff(alpha) < 0) and np.all(np.diff(sigma) > 0)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  np.testing.assert_allclose(logsnr[0], schedule.logsnr_max + schedule.shift, atol=1e-3)
  np.testing.assert_allclose(logsnr[-1], schedule.logsnr_min + schedule.shift, atol=1e-3)


@pytest.mark.parametrize("schedule", [
    schedules.cosine_schedule(),
    schedules.cosine_schedule(-10.0, 12.0),
    schedules.shifted_cosine_schedule(resolution=32, base_resolution=64),
], ids=["cosine", "cosine-clipped", "shifted"])
def test_time_inverts_logsnr_and_clips_beyond_the_range(schedule):
  t = jnp.linspace(0.0, 1.0, 101)
  np.testing.assert_allclose(schedule.time(schedule.logsnr(t)), t, atol=2e-5)
  top = schedule.logsnr_max + schedule.shift
  bottom = schedule.logsnr_min + schedule.shift
  np.testing.assert_array_equal(schedule.time(jnp.array([top + 5.0, bottom - 5.0])), [0.0, 1.0])


def test_cosine_schedule_is_the_cosine_between_the_clips():
  t = jnp.linspace(0.05, 0.95, 19)
  alpha, _ = schedules.cosine_schedule().alpha_sigma(t)
  np.testing.assert_allclose(alpha, np.cos(np.pi / 2 * np.asarray(t)), atol=2e-3)
  assert float(schedules.cosine_schedule().alpha_sigma(0.0)[0]) > 0.9999
  assert float(schedules.cosine_schedule().alpha_sigma(1.0)[1]) > 0.9999


def test_shift_is_two_log_resolution_ratio():
  base = schedules.cosine_schedule().logsnr(GRID)
  shifted = schedules.shifted_cosine_schedule(resolution=256, base_resolution=64).logsnr(GRID)
  np.testing.assert_allclose(shifted - base, 2 * math.log(64 / 256), atol=1e-5)


def test_schedule_from_config_uses_the_resolution():
  config = default_diffusion_config()
  assert schedules.schedule_from_config(config, 128).shift == 0.0
  config.schedule = "shifted_cosine"
  assert schedules.schedule_from_config(config, 128).shift == pytest.approx(2 * math.log(0.5))
  config.schedule = "linear"
  with pytest.raises(ConfigError, match="diffusion.schedule"):
    schedules.schedule_from_config(config, 128)


@pytest.mark.parametrize("t", [0.0, 0.01, 0.5, 0.99, 1.0])
def test_v_eps_x0_conversions_agree(t):
  k0, k1 = jax.random.split(jax.random.key(0))
  x0 = jax.random.uniform(k0, (4, 3, 5, 5, 3), minval=-1, maxval=1)
  eps = jax.random.normal(k1, x0.shape)
  alpha, sigma = schedules.cosine_schedule().alpha_sigma(t)
  z = alpha * x0 + sigma * eps
  for kind in predictions.PREDICTIONS:
    out = predictions.target(x0, eps, alpha, sigma, kind)
    got_x0, got_eps = predictions.to_x0_eps(out, z, alpha, sigma, kind)
    # An exact prediction gives back the x0 and eps it came from. Near the ends one of
    # the two is ill-conditioned for eps- and x0-prediction (division by alpha or sigma
    # of 5.5e-4), so compare what each parametrisation can resolve there.
    scale_x0 = 1.0 if kind != "eps" else max(1.0, float(sigma / alpha))
    scale_eps = 1.0 if kind != "x0" else max(1.0, float(alpha / sigma))
    np.testing.assert_allclose(got_x0, x0, atol=2e-5 * scale_x0)
    np.testing.assert_allclose(got_eps, eps, atol=2e-5 * scale_eps)
  v = predictions.v_from_x0_eps(x0, eps, alpha, sigma)
  np.testing.assert_allclose(predictions.x0_from_eps(z, eps, alpha, sigma),
                             predictions.x0_eps_from_v(z, v, alpha, sigma)[0],
                             atol=2e-5 * max(1.0, float(sigma / alpha)))
  np.testing.assert_allclose(predictions.eps_from_x0(z, x0, alpha, sigma),
                             predictions.x0_eps_from_v(z, v, alpha, sigma)[1],
                             atol=2e-5 * max(1.0, float(alpha / sigma)))


def test_unknown_prediction_is_rejected():
  with pytest.raises(ConfigError, match="diffusion.prediction"):
    predictions.target(jnp.zeros(2), jnp.zeros(2), 1.0, 0.0, "score")
