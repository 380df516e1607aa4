"""The training loss: weightings are what they claim, dropout works, gradients flow."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lumiere_jax.diffusion import losses, predictions, schedules
from lumiere_jax.diffusion.config import (default_diffusion_config, sampler_settings,
                                          validate_diffusion_config)
from lumiere_jax.errors import ConfigError

SHAPE = (64, 2, 8, 8, 3)  # [B, T, H, W, C]


def diffusion_config(**fields):
  config = default_diffusion_config()
  config.update(fields)
  return config


# Min-SNR-gamma's documented default cap (docs/diffusion.md, Hang et al. 2023).
DOCUMENTED_GAMMA = 5.0


def expected_x0_weight(logsnr, weighting, gamma=DOCUMENTED_GAMMA):
  """w(logSNR) on the x0 error, written out from the definitions (Kingma & Gao), not
  taken from the module: v-MSE 1 + SNR, eps-MSE SNR, x0-MSE 1, Min-SNR min(SNR, gamma)."""
  snr = np.exp(np.asarray(logsnr, np.float64))
  return {"v": 1.0 + snr, "eps": snr, "x0": np.ones_like(snr),
          "min_snr": np.minimum(snr, gamma)}[weighting]


def off_by(x0_true, delta, prediction, schedule, seen_t):
  """A denoiser whose x0 estimate is exactly x0 + delta, expressed as `prediction` with the
  closed forms written here: eps = (z - alpha x0) / sigma, v = alpha eps - sigma x0."""

  def fn(params, z, t, cond):
    del params, cond
    seen_t.append(t)
    alpha, sigma = (a.reshape((-1,) + (1,) * (z.ndim - 1)) for a in schedule.alpha_sigma(t))
    x0 = x0_true + delta
    eps = (z - alpha * x0) / sigma
    return {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0}[prediction]

  return fn


@pytest.mark.parametrize("prediction", predictions.PREDICTIONS)
@pytest.mark.parametrize("weighting", losses.LOSS_WEIGHTINGS)
def test_loss_is_the_weighted_x0_error_for_every_parametrisation(prediction, weighting):
  """Whatever the network predicts, the loss must be mean_b w(logSNR_b) ||x0_hat - x0||^2
  with the weighting's w. An x0 error of 0.1 everywhere makes that 0.01 * mean(w)."""
  config = diffusion_config(prediction=prediction, loss_weighting=weighting)
  assert config.min_snr_gamma == DOCUMENTED_GAMMA
  schedule = schedules.schedule_from_config(config, SHAPE[-3])
  x0 = jax.random.uniform(jax.random.key(0), SHAPE, minval=-1, maxval=1)
  seen_t = []
  loss, metrics = losses.diffusion_loss(off_by(x0, 0.1, prediction, schedule, seen_t), None,
                                        x0, None, jax.random.key(1), config)
  w = expected_x0_weight(schedule.logsnr(seen_t[0]), weighting)
  np.testing.assert_allclose(loss, 0.01 * np.mean(w), rtol=2e-3)
  assert metrics["loss"] == loss and float(metrics["cfg_dropped"]) == 0.0


def test_frame_mass_drift_is_the_variance_over_frames_of_the_errors_per_frame_mean():
  """An error of c[b, f, ch] per frame plus any pattern of zero spatial mean: the drift is
  mean over (f, ch) of (c - mean_f c)^2, written out in numpy; the pattern adds nothing,
  and a c that is the same in every frame gives 0."""
  b, t, h, w, ch = 3, 5, 6, 7, 2
  rng = np.random.default_rng(0)
  c = rng.normal(size=(b, t, 1, 1, ch))
  pattern = rng.normal(size=(b, t, h, w, ch))
  pattern -= pattern.mean(axis=(2, 3), keepdims=True)
  x0 = jnp.asarray(rng.uniform(-1, 1, size=(b, t, h, w, ch)), jnp.float32)
  want = np.mean(np.square(c - c.mean(axis=1, keepdims=True)), axis=(1, 2, 3, 4))
  got = losses.frame_mass_drift(x0 + jnp.asarray(c + pattern, jnp.float32), x0)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  assert np.all(want > 0.1)
  steady = losses.frame_mass_drift(x0 + jnp.asarray(c[:, :1] + pattern, jnp.float32), x0)
  np.testing.assert_allclose(steady, 0.0, atol=1e-6)


@pytest.mark.parametrize("prediction", predictions.PREDICTIONS)
def test_frame_mass_weight_adds_its_weight_times_the_drift_in_x0(prediction):
  """A denoiser whose x0 is off by 0 in frame 0 and 0.2 in frame 1: the drift is 0.1^2,
  and the loss with weight 50 is the plain loss plus 50 * 0.01, whatever the network
  predicts. Images have no frames: the weight changes nothing there."""
  config = diffusion_config(prediction=prediction)
  schedule = schedules.schedule_from_config(config, SHAPE[-3])
  x0 = jax.random.uniform(jax.random.key(0), SHAPE, minval=-1, maxval=1)
  delta = jnp.asarray([0.0, 0.2]).reshape(1, 2, 1, 1, 1)
  plain, _ = losses.diffusion_loss(off_by(x0, delta, prediction, schedule, []), None, x0,
                                   None, jax.random.key(1), config)
  config.frame_mass_weight = 50.0
  loss, metrics = losses.diffusion_loss(off_by(x0, delta, prediction, schedule, []), None,
                                        x0, None, jax.random.key(1), config)
  np.testing.assert_allclose(metrics["frame_mass"], 0.01, rtol=2e-3)
  np.testing.assert_allclose(loss - plain, 0.5, rtol=2e-3)
  images = x0[:, 0]
  weighted, metrics = losses.diffusion_loss(off_by(images, 0.1, prediction, schedule, []),
                                            None, images, None, jax.random.key(1), config)
  config.frame_mass_weight = 0.0
  unweighted, _ = losses.diffusion_loss(off_by(images, 0.1, prediction, schedule, []), None,
                                        images, None, jax.random.key(1), config)
  assert float(weighted) == float(unweighted) and "frame_mass" not in metrics


@pytest.mark.parametrize("gamma", [0.5, 2.0, 20.0])
def test_min_snr_weight_caps_snr_at_gamma(gamma):
  """min(SNR, gamma) on the x0 error, for the gamma configured; the levels drawn straddle
  the cap, so a wrong gamma changes the loss."""
  config = diffusion_config(prediction="v", loss_weighting="min_snr", min_snr_gamma=gamma)
  schedule = schedules.schedule_from_config(config, SHAPE[-3])
  x0 = jax.random.uniform(jax.random.key(0), SHAPE, minval=-1, maxval=1)
  seen_t = []
  loss, _ = losses.diffusion_loss(off_by(x0, 0.1, "v", schedule, seen_t), None, x0, None,
                                  jax.random.key(1), config)
  snr = np.exp(np.asarray(schedule.logsnr(seen_t[0]), np.float64))
  assert (snr < gamma).any() and (snr > gamma).any()
  np.testing.assert_allclose(loss, 0.01 * np.mean(np.minimum(snr, gamma)), rtol=2e-3)
  np.testing.assert_allclose(
      losses.x0_weight(jnp.log(jnp.array([gamma / 4, gamma * 4])), "min_snr", gamma),
      [gamma / 4, gamma], rtol=1e-6)


def test_train_logsnr_shift_moves_the_trained_noise_levels_by_exactly_the_shift():
  """With shift s the drawn t has logSNR(t) = logSNR(u) + s for the u drawn without it
  (same key), clipped at the ends; s = 0 draws exactly the uniform t."""
  x0 = jnp.zeros((4096, 4, 4, 3))
  drawn = {}
  for shift in (0.0, -math.log(16)):
    config = diffusion_config(train_logsnr_shift=shift)
    schedule = schedules.schedule_from_config(config, x0.shape[-3])
    seen_t = []
    losses.diffusion_loss(off_by(x0, 0.0, config.prediction, schedule, seen_t), None, x0,
                          None, jax.random.key(3), config)
    drawn[shift] = np.asarray(seen_t[0])
  u, t = drawn[0.0], drawn[-math.log(16)]
  np.testing.assert_array_equal(u, jax.random.uniform(
      jax.random.split(jax.random.key(3), 3)[0], (x0.shape[0],), jnp.float32))
  inside = (u > 0.01) & (u < 0.99)
  np.testing.assert_allclose(schedule.logsnr(t[inside]), schedule.logsnr(u[inside]) - math.log(16),
                             atol=1e-3)
  # The median trained level moves from t = 0.5 (logSNR 0) to logSNR -log 16: t = 0.844.
  np.testing.assert_allclose(np.median(t), 2 / np.pi * np.arctan(4.0), atol=0.01)


def test_a_shift_fraction_shifts_that_share_of_the_examples_and_leaves_the_rest_uniform():
  """Each example's t is either the plain-shift draw (same key) or the unshifted one; the
  shifted share is the fraction (4096 draws: within 3 standard errors), 1 is the plain
  shift exactly and 0 no shift."""
  schedule = schedules.schedule_from_config(default_diffusion_config(), 4)
  u = jax.random.uniform(jax.random.key(5), (4096,), jnp.float32)
  shift = -math.log(64)
  plain = np.asarray(losses.shifted_levels(schedule, u, jax.random.key(7),
                                           diffusion_config(train_logsnr_shift=shift)))
  for fraction in (0.0, 0.5, 1.0):
    config = diffusion_config(train_logsnr_shift=shift, train_logsnr_shift_fraction=fraction)
    t = np.asarray(losses.shifted_levels(schedule, u, jax.random.key(7), config))
    is_shifted, is_plain = t == plain, t == np.asarray(u)
    assert np.all(is_shifted | is_plain)
    share = np.mean(is_shifted & ~is_plain)
    assert abs(share - fraction) <= 3 * math.sqrt(0.25 / 4096), (fraction, share)


def test_train_t_max_draws_the_same_times_scaled_into_its_range():
  """A low-noise expert's times: the default's draws times train_t_max (same key), so all
  lie in [0, t_max]; with a shift, the scaled draws shifted."""
  schedule = schedules.schedule_from_config(default_diffusion_config(), 4)
  key = jax.random.key(3)
  full = np.asarray(losses.training_times(schedule, key, 4096, diffusion_config()))
  low = np.asarray(losses.training_times(schedule, key, 4096, diffusion_config(
      train_t_max=0.4)))
  np.testing.assert_array_equal(low, full * np.float32(0.4))
  assert low.max() <= 0.4 and low.max() > 0.39
  shifted = diffusion_config(train_t_max=0.4, train_logsnr_shift=-1.0)
  np.testing.assert_allclose(
      losses.training_times(schedule, key, 4096, shifted),
      losses.shifted_levels(schedule, jnp.asarray(low), key, shifted), rtol=0, atol=0)


def test_train_t_min_maps_the_same_draws_onto_the_band():
  """A high-noise band's times: the default's draws mapped affinely onto [t_min, t_max]
  (same key), order kept, both ends reached."""
  schedule = schedules.schedule_from_config(default_diffusion_config(), 4)
  key = jax.random.key(5)
  full = np.asarray(losses.training_times(schedule, key, 4096, diffusion_config()))
  band = np.asarray(losses.training_times(schedule, key, 4096, diffusion_config(
      train_t_min=0.9)))
  np.testing.assert_allclose(band, 0.9 + 0.1 * full, rtol=0, atol=1e-6)
  assert band.min() >= 0.9 and band.min() < 0.901 and band.max() > 0.999
  np.testing.assert_array_equal(np.argsort(band, kind="stable"), np.argsort(full, kind="stable"))


def test_default_is_plain_v_mse():
  config = default_diffusion_config()
  logsnr = jnp.linspace(-15, 15, 7)
  np.testing.assert_array_equal(
      losses.prediction_weight(logsnr, config.loss_weighting, config.prediction), 1.0)


def test_cfg_dropout_trains_a_fraction_on_the_unconditional_input():
  config = diffusion_config(cfg_dropout=0.3)
  x0 = jnp.zeros((512, 4, 4, 3))
  cond, uncond = jnp.ones((512, 2)), jnp.zeros((1, 2))
  received = []

  def fn(params, z, t, c):
    received.append(c)
    return params * z

  _, metrics = losses.diffusion_loss(fn, 1.0, x0, cond, jax.random.key(2), config, uncond)
  unconditional = np.asarray(received[0][:, 0] == 0)
  assert abs(unconditional.mean() - 0.3) < 0.06
  assert float(metrics["cfg_dropped"]) == pytest.approx(unconditional.mean())


def test_loss_is_jittable_and_differentiable():
  config = default_diffusion_config()
  x0 = jax.random.uniform(jax.random.key(3), (8, 4, 8, 8, 3), minval=-1, maxval=1)

  def fn(params, z, t, cond):
    return params["scale"] * z + params["shift"] * t[:, None, None, None, None] + cond

  params = {"scale": jnp.float32(0.5), "shift": jnp.float32(0.1)}
  grad_fn = jax.jit(jax.grad(lambda p, r: losses.diffusion_loss(fn, p, x0, 0.0, r, config)[0]))
  grads = grad_fn(params, jax.random.key(4))
  assert all(np.isfinite(g) and g != 0 for g in jax.tree_util.tree_leaves(grads))


def test_validation_names_the_field():
  validate_diffusion_config(default_diffusion_config())
  for field, value in [("loss_weighting", "l1"), ("cfg_dropout", 1.0), ("guidance", -1.0),
                       ("sampler", "euler"), ("steps", 0), ("logsnr_min", 20.0),
                       ("train_logsnr_shift", float("nan")),
                       ("train_logsnr_shift_fraction", 1.5), ("train_t_max", 0.0),
                       ("train_t_max", 1.5),
                       ("train_t_min", -0.1), ("train_t_min", 1.0),
                       ("ssr_residual_scale", -1.0), ("ssr_residual_scale", float("inf")),
                       ("ssr_residual_base", "lanczos"), ("window_noise", "shared"),
                       ("window_weighting", "pyramid"), ("time_power", 0.0),
                       ("time_power", 9.0), ("frame_mass_weight", -1.0),
                       ("frame_mass_weight", float("nan"))]:
    with pytest.raises(ConfigError):
      validate_diffusion_config(diffusion_config(**{field: value}))
  loaded = default_diffusion_config().to_dict()  # a config read from JSON is not typed
  loaded["window_rotate"] = "sometimes"
  with pytest.raises(ConfigError, match="window_rotate='sometimes' is invalid"):
    validate_diffusion_config(ml_collections.ConfigDict(loaded))
  validate_diffusion_config(diffusion_config(ssr_residual_scale=4.0, threshold="none"))
  with pytest.raises(ConfigError, match="needs diffusion.threshold='none'"):
    validate_diffusion_config(diffusion_config(ssr_residual_scale=4.0, threshold="static"))


def test_sampler_settings_take_the_config_then_the_flags_given():
  """A flag left out (None) keeps the model's value; one given replaces it."""
  section = diffusion_config(steps=24, time_power=2.0)
  assert sampler_settings(section).time_power == 2.0
  assert sampler_settings(section, time_power=None, steps=None).steps == 24
  overridden = sampler_settings(section, time_power=1.0, steps=12)
  assert (overridden.time_power, overridden.steps) == (1.0, 12)
  legacy = default_diffusion_config().to_dict()
  del legacy["time_power"]  # a model config written before the field existed
  assert sampler_settings(ml_collections.ConfigDict(legacy)).time_power == 1.0
