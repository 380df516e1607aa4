"""Variance-preserving noise schedules in continuous time t in [0, 1].

A schedule is its log signal-to-noise ratio logSNR(t) = log(alpha^2 / sigma^2), falling
from `logsnr_max` at t=0 (clean) to `logsnr_min` at t=1 (pure noise), with
alpha^2 + sigma^2 = 1. Working in logSNR keeps the endpoints finite and the sampler
formulas numerically stable (ratios of alphas and sigmas become exponentials of logSNR
differences).

The cosine schedule (Nichol & Dhariwal) is alpha = cos(pi t / 2), i.e.
logSNR = -2 log tan(pi t / 2), clipped to [logsnr_min, logsnr_max] by rescaling t. The
shifted cosine (Hoogeboom et al., simple diffusion) adds 2 log(base_resolution /
resolution) to logSNR: a larger image has more pixels that average out noise, so it needs
more noise at every t to destroy the same amount of signal.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp

from lumiere_jax.errors import ConfigError

SCHEDULES = ("cosine", "shifted_cosine")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Clipped cosine logSNR schedule, optionally shifted. Frozen, so it can be a static
  argument of jitted functions."""

  logsnr_min: float = -15.0
  logsnr_max: float = 15.0
  shift: float = 0.0

  def __post_init__(self):
    if not self.logsnr_min < self.logsnr_max:
      raise ConfigError(f"logsnr_min={self.logsnr_min} must be below "
                        f"logsnr_max={self.logsnr_max}")

  def _angles(self):
    return math.atan(math.exp(-0.5 * self.logsnr_max)), math.atan(math.exp(-0.5 * self.logsnr_min))

  def logsnr(self, t):
    """logSNR at time t (any shape), strictly decreasing in t."""
    u_min, u_max = self._angles()
    t = jnp.asarray(t, jnp.float32)
    return -2.0 * jnp.log(jnp.tan(u_min + t * (u_max - u_min))) + self.shift

  def time(self, logsnr):
    """The inverse of `logsnr`: t with logsnr(t) == logsnr, clipped to [0, 1] beyond the
    schedule's range."""
    u_min, u_max = self._angles()
    u = jnp.arctan(jnp.exp(-0.5 * (jnp.asarray(logsnr, jnp.float32) - self.shift)))
    return jnp.clip((u - u_min) / (u_max - u_min), 0.0, 1.0)

  def alpha_sigma(self, t):
    """(alpha, sigma) at time t; alpha^2 + sigma^2 = 1."""
    return alpha_sigma_from_logsnr(self.logsnr(t))


def alpha_sigma_from_logsnr(logsnr):
  """alpha^2 = sigmoid(logSNR), sigma^2 = sigmoid(-logSNR): exact and stable at both ends."""
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def cosine_schedule(logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> Schedule:
  return Schedule(logsnr_min, logsnr_max, 0.0)


def shifted_cosine_schedule(resolution: int, base_resolution: int,
                            logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> Schedule:
  """The cosine schedule tuned at `base_resolution`, moved to `resolution`."""
  return Schedule(logsnr_min, logsnr_max, 2.0 * math.log(base_resolution / resolution))


def schedule_from_config(diffusion_config, resolution: int) -> Schedule:
  """The schedule named by `config.diffusion.schedule` for images of `resolution` pixels."""
  c = diffusion_config
  if c.schedule == "cosine":
    return cosine_schedule(c.logsnr_min, c.logsnr_max)
  if c.schedule == "shifted_cosine":
    return shifted_cosine_schedule(resolution, c.shift_base_resolution, c.logsnr_min,
                                   c.logsnr_max)
  raise ConfigError(f"diffusion.schedule={c.schedule!r} is invalid; allowed: one of "
                    f"{SCHEDULES}")
