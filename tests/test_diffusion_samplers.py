"""Samplers against closed form: data with a known Gaussian (or two-component mixture)
distribution, driven by its exact optimal denoiser, so every error left is the sampler's.

Tolerances (mean: max abs error of the 2-vector; covariance: Frobenius error relative to
||Sigma||), 32768 samples, all starting from whitened noise (sample mean exactly 0,
covariance exactly I):
  * deterministic samplers (DDIM eta=0 at 256 steps, DPM-Solver++ at 64 steps): mean 0.01,
    covariance 2%. On the Gaussian the sampler is a linear map, so whitening removes all
    Monte Carlo error and what is measured is discretisation error alone (DDIM 1.1%,
    DPM-Solver++ 0.5%); on the mixture some sampling error remains (measured over four
    seeds: DDIM 0.5-1.0%, DPM-Solver++ 0.2-0.6%).
  * stochastic samplers (DDPM, DDIM eta=0.5 at 256 steps) add fresh noise every step and
    their first-order error is larger: mean 0.01, covariance 5% (Monte Carlo std of the
    covariance about 0.8%; measured 0.7-3.7% over four seeds and both distributions).
Deliberately wrong update coefficients (ancestral noise std, eps shrink factor, the 2M
extrapolation factor, the sigma ratio, dropping the first-order last step) measured
covariance errors from 3.5% to over 100%: every one outside these tolerances.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax.diffusion import analytic, predictions, samplers, schedules
from lumiere_jax.diffusion.progress import TqdmProgress
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.errors import UserError

SCHEDULE = schedules.cosine_schedule()
GAUSSIAN = analytic.GaussianMixture.gaussian([0.3, -0.2], [[0.25, 0.12], [0.12, 0.09]])
MIXTURE = analytic.GaussianMixture(
    weights=np.array([0.3, 0.7]),
    means=np.array([[-0.6, 0.2], [0.5, -0.1]]),
    covariances=np.array([[[0.02, 0.0], [0.0, 0.05]], [[0.04, 0.01], [0.01, 0.02]]]))
NUM_SAMPLES = 32768


def whitened_noise(n: int, seed: int) -> jax.Array:
  """Standard normal draws transformed to have sample mean 0 and covariance I exactly."""
  x = np.random.default_rng(seed).standard_normal((n, 2))
  x -= x.mean(0)
  chol = np.linalg.cholesky(np.cov(x.T, bias=True))
  return jnp.asarray(x @ np.linalg.inv(chol).T, jnp.float32)


def keys(n: int, seed: int = 0):
  return jax.random.split(jax.random.key(seed), n)


@functools.partial(jax.jit, static_argnames=("data", "settings", "prediction"))
def run_sampler(x, key_batch, data, settings, prediction="v"):
  return samplers.sample(data.denoiser(SCHEDULE, prediction), x, None, key_batch, SCHEDULE,
                         settings)


def moment_errors(samples, data):
  samples = np.asarray(samples, np.float64)
  mean_error = np.abs(samples.mean(0) - data.mean()).max()
  cov_error = (np.linalg.norm(np.cov(samples.T, bias=True) - data.covariance())
               / np.linalg.norm(data.covariance()))
  return mean_error, cov_error


CASES = [
    ("ddim", 256, 0.0, 0.02),
    ("dpmpp", 64, 0.0, 0.02),
    ("ddpm", 256, 0.0, 0.05),
    ("ddim", 256, 0.5, 0.05),
]


@pytest.mark.parametrize("data", [GAUSSIAN, MIXTURE], ids=["gaussian", "mixture"])
@pytest.mark.parametrize("method,steps,eta,cov_tolerance", CASES,
                         ids=[f"{m}-{s}-eta{e}" for m, s, e, _ in CASES])
def test_sampler_reproduces_data_moments(data, method, steps, eta, cov_tolerance):
  settings = SamplerSettings(method=method, steps=steps, eta=eta)
  out = run_sampler(whitened_noise(NUM_SAMPLES, 0), keys(NUM_SAMPLES), data, settings)
  mean_error, cov_error = moment_errors(out, data)
  assert mean_error < 0.01, (mean_error, cov_error)
  assert cov_error < cov_tolerance, (mean_error, cov_error)


@pytest.mark.parametrize("data", [GAUSSIAN, MIXTURE], ids=["gaussian", "mixture"])
def test_dpmpp_beats_ddim_at_20_steps(data):
  noise = whitened_noise(NUM_SAMPLES, 1)
  errors = {}
  for method in ("ddim", "dpmpp"):
    out = run_sampler(noise, None, data, SamplerSettings(method=method, steps=20))
    errors[method] = moment_errors(out, data)[1]
  # Measured: Gaussian 13.7% vs 1.7%, mixture 9.3% vs 1.5%.
  assert errors["dpmpp"] < 0.5 * errors["ddim"], errors


def closed_form_denoiser(data, prediction):
  """The exact optimal denoiser of `data` expressed as `prediction` with the closed forms
  written here (not through diffusion/predictions.py, which the sampler itself uses):
  eps = (z - alpha x0) / sigma, v = alpha eps - sigma x0."""

  def fn(z, t, cond):
    del cond
    alpha, sigma = SCHEDULE.alpha_sigma(t)
    x0 = data.posterior_mean(z, alpha, sigma)
    alpha, sigma = alpha[:, None], sigma[:, None]
    eps = (z - alpha * x0) / sigma
    return {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0}[prediction]

  return fn


@functools.partial(jax.jit, static_argnames=("prediction",))
def _closed_form_sample(x, prediction):
  return samplers.sample(closed_form_denoiser(GAUSSIAN, prediction), x, None, None,
                         SCHEDULE, SamplerSettings(method="dpmpp", steps=16,
                                                   prediction=prediction))


@pytest.mark.parametrize("prediction", ["v", "eps", "x0"])
def test_samplers_agree_across_prediction_types(prediction):
  """The same optimal denoiser, handed to the sampler as v, eps or x0 (each converted in
  the test), gives the same samples, and they have the data's moments."""
  noise = whitened_noise(4096, 2)
  out = _closed_form_sample(noise, prediction)
  reference = _closed_form_sample(noise, "v")
  np.testing.assert_allclose(out, reference, atol=2e-3)
  mean_error, cov_error = moment_errors(out, GAUSSIAN)
  assert mean_error < 0.01 and cov_error < 0.05, (mean_error, cov_error)


def test_prediction_conversions_are_the_closed_forms():
  """target() and to_x0_eps() against z = alpha x0 + sigma eps, v = alpha eps - sigma x0
  (Salimans & Ho), written out, at noise levels across the schedule."""
  rng = np.random.default_rng(7)
  x0, eps = rng.standard_normal((2, 5, 3))
  logsnr = np.linspace(-8.0, 8.0, 5)[:, None]
  alpha, sigma = np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))
  z = alpha * x0 + sigma * eps
  closed = {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0}
  for kind, value in closed.items():
    np.testing.assert_allclose(predictions.target(x0, eps, alpha, sigma, kind), value,
                               rtol=1e-10, atol=1e-12)
    back_x0, back_eps = predictions.to_x0_eps(value, z, alpha, sigma, kind)
    np.testing.assert_allclose(back_x0, x0, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(back_eps, eps, rtol=1e-8, atol=1e-8)


def test_ddim_eta0_is_deterministic_and_ddpm_is_not():
  noise = whitened_noise(256, 3)
  settings = SamplerSettings(method="ddim", steps=32)
  first = run_sampler(noise, keys(256, 0), GAUSSIAN, settings)
  second = run_sampler(noise, keys(256, 1), GAUSSIAN, settings)
  np.testing.assert_array_equal(first, second)
  ddpm = SamplerSettings(method="ddpm", steps=32)
  a = run_sampler(noise, keys(256, 0), GAUSSIAN, ddpm)
  b = run_sampler(noise, keys(256, 1), GAUSSIAN, ddpm)
  assert np.abs(np.asarray(a - b)).mean() > 0.05


def test_ddpm_step_samples_the_true_posterior():
  """One ancestral step with a denoiser that knows x0 must draw from q(x_s | x_t, x0):
  mean (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x0,
  variance sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (the textbook DDPM posterior)."""
  n, t_start, t_end = 65536, 0.6, 0.3
  x0, xt = 0.4, 0.3
  alpha_t, sigma_t = (float(v) for v in SCHEDULE.alpha_sigma(t_start))
  alpha_s, sigma_s = (float(v) for v in SCHEDULE.alpha_sigma(t_end))
  alpha_ts = alpha_t / alpha_s
  var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2

  def knows_x0(x, t, cond):
    del cond
    alpha, sigma = (a[:, None] for a in SCHEDULE.alpha_sigma(t))
    eps = (x - alpha * x0) / sigma
    return predictions.target(jnp.full_like(x, x0), eps, alpha, sigma, "v")

  one_step = jax.jit(lambda x, k: samplers.sample(
      knows_x0, x, None, k, SCHEDULE, SamplerSettings("ddpm", steps=1), t_start=t_start,
      t_end=t_end))
  out = np.asarray(one_step(jnp.full((n, 1), xt), keys(n)), np.float64)
  expected_mean = alpha_ts * sigma_s**2 / sigma_t**2 * xt + alpha_s * var_ts / sigma_t**2 * x0
  expected_var = var_ts * sigma_s**2 / sigma_t**2
  assert abs(out.mean() - expected_mean) < 4 * np.sqrt(expected_var / n)
  assert abs(out.var() / expected_var - 1) < 4 * np.sqrt(2 / n)


def test_ddim_inversion_round_trips():
  """Invert data to t=1 and regenerate with the same steps. DDIM inversion is first order
  (O(1/steps)); at 100 steps the measured error is 0.011 mean, 0.056 max. The latent must
  also look like noise, or an identity 'inversion' would pass."""
  x0 = jnp.asarray(GAUSSIAN.sample(np.random.default_rng(4), 4096), jnp.float32)
  denoiser = GAUSSIAN.denoiser(SCHEDULE)
  latent = jax.jit(lambda x: samplers.ddim_invert(denoiser, x, None, SCHEDULE, steps=100))(x0)
  back = run_sampler(latent, None, GAUSSIAN, SamplerSettings(method="ddim", steps=100))
  error = np.abs(np.asarray(back - x0))
  assert error.mean() < 0.02 and error.max() < 0.1, (error.mean(), error.max())
  latent = np.asarray(latent, np.float64)
  assert np.abs(latent.mean(0)).max() < 0.05
  assert np.abs(np.cov(latent.T) - np.eye(2)).max() < 0.15


def test_sdedit_keeps_structure_at_low_strength_and_the_data_distribution():
  """Noising a true sample to level s gives a true sample of the level-s marginal, so
  SDEdit's output follows the data distribution at any s; at small s it stays close to
  its input, at s = 1 it forgets it."""
  x0 = jnp.asarray(GAUSSIAN.sample(np.random.default_rng(5), 16384), jnp.float32)
  denoiser = GAUSSIAN.denoiser(SCHEDULE)
  settings = SamplerSettings(method="dpmpp", steps=32)
  edit = jax.jit(lambda x, k, s: samplers.sdedit(denoiser, x, None, k, SCHEDULE, settings, s))
  distance = {}
  for strength in (0.1, 1.0):
    out = edit(x0, keys(16384, 6), strength)
    mean_error, cov_error = moment_errors(out, GAUSSIAN)
    assert mean_error < 0.02 and cov_error < 0.05, (strength, mean_error, cov_error)
    distance[strength] = float(np.abs(np.asarray(out - x0)).mean())
  assert distance[0.1] < 0.5 * distance[1.0], distance


@pytest.mark.parametrize("strength", [0.0, -0.5, 1.5])
def test_sdedit_rejects_strength_outside_unit_interval(strength):
  with pytest.raises(UserError, match="strength"):
    samplers.sdedit(GAUSSIAN.denoiser(SCHEDULE), jnp.zeros((2, 2)), None, keys(2), SCHEDULE,
                    SamplerSettings(), strength)


@pytest.mark.parametrize("field,value", [("method", "euler"), ("steps", 0), ("eta", 2.0),
                                         ("prediction", "score"), ("threshold", "soft")])
def test_settings_reject_bad_values(field, value):
  with pytest.raises(UserError):
    SamplerSettings(**{field: value})


def test_loop_compiles_once_and_reports_every_step():
  traces, reported = [], []

  def counting(x, t, cond):
    traces.append(x.shape)
    return GAUSSIAN.denoiser(SCHEDULE)(x, t, cond)

  settings = SamplerSettings(method="ddpm", steps=7)
  fn = jax.jit(lambda x, k, s: samplers.sample(counting, x, None, k, SCHEDULE, settings,
                                               t_start=s, progress=reported.append))
  for seed, strength in ((0, 1.0), (1, 0.5)):
    jax.block_until_ready(fn(whitened_noise(64, seed), keys(64, seed), strength))
  jax.effects_barrier()
  assert len(traces) == 1
  assert sorted(int(i) for i in reported) == sorted(list(range(7)) * 2)


def test_tqdm_progress_restarts_per_call_and_closes():
  reporter = TqdmProgress(5)
  for call in range(2):
    for step in range(4):
      reporter(step)
    assert reporter.bar.n == 4, call
    reporter(4)
    assert reporter.bar is None


def test_the_time_grid_is_uniform_at_power_1_and_crowds_high_noise_above_it():
  np.testing.assert_array_equal(samplers.sampling_times(1.0, 0.0, 24, 1.0),
                                jnp.linspace(1.0, 0.0, 25, dtype=jnp.float32))
  # t_i = 1 - (i / 4)^2: steps of 1/16, 3/16, 5/16, 7/16.
  np.testing.assert_allclose(samplers.sampling_times(1.0, 0.0, 4, 2.0),
                             [1.0, 15 / 16, 3 / 4, 7 / 16, 0.0], atol=1e-7)
  # SDEdit's grid starts at its strength and keeps the same shape.
  np.testing.assert_allclose(samplers.sampling_times(0.8, 0.0, 4, 2.0),
                             0.8 * np.array([1.0, 15 / 16, 3 / 4, 7 / 16, 0.0]), atol=1e-7)


@pytest.mark.parametrize("data", [GAUSSIAN, MIXTURE], ids=["gaussian", "mixture"])
def test_dpmpp_on_the_power_2_grid_still_reproduces_the_data_and_differs(data):
  noise = whitened_noise(NUM_SAMPLES, 2)
  uniform = run_sampler(noise, None, data, SamplerSettings(method="dpmpp", steps=64))
  warped = run_sampler(noise, None, data, SamplerSettings(method="dpmpp", steps=64,
                                                          time_power=2.0))
  mean_error, cov_error = moment_errors(warped, data)
  assert mean_error < 0.01 and cov_error < 0.02, (mean_error, cov_error)
  assert np.abs(np.asarray(warped) - np.asarray(uniform)).max() > 1e-4  # the grid is used


@pytest.mark.parametrize("power", [0.0, -1.0, 9.0, True, "2"])
def test_a_bad_time_power_is_refused(power):
  with pytest.raises(Exception, match="time_power"):
    SamplerSettings(time_power=power)
