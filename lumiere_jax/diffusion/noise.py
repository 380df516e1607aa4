"""Noise correlated across a clip's frames: the mixed noise prior of PYoCo (Ge et al.,
"Preserve Your Own Correlation", 2023). Not in Lumiere.

With correlation rho, every frame's noise is N(0, I) as before, and any two frames' noise
at the same pixel has correlation rho: covariance (1 - rho) I + rho 1 1^T over the frames.
PYoCo's shared + individual draw with alpha^2 = rho / (1 - rho) has this covariance; here it
is one linear map of the independent noise, so training and sampling need no extra random
stream: the clip's mean over frames m (covariance 1 1^T / T) is scaled to carry the shared
variance and the rest eps - m (covariance I - 1 1^T / T) to carry the individual one,

  eps' = sqrt(1 - rho) (eps - m) + sqrt(1 - rho + rho T) m.

A model trained with it must be sampled with it (diffusion.frame_noise_correlation is part
of a model's config, so an exported model samples with the prior it was trained on).
"""

import jax
import jax.numpy as jnp

from lumiere_jax.errors import ConfigError

FRAME_AXIS = 1  # videos [B, T, H, W, C]


def check_frame_correlation(rho) -> None:
  if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho < 1.0:
    raise ConfigError(f"diffusion.frame_noise_correlation must be a number in [0, 1), got "
                      f"{rho!r}")


def frame_correlated(noise: jax.Array, rho: float) -> jax.Array:
  """Independent standard normal noise [B, T, H, W, C] -> the same marginals with frame
  correlation `rho` (module docstring). Images [B, H, W, C] have no frames and rho 0 is
  no change: both are returned as they are."""
  if not rho or noise.ndim != 5:
    return noise
  frames = noise.shape[FRAME_AXIS]
  mean = jnp.mean(noise, axis=FRAME_AXIS, keepdims=True)
  individual = jnp.sqrt(jnp.asarray(1.0 - rho, noise.dtype))
  shared = jnp.sqrt(jnp.asarray(1.0 - rho + rho * frames, noise.dtype))
  return individual * (noise - mean) + shared * mean
