"""Stand-ins for trained weights, shared by the model, sharding and train-step tests.
(No tests here.)

At initialisation every inflation block returns x + 0 and every temporal resampler is the
identity, so a bug inside the temporal layers (an axis, a reshape, a sharding) cannot
change a model's output. Tests that must see such bugs run on weights perturbed by this
module: zero projections become non-zero and identity kernels stop being identities.
"""

import jax
import numpy as np


def perturbed(tree, seed: int, scale: float = 0.1):
  """`tree` (host numpy leaves) with independent N(0, scale^2) noise added to every leaf.
  numpy, not jax.random: nothing to compile, whatever the leaves' shapes."""
  rng = np.random.default_rng(seed)

  def add_noise(leaf):
    leaf = np.asarray(leaf)
    return leaf + (scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return jax.tree_util.tree_map(add_noise, tree)
