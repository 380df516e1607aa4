"""Mask samplers: convention (1 = known), the shape of each kind, determinism, shares."""

import collections

import numpy as np
import pytest

from lumiere_jax.data import masks

T, H, W = 8, 32, 24


def _sample(kind, seed=0):
  return masks.SAMPLERS[kind](np.random.default_rng(seed), T, H, W)


@pytest.mark.parametrize("kind", sorted(masks.SAMPLERS))
def test_masks_are_binary_uint8_of_shape_t_h_w_1(kind):
  mask = _sample(kind)
  assert mask.shape == (T, H, W, 1) and mask.dtype == np.uint8
  assert set(np.unique(mask)) <= {0, 1}


def test_no_mask_knows_nothing_and_first_frame_knows_exactly_frame_zero():
  assert _sample("none").sum() == 0
  mask = _sample("first_frame")
  assert mask[0].all() and not mask[1:].any()


@pytest.mark.parametrize("seed", range(20))
def test_inpaint_hides_static_boxes(seed):
  mask = _sample("inpaint", seed)
  assert np.all(mask == mask[:1])
  unknown = mask[0, ..., 0] == 0
  assert 0 < unknown.mean() < 1
  rows, cols = np.nonzero(unknown)
  assert (rows.max() - rows.min() + 1) >= 0.2 * H - 1


@pytest.mark.parametrize("seed", range(20))
def test_outpaint_knows_a_central_rectangle_and_hides_a_border(seed):
  frame = _sample("outpaint", seed)[0, ..., 0]
  rows, cols = np.nonzero(frame)
  top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
  assert frame[top:bottom + 1, left:right + 1].all()  # the known part is one rectangle
  margins = (top / H, 1 - (bottom + 1) / H, left / W, 1 - (right + 1) / W)
  assert max(margins) >= 0.15 - 1 / min(H, W)
  assert np.all(_sample("outpaint", seed) == frame[None, ..., None])


@pytest.mark.parametrize("seed", range(20))
def test_cinemagraph_knows_the_first_frame_and_the_outside_of_a_region(seed):
  mask = _sample("cinemagraph", seed)
  assert mask[0].all()
  later = mask[1:, ..., 0]
  assert np.all(later == later[:1])
  assert 0.05 < 1 - later[0].mean() < 0.5


def test_sampling_is_deterministic_given_the_seed():
  a = masks.sample_mask(np.random.default_rng(3), T, H, W)
  b = masks.sample_mask(np.random.default_rng(3), T, H, W)
  assert a[0] == b[0]
  np.testing.assert_array_equal(a[1], b[1])


def test_kinds_follow_their_weights_including_a_share_of_no_mask():
  rng = np.random.default_rng(0)
  counts = collections.Counter(masks.sample_mask(rng, 2, 8, 8)[0] for _ in range(2000))
  for kind, weight in masks.DEFAULT_MASK_WEIGHTS.items():
    assert abs(counts[kind] / 2000 - weight) < 0.04, (kind, counts)


def test_bad_weights_are_refused():
  with pytest.raises(ValueError, match="unknown mask kinds"):
    masks.check_weights({"paint": 1.0})
  with pytest.raises(ValueError, match="not all zero"):
    masks.check_weights({"none": 0.0})
