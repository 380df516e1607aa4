"""What the network predicts, and conversions between the three parametrisations.

With z = alpha x0 + sigma eps and alpha^2 + sigma^2 = 1 (variance preserving):
  v   = alpha eps - sigma x0                 (Salimans & Ho; Imagen Video's default)
  x0  = alpha z - sigma v,   eps = sigma z + alpha v
  x0  = (z - sigma eps) / alpha,   eps = (z - alpha x0) / sigma
v-prediction is well conditioned at every noise level: eps-prediction makes x0 blow up as
alpha -> 0 and x0-prediction makes eps blow up as sigma -> 0. Samplers work with the pair
(x0, eps) and never care which one the network produced.

`alpha` and `sigma` broadcast against the arrays (scalars, or [B, 1, ..., 1]).
"""

from lumiere_jax.errors import ConfigError

PREDICTIONS = ("v", "eps", "x0")


def check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ConfigError(f"diffusion.prediction={prediction!r} is invalid; allowed: one of "
                      f"{PREDICTIONS}")


def v_from_x0_eps(x0, eps, alpha, sigma):
  return alpha * eps - sigma * x0


def x0_from_eps(z, eps, alpha, sigma):
  return (z - sigma * eps) / alpha


def eps_from_x0(z, x0, alpha, sigma):
  return (z - alpha * x0) / sigma


def x0_eps_from_v(z, v, alpha, sigma):
  return alpha * z - sigma * v, sigma * z + alpha * v


def to_x0_eps(prediction, z, alpha, sigma, kind: str):
  """The network output `prediction` of type `kind` at noisy input z -> (x0, eps)."""
  check_prediction(kind)
  if kind == "v":
    return x0_eps_from_v(z, prediction, alpha, sigma)
  if kind == "eps":
    return x0_from_eps(z, prediction, alpha, sigma), prediction
  return prediction, eps_from_x0(z, prediction, alpha, sigma)


def target(x0, eps, alpha, sigma, kind: str):
  """What a network of prediction type `kind` should output for this (x0, eps)."""
  check_prediction(kind)
  if kind == "v":
    return v_from_x0_eps(x0, eps, alpha, sigma)
  return eps if kind == "eps" else x0
