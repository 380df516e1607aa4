"""Classifier-free guidance (Ho & Salimans) and pixel-space thresholding (Imagen).

Training drops the conditioning of a random fraction of the batch, replacing it by the
unconditional input (the empty prompt's embeddings), so one network learns both the
conditional and the unconditional prediction. Sampling extrapolates between the two:
  guided = w * conditional + (1 - w) * unconditional,
written so that w = 1 returns the conditional and w = 0 the unconditional prediction
exactly. Large w pushes x0 predictions outside [-1, 1]; thresholding pulls them back.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from lumiere_jax.errors import ConfigError

# fn(x [B, ...], t [B] in [0, 1], cond pytree with leading batch axis) -> prediction [B, ...]
Denoiser = Callable[[jax.Array, jax.Array, Any], jax.Array]

THRESHOLDS = ("none", "static", "dynamic")


def _batch_broadcast(flags, x):
  return flags.reshape(flags.shape + (1,) * (x.ndim - flags.ndim))


def drop_conditioning(cond, uncond, rng, rate: float):
  """Each example keeps its conditioning with probability 1 - rate, else gets `uncond`.

  `cond` and `uncond` are pytrees of the same structure; `uncond` leaves have batch 1 or
  the batch of `cond`. Works on embeddings and on token ids alike. Returns
  (conditioning, dropped [B] bool).
  """
  batch = jax.tree_util.tree_leaves(cond)[0].shape[0]
  dropped = jax.random.bernoulli(rng, rate, (batch,))

  def choose(c, u):
    return jnp.where(_batch_broadcast(dropped, c), jnp.broadcast_to(u, c.shape), c)

  return jax.tree_util.tree_map(choose, cond, uncond), dropped


def guided_prediction(conditional, unconditional, scale):
  return scale * conditional + (1.0 - scale) * unconditional


def _interleave(a, b):
  """[B, ...] x2 -> [2B, ...] as (a0, b0, a1, b1, ...). Pairs stay on the device that
  holds example i when the batch is sharded; concatenating would move half the batch."""
  b = jnp.broadcast_to(b, a.shape)
  return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def classifier_free_guidance(denoiser: Denoiser, uncond, scale) -> Denoiser:
  """A denoiser that runs `denoiser` once on the conditional and unconditional inputs
  together (one batch of 2B) and returns the guided prediction. `scale` may be traced,
  so changing it does not recompile."""

  def guided(x, t, cond):
    both = jax.tree_util.tree_map(_interleave, cond, uncond)
    out = denoiser(_interleave(x, x), jnp.repeat(t, 2), both)
    out = out.reshape((x.shape[0], 2) + out.shape[1:])
    return guided_prediction(out[:, 0], out[:, 1], scale)

  return guided


def check_threshold(kind: str, percentile: float) -> None:
  if kind not in THRESHOLDS:
    raise ConfigError(f"threshold {kind!r} is invalid; allowed: one of {THRESHOLDS}")
  if not 0.0 < percentile <= 1.0:
    raise ConfigError(f"threshold percentile {percentile} must be in (0, 1]")


def static_threshold(x0):
  return jnp.clip(x0, -1.0, 1.0)


def dynamic_threshold(x0, percentile: float):
  """Per example: s = the `percentile` quantile of |x0| (at least 1); clip to [-s, s] and
  divide by s. Saturated pixels are pushed inwards instead of piling up at +-1."""
  flat = jnp.abs(x0).reshape(x0.shape[0], -1)
  s = jnp.maximum(jnp.quantile(flat, percentile, axis=1), 1.0)
  s = _batch_broadcast(s, x0)
  return jnp.clip(x0, -s, s) / s


def threshold(x0, kind: str, percentile: float = 0.995):
  """Applies the thresholding named by `kind` ('none', 'static' or 'dynamic')."""
  check_threshold(kind, percentile)
  if kind == "static":
    return static_threshold(x0)
  if kind == "dynamic":
    return dynamic_threshold(x0, percentile)
  return x0
