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


def test_first_last_knows_exactly_the_first_and_the_last_frame():
  mask = _sample("first_last")
  assert mask[0].all() and mask[-1].all() and not mask[1:-1].any()


@pytest.mark.parametrize("seed", range(20))
def test_keyframes_know_every_kth_frame_from_frame_0(seed):
  """Whole frames 0, k, 2k, ... with k in 2..T/2: at least two keyframes, a gap of at
  least one frame between them, the same k throughout."""
  frames = _sample("keyframes", seed)[..., 0].reshape(T, -1)
  assert np.all(frames.all(axis=1) | ~frames.any(axis=1))  # whole frames only
  known = np.flatnonzero(frames.all(axis=1))
  assert known[0] == 0 and len(known) >= 2
  steps = np.diff(known)
  assert np.all(steps == steps[0]) and 2 <= steps[0] <= T // 2
  assert known[-1] + steps[0] >= T  # none left out at the end


def test_keyframes_of_a_two_frame_clip_know_its_first_frame():
  mask = masks.keyframes_mask(np.random.default_rng(0), 2, 4, 4)
  assert mask[0].all() and not mask[1].any()


def test_every_kind_is_drawn_by_default_and_the_weights_sum_to_one():
  assert set(masks.DEFAULT_MASK_WEIGHTS) == set(masks.SAMPLERS)
  assert abs(sum(masks.DEFAULT_MASK_WEIGHTS.values()) - 1.0) < 1e-9


def _side_bounds(fraction_range, size):
  """The whole-pixel box sides a side fraction in `fraction_range` of `size` pixels can
  round to: the integers within half a pixel of the range."""
  low, high = fraction_range
  return int(np.ceil(low * size - 0.5)), int(np.floor(high * size + 0.5))


def _components(unknown: np.ndarray) -> list:
  """4-connected components of a boolean [H, W] image, each a boolean image."""
  labels = np.zeros(unknown.shape, int)
  found = []
  for start in zip(*np.nonzero(unknown)):
    if labels[start]:
      continue
    labels[start] = len(found) + 1
    stack, pixels = [start], []
    while stack:
      r, c = stack.pop()
      pixels.append((r, c))
      for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
        if 0 <= nr < unknown.shape[0] and 0 <= nc < unknown.shape[1] and \
            unknown[nr, nc] and not labels[nr, nc]:
          labels[nr, nc] = len(found) + 1
          stack.append((nr, nc))
    component = np.zeros(unknown.shape, bool)
    component[tuple(np.array(pixels).T)] = True
    found.append(component)
  return found


def _bounding_box(component):
  rows, cols = np.nonzero(component)
  return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


@pytest.mark.parametrize("seed", range(20))
def test_inpaint_hides_static_boxes(seed):
  mask = _sample("inpaint", seed)
  assert np.all(mask == mask[:1])
  unknown = mask[0, ..., 0] == 0
  assert 0 < unknown.mean() < 1
  rows, cols = np.nonzero(unknown)
  assert (rows.max() - rows.min() + 1) >= 0.2 * H - 1


def test_inpaint_hides_one_to_three_boxes_of_20_to_50_percent_side():
  """docs/data.md: one to three boxes, each side 20-50% of the frame's. Measured on the
  mask: each unknown component is a union of boxes at least the smallest box in each
  direction, and it needs at least ceil(side / largest box side) boxes along each axis
  and ceil(area / largest box area) boxes in all; those needs add up to at most 3."""
  h_min, h_max = _side_bounds((0.2, 0.5), H)
  w_min, w_max = _side_bounds((0.2, 0.5), W)
  for seed in range(300):
    unknown = _sample("inpaint", seed)[0, ..., 0] == 0
    components = _components(unknown)
    assert 1 <= len(components) <= 3, seed
    needed = 0
    for component in components:
      top, bottom, left, right = _bounding_box(component)
      height, width = bottom - top, right - left
      assert height >= h_min and width >= w_min, (seed, height, width)
      needed += max(-(-height // h_max), -(-width // w_max),
                    -(-int(component.sum()) // (h_max * w_max)))
    assert needed <= 3, seed


@pytest.mark.parametrize("seed", range(20))
def test_outpaint_knows_a_central_rectangle_and_hides_a_border(seed):
  frame = _sample("outpaint", seed)[0, ..., 0]
  rows, cols = np.nonzero(frame)
  top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
  assert frame[top:bottom + 1, left:right + 1].all()  # the known part is one rectangle
  assert frame.sum() == (bottom + 1 - top) * (right + 1 - left)  # and only that
  margins = np.array([top / H, 1 - (bottom + 1) / H, left / W, 1 - (right + 1) / W])
  assert max(margins) >= 0.15 - 1 / min(H, W)
  # 0-30% per side (rounded to whole pixels).
  sizes = np.array([H, H, W, W])
  assert np.all(margins * sizes <= np.floor(0.3 * sizes + 0.5)), margins
  assert np.all(_sample("outpaint", seed) == frame[None, ..., None])


@pytest.mark.parametrize("seed", range(20))
def test_cinemagraph_knows_the_first_frame_and_the_outside_of_a_region(seed):
  """First frame known; later frames known outside one box of 30-60% side, so the region
  to animate is 9-36% of the frame (up to rounding to whole pixels)."""
  mask = _sample("cinemagraph", seed)
  assert mask[0].all()
  later = mask[1:, ..., 0]
  assert np.all(later == later[:1])
  unknown = later[0] == 0
  top, bottom, left, right = _bounding_box(unknown)
  assert unknown[top:bottom, left:right].all() and unknown.sum() == (bottom - top) * (
      right - left)  # one box
  h_min, h_max = _side_bounds((0.3, 0.6), H)
  w_min, w_max = _side_bounds((0.3, 0.6), W)
  assert h_min <= bottom - top <= h_max and w_min <= right - left <= w_max
  assert h_min * w_min / (H * W) <= unknown.mean() <= h_max * w_max / (H * W)  # 9-36%


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
