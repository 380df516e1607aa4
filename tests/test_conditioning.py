"""models/conditioning.py: the extra input channels of the SSR and <J, C, M> models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax.models import conditioning


def test_kind_follows_the_input_channels_and_refuses_others():
  assert [conditioning.kind(c) for c in (3, 6, 7)] == ["none", "ssr", "masked"]
  with pytest.raises(ValueError, match="no conditioning has 5 input channels"):
    conditioning.kind(5)


def test_masked_channels_are_the_known_pixels_and_the_mask():
  clip = jax.random.uniform(jax.random.key(0), (2, 4, 8, 8, 3), minval=-1, maxval=1)
  known = (jax.random.uniform(jax.random.key(1), (2, 4, 8, 8, 1)) > 0.5)
  extra = np.asarray(conditioning.channels("masked", clip.shape, clip=clip, known=known))
  assert extra.shape == (2, 4, 8, 8, 4)
  np.testing.assert_array_equal(extra[..., 3:], np.asarray(known, np.float32))
  np.testing.assert_array_equal(extra[..., :3], np.where(known, clip, 0.0))


def test_ssr_channels_upsample_to_the_output_size_and_keep_constants():
  low = jnp.full((1, 4, 8, 8, 3), 0.25)
  extra = conditioning.channels("ssr", (1, 4, 32, 32, 3), low_res=low)
  assert extra.shape == (1, 4, 32, 32, 3)
  np.testing.assert_allclose(np.asarray(extra), 0.25, atol=1e-6)
  assert conditioning.channels("none", (1, 4, 32, 32, 3)) is None


def test_model_input_concatenates_after_the_noisy_clip():
  noisy, extra = jnp.zeros((1, 2, 4, 4, 3)), jnp.ones((1, 2, 4, 4, 4))
  x = conditioning.model_input(noisy, extra)
  assert x.shape[-1] == 7 and float(x[..., :3].sum()) == 0 and float(x[..., 3:].min()) == 1
  assert conditioning.model_input(noisy, None) is noisy
