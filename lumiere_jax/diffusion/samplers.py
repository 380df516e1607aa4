"""Samplers: DDPM (ancestral), DDIM(eta), DPM-Solver++(2M); SDEdit and DDIM inversion.

Every sampler is a pure function of a denoiser fn(x [B, ...], t [B], cond) -> prediction
(of type `settings.prediction`), so one implementation serves the T2I model, the STUNet,
SSR and the conditional model, and tests can drive it with an exact analytic denoiser.
`sample` is the whole loop as one `lax.fori_loop`: under `jax.jit` it compiles once per
input shape, runs without host round trips, and keeps whatever sharding its inputs have
(every operation is per example; random noise is drawn per example from that example's
key). `start_state` and `step` are the same loop one step at a time, for a loop driven
from the host (pipelines/stepped.py: progress and Ctrl-C outside the compiled program,
which the persistent compilation cache can then hold).

Time runs from t_start (1 for generation, s for SDEdit) down to t_end (normally 0) in
`steps` steps of one denoiser evaluation each, on a uniform grid or one crowded at high
noise (`sampling_times`).

Randomness is per example: `keys` holds one PRNG key per batch element, so an example's
result depends only on its own key, not on what else is in the batch.
"""

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from lumiere_jax.diffusion import guidance
from lumiere_jax.diffusion import noise as noise_lib
from lumiere_jax.diffusion import predictions
from lumiere_jax.diffusion.guidance import Denoiser
from lumiere_jax.diffusion.schedules import Schedule, alpha_sigma_from_logsnr
from lumiere_jax.errors import ConfigError, UserError

SAMPLERS = ("ddpm", "ddim", "dpmpp")

Progress = Optional[Callable[[jax.Array], None]]
# Asked on the host after every step; True ends the loop early (Ctrl-C). The result is
# then partly denoised and only good for discarding.
Stop = Optional[Callable[[], bool]]
MAX_STEPS = 10_000  # far beyond any useful count; keeps step indices well inside int32


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
  """Static sampler choices (they shape the compiled program; hashable on purpose).

  method: 'ddpm' (ancestral), 'ddim' (with `eta`; 0 is deterministic) or 'dpmpp'
    (DPM-Solver++(2M), deterministic).
  prediction: what the denoiser outputs, 'v', 'eps' or 'x0'.
  threshold: 'none', 'static' or 'dynamic' clipping of the x0 prediction.
  """

  method: str = "dpmpp"
  steps: int = 64
  eta: float = 0.0
  prediction: str = "v"
  threshold: str = "none"
  threshold_percentile: float = 0.995
  time_power: float = 1.0  # the time grid (sampling_times); 1 is uniform
  # every noise draw of a video correlated across its frames (noise.frame_correlated)
  noise_correlation: float = 0.0

  def __post_init__(self):
    if self.method not in SAMPLERS:
      raise ConfigError(f"unknown sampler {self.method!r}; choose one of "
                        f"{', '.join(SAMPLERS)}")
    if isinstance(self.steps, bool) or not isinstance(self.steps, int) or \
        not 1 <= self.steps <= MAX_STEPS:
      raise ConfigError(f"steps must be an integer >= 1 and <= {MAX_STEPS}, got "
                        f"{self.steps!r}")
    check_time_power(self.time_power)
    noise_lib.check_frame_correlation(self.noise_correlation)
    if not 0.0 <= self.eta <= 1.0:
      raise ConfigError(f"eta must be in [0, 1], got {self.eta}")
    predictions.check_prediction(self.prediction)
    guidance.check_threshold(self.threshold, self.threshold_percentile)


def check_time_power(power) -> None:
  """The time grid's power (sampling_times) must be a number in (0, 8]."""
  if isinstance(power, bool) or not isinstance(power, (int, float)) or \
      not 0.0 < power <= 8.0:
    raise ConfigError(f"time_power must be a number in (0, 8], got {power!r}")


def check_strength(strength: float) -> None:
  """SDEdit's starting noise level must be a level the sampler can start from."""
  if not 0.0 < strength <= 1.0:
    raise UserError(f"strength must be in (0, 1], got {strength}")


def per_example_normal(keys, index, shape) -> jax.Array:
  """Standard normal [B, *shape], example b drawn from fold_in(keys[b], index)."""
  return jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, index), shape))(keys)


def initial_noise(keys, shape, correlation: float = 0.0) -> jax.Array:
  """The starting noise x_1 for a batch of `shape` [B, ...]; index 0 of each key's stream
  (sampling steps use indices 1..steps), a video's frames with `correlation`
  (noise.frame_correlated; the sampler settings' noise_correlation)."""
  return noise_lib.frame_correlated(per_example_normal(keys, 0, tuple(shape[1:])),
                                    correlation)


def sampling_times(t_start, t_end, steps: int, power: float = 1.0) -> jax.Array:
  """[steps + 1] times from t_start to t_end: t_start + (t_end - t_start) u^power over a
  uniform u in [0, 1]. power 1 is the uniform grid (exactly jnp.linspace); power > 1
  makes the first steps (high noise) short and the last ones long."""
  if power == 1.0:
    return jnp.linspace(t_start, t_end, steps + 1, dtype=jnp.float32)
  u = jnp.linspace(0.0, 1.0, steps + 1, dtype=jnp.float32)
  return (t_start + (t_end - t_start) * u ** power).astype(jnp.float32)


def x0_eps_predictor(denoiser: Denoiser, schedule: Schedule, prediction: str,
                     threshold: str = "none", percentile: float = 0.995):
  """fn(x, t scalar, cond) -> (x0, eps) from a denoiser of any prediction type. With
  thresholding, eps is recomputed from the clipped x0 so the two stay consistent."""

  def predict(x, t, cond):
    alpha, sigma = schedule.alpha_sigma(t)
    out = denoiser(x, jnp.full((x.shape[0],), t, jnp.float32), cond).astype(x.dtype)
    x0, eps = predictions.to_x0_eps(out, x, alpha, sigma, prediction)
    if threshold == "none":
      return x0, eps
    x0 = guidance.threshold(x0, threshold, percentile)
    return x0, predictions.eps_from_x0(x, x0, alpha, sigma)

  return predict


def _loop(steps: int, body, carry, progress: Progress, stop: Stop = None):
  def step(i, carry):
    carry = body(i, carry)
    if progress is not None:
      jax.debug.callback(progress, i)
    return carry

  if stop is None:
    return jax.lax.fori_loop(0, steps, step, carry)

  # The same steps in a while loop that also ends when the host says stop: one host
  # callback per step, which carries no array (benchmarks in docs/failures.md).
  def keep_going(state):
    i, _, stopped = state
    return (i < steps) & ~stopped

  def next_step(state):
    i, carry, _ = state
    carry = step(i, carry)
    # Asked once the step's result exists (it takes one element of it), not before.
    done = jax.tree_util.tree_leaves(carry)[0]
    stopped = io_callback(lambda *_: np.bool_(stop()), jax.ShapeDtypeStruct((), jnp.bool_),
                          i, done[(0,) * done.ndim])
    return i + 1, carry, stopped

  return jax.lax.while_loop(keep_going, next_step, (jnp.int32(0), carry, jnp.bool_(False)))[1]


def _ddim_update(x0, eps, logsnr_t, logsnr_s, eta: float, noise):
  """x_s = alpha_s x0 + sqrt(sigma_s^2 - std^2) eps + std * noise (Song et al., DDIM).

  std^2 = eta^2 sigma_s^2 c with c = 1 - SNR_t / SNR_s, the share of sigma_s^2 that is
  fresh noise in the true posterior q(x_s | x_t, x0). eta = 1 is therefore exactly the
  ancestral DDPM step; eta = 0 is the deterministic DDIM step (also used backwards, with
  s later than t, for inversion).
  """
  alpha_s, sigma_s = alpha_sigma_from_logsnr(logsnr_s)
  if eta == 0.0:
    return alpha_s * x0 + sigma_s * eps
  c = -jnp.expm1(logsnr_t - logsnr_s)
  return (alpha_s * x0 + sigma_s * jnp.sqrt(1.0 - eta**2 * c) * eps
          + eta * sigma_s * jnp.sqrt(c) * noise)


def _ddim_body(predict, schedule, times, cond, keys, eta: float, correlation: float = 0.0):
  """The DDIM(eta) step i on the state (x,); its fresh noise has the frame `correlation`."""

  def body(i, state):
    x, = state
    t, s = times[i], times[i + 1]
    x0, eps = predict(x, t, cond)
    noise = noise_lib.frame_correlated(per_example_normal(keys, i + 1, x.shape[1:]),
                                       correlation) if eta else None
    return (_ddim_update(x0, eps, schedule.logsnr(t), schedule.logsnr(s), eta, noise),)

  return body


def _dpmpp_body(predict, schedule, times, cond):
  """DPM-Solver++(2M) (Lu et al. 2022), multistep second order in lambda = logSNR / 2:
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D,  h = lambda_s - lambda_t,
    D = x0_i + (x0_i - x0_{i-1}) / (2 r),  r = h_{i-1} / h_i.
  The first step has no history and the last one goes to t = 0, where lambda jumps to its
  clipped maximum and extrapolating x0 over that jump hurts, so both are first order
  (the reference implementation's `lower_order_final`). The state is (x, x0_prev, h_prev)."""
  steps = times.shape[0] - 1

  def body(i, state):
    x, x0_prev, h_prev = state
    t, s = times[i], times[i + 1]
    logsnr_t, logsnr_s = schedule.logsnr(t), schedule.logsnr(s)
    h = 0.5 * (logsnr_s - logsnr_t)
    x0, _ = predict(x, t, cond)
    first_order = (i == 0) | (i == steps - 1)
    correction = jnp.where(first_order, 0.0, h / (2.0 * h_prev))
    d = x0 + correction * (x0 - x0_prev)
    alpha_s, sigma_s = alpha_sigma_from_logsnr(logsnr_s)
    _, sigma_t = alpha_sigma_from_logsnr(logsnr_t)
    return (sigma_s / sigma_t) * x - alpha_s * jnp.expm1(-h) * d, x0, h

  return body


def start_state(x_start, settings: SamplerSettings) -> tuple:
  """The sampler's state before step 0: (x,), and for DPM-Solver++ also the previous
  step's x0 prediction and log-SNR step (the multistep history)."""
  if settings.method == "dpmpp":
    return x_start, jnp.zeros_like(x_start), jnp.ones((), jnp.float32)
  return (x_start,)


def state_sample(state: tuple) -> jax.Array:
  """The (partly) denoised x held by a sampler state."""
  return state[0]


def _step_body(denoiser: Denoiser, cond, keys, schedule: Schedule,
               settings: SamplerSettings, t_start, t_end):
  """fn(i, state) -> state: step i of `settings.steps` from t_start to t_end."""
  predict = x0_eps_predictor(denoiser, schedule, settings.prediction, settings.threshold,
                             settings.threshold_percentile)
  times = sampling_times(t_start, t_end, settings.steps, settings.time_power)
  if settings.method == "dpmpp":
    return _dpmpp_body(predict, schedule, times, cond)
  eta = 1.0 if settings.method == "ddpm" else float(settings.eta)
  if eta and keys is None:
    raise ValueError(f"sampler {settings.method!r} with eta={eta} needs per-example keys")
  return _ddim_body(predict, schedule, times, cond, keys, eta, settings.noise_correlation)


def step(denoiser: Denoiser, state: tuple, i, cond, keys, schedule: Schedule,
         settings: SamplerSettings, *, t_start=1.0, t_end=0.0) -> tuple:
  """Sampling step i (may be traced) of `sample`, on a state from `start_state`: for
  loops driven from the host, one compiled step per call (pipelines/stepped.py).
  Running steps 0..settings.steps - 1 in turn is `sample`."""
  return _step_body(denoiser, cond, keys, schedule, settings, t_start, t_end)(i, state)


def sample(denoiser: Denoiser, x_start, cond, keys, schedule: Schedule,
           settings: SamplerSettings, *, t_start=1.0, t_end=0.0,
           progress: Progress = None, stop: Stop = None):
  """Integrates x_start at noise level t_start down to t_end (0: the clean sample).

  Args:
    denoiser: fn(x, t [B] in [0, 1], cond) -> prediction of type settings.prediction;
      wrap it with guidance.classifier_free_guidance for guided sampling.
    x_start: [B, ...] float32 noisy input at level t_start (pure noise for t_start = 1,
      e.g. `initial_noise(keys, shape)`).
    cond: conditioning pytree passed through to the denoiser.
    keys: [B] PRNG keys (one per example); used by 'ddpm' and 'ddim' with eta > 0, may be
      None otherwise.
    t_start: starting time in (0, 1]; may be traced.
    t_end: final time in [0, t_start); above 0 the result is still noisy at that level
      (partial denoising, e.g. to hand over to another model).
    progress: called with the step index from inside the loop (e.g. TqdmProgress).
    stop: asked after every step; True ends the loop there (the result is then only
      partly denoised: for Ctrl-C, whose caller discards it).
  """
  body = _step_body(denoiser, cond, keys, schedule, settings, t_start, t_end)
  return state_sample(_loop(settings.steps, body, start_state(x_start, settings), progress,
                            stop))


def sdedit(denoiser: Denoiser, video, cond, keys, schedule: Schedule,
           settings: SamplerSettings, strength, *, progress: Progress = None,
           stop: Stop = None):
  """SDEdit (Meng et al.): noise a clean `video` to level `strength` in (0, 1] and sample
  back to t = 0 in `settings.steps` steps. Small strength keeps layout and motion;
  strength 1 ignores the input."""
  start = sdedit_start(video, keys, schedule, strength, settings.noise_correlation)
  return sample(denoiser, start, cond, keys,
                schedule, settings, t_start=strength, progress=progress, stop=stop)


def sdedit_start(video, keys, schedule: Schedule, strength,
                 correlation: float = 0.0) -> jax.Array:
  """SDEdit's starting point: the clean `video` noised to level `strength` with each
  example's initial noise (frame `correlation` as in initial_noise; sampling then starts
  at t_start = strength)."""
  if isinstance(strength, (int, float)):
    check_strength(strength)
  alpha, sigma = schedule.alpha_sigma(strength)
  return alpha * video + sigma * initial_noise(keys, video.shape, correlation)


def ddim_invert(denoiser: Denoiser, x0, cond, schedule: Schedule, *, steps: int,
                prediction: str = "v", t_end=1.0, progress: Progress = None):
  """Deterministic DDIM run forwards in time: clean x0 -> the latent at t_end that
  `sample` with method 'ddim', eta 0 and the same steps maps back to (approximately) x0.
  No thresholding: clipping is not invertible."""
  settings = SamplerSettings("ddim", steps, prediction=prediction)  # validates
  predict = x0_eps_predictor(denoiser, schedule, settings.prediction)
  times = jnp.linspace(0.0, t_end, settings.steps + 1, dtype=jnp.float32)
  body = _ddim_body(predict, schedule, times, cond, None, 0.0)
  return state_sample(_loop(steps, body, (x0,), progress))
