"""Exact optimal denoisers for Gaussian and Gaussian-mixture data.

For data x0 ~ sum_k w_k N(mu_k, S_k) and z = alpha x0 + sigma eps, the minimum-MSE
denoiser E[x0 | z] is closed form: each component contributes its posterior mean
  mu_k + alpha S_k C_k^{-1} (z - alpha mu_k),   C_k = alpha^2 S_k + sigma^2 I,
weighted by its posterior responsibility, proportional to w_k N(z; alpha mu_k, C_k).
Driving a sampler with this denoiser removes all learning error, so what remains is the
sampler's own discretisation error: the ground truth the sampler tests compare against.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax.diffusion import predictions
from lumiere_jax.diffusion.guidance import Denoiser
from lumiere_jax.diffusion.schedules import Schedule


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """weights [K], means [K, D], covariances [K, D, D] (numpy, float64). Compared and
  hashed by identity (numpy fields have no hash), so it can be a static jit argument."""

  weights: np.ndarray
  means: np.ndarray
  covariances: np.ndarray

  @classmethod
  def gaussian(cls, mean, covariance) -> "GaussianMixture":
    return cls(np.ones(1), np.asarray(mean, np.float64)[None],
               np.asarray(covariance, np.float64)[None])

  def mean(self) -> np.ndarray:
    return self.weights @ self.means

  def covariance(self) -> np.ndarray:
    """Law of total covariance: within-component plus between-component spread."""
    centred = self.means - self.mean()
    within = np.einsum("k,kij->ij", self.weights, self.covariances)
    between = np.einsum("k,ki,kj->ij", self.weights, centred, centred)
    return within + between

  def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
    component = rng.choice(len(self.weights), size=n, p=self.weights)
    chol = np.linalg.cholesky(self.covariances)[component]
    noise = rng.standard_normal((n, self.means.shape[1]))
    return self.means[component] + np.einsum("nij,nj->ni", chol, noise)

  def posterior_mean(self, z, alpha, sigma):
    """E[x0 | z] for z [B, D] at noise level (alpha, sigma) [B].

    Works in each component's eigenbasis, S_k = U diag(lam) U^T, where C_k is diagonal
    (alpha^2 lam + sigma^2): the solve and log-determinant become elementwise.
    """
    lam, basis = np.linalg.eigh(self.covariances)
    lam, basis = jnp.asarray(lam, jnp.float32), jnp.asarray(basis, jnp.float32)
    means = jnp.asarray(self.means, jnp.float32)
    a, s = alpha[:, None, None], sigma[:, None, None]
    residual = jnp.einsum("kji,bkj->bki", basis, z[:, None, :] - a * means[None])
    noisy_var = a**2 * lam[None] + s**2                                  # [B, K, D]
    shrunk = jnp.einsum("kij,bkj->bki", basis, a * lam[None] * residual / noisy_var)
    log_resp = (jnp.log(jnp.asarray(self.weights, jnp.float32))[None]
                - 0.5 * jnp.sum(jnp.log(noisy_var) + residual**2 / noisy_var, axis=-1))
    resp = jax.nn.softmax(log_resp, axis=1)
    return jnp.einsum("bk,bki->bi", resp, means[None] + shrunk)

  def denoiser(self, schedule: Schedule, prediction: str = "v") -> Denoiser:
    """The optimal denoiser fn(z [B, D], t [B], cond) -> prediction of type `prediction`."""

    def fn(z, t, cond):
      del cond
      alpha, sigma = schedule.alpha_sigma(t)
      x0 = self.posterior_mean(z, alpha, sigma)
      eps = predictions.eps_from_x0(z, x0, alpha[:, None], sigma[:, None])
      return predictions.target(x0, eps, alpha[:, None], sigma[:, None], prediction)

    return fn
