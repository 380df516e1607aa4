"""benchmarks/motion_probe.py: the centroid it reads off a conditional mean is right, and
on the dataset's own means it sees the captioned motions (what a learned model must match)."""

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

from lumiere_jax.data import builders, shapes

_BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_BENCHMARKS))  # as when the script runs: motion_check beside it
_SPEC = importlib.util.spec_from_file_location("motion_probe", _BENCHMARKS / "motion_probe.py")
motion_probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(motion_probe)
import motion_check  # noqa: E402  (benchmarks/ is on sys.path now)


def test_centroid_of_a_moving_square_is_closed_form():
  video = np.zeros((4, 16, 16))
  for t in range(4):
    video[t, 2:6, 8 - 2 * t:12 - 2 * t] = 1.0  # 4x4 square, x centre 9.5 - 2t
  centroids, mass = motion_probe.weighted_track(video)
  np.testing.assert_allclose(centroids[:, 0], 9.5 - 2 * np.arange(4))
  np.testing.assert_allclose(centroids[:, 1], 3.5)
  np.testing.assert_allclose(mass, 16.0)
  assert motion_probe.summary(video) == dict(dx=-6.0, dy=0.0, mass_ratio=1.0)


def test_swapped_captions_differ_in_exactly_the_named_phrase():
  for pairs in motion_probe.SWAPS.values():
    for a, b in pairs:
      x, y = motion_probe._with(motion_probe.BASE, a), motion_probe._with(motion_probe.BASE, b)
      assert a in x and b in y and x.replace(a, "*") == y.replace(b, "*"), (x, y)


@pytest.fixture(scope="module")
def means(tmp_path_factory):
  out = tmp_path_factory.mktemp("shapes")
  builders.build_shapes(out, 160, 32, 16, seed=5)
  return motion_probe.dataset_means(out, 16)


@pytest.mark.parametrize("motion, dx_sign, dy_sign", [
    ("moving left", -1, 0), ("moving right", 1, 0), ("moving up", 0, -1),
    ("moving down", 0, 1)])
def test_dataset_means_move_as_captioned(means, motion, dx_sign, dy_sign):
  s = motion_probe.summary(means[motion])
  along, across = (s["dx"], s["dy"]) if dx_sign else (s["dy"], s["dx"])
  assert along * (dx_sign or dy_sign) > 4.0 and abs(across) < 1.0, (motion, s)


def test_dataset_means_grow_shrink_and_stand_still(means):
  assert motion_probe.summary(means["growing"])["mass_ratio"] > 1.5
  assert motion_probe.summary(means["shrinking"])["mass_ratio"] < 0.67
  still = motion_probe.summary(means["standing still"])
  assert abs(still["dx"]) < 0.5 and abs(still["dy"]) < 0.5


def test_swapped_direction_is_the_opposite_direction_and_only_that():
  assert motion_probe.swapped_direction("a red circle moving left") == "a red circle moving right"
  assert motion_probe.swapped_direction("a blue square moving up") == "a blue square moving down"
  for motion in ("growing", "shrinking", "standing still", "bouncing around"):
    assert motion_probe.swapped_direction(f"a red circle {motion}") is None
  for a, b in motion_probe.OPPOSITE.items():
    assert motion_probe.OPPOSITE[b] == a


def test_dataset_clips_move_as_captioned_and_steadily():
  """motion_check on rendered clips: every single-object clip with a direction moves as
  captioned, by under 2 px a frame (thresholded centroids of anti-aliased shapes wobble a
  little) and straight; the same track held 4 frames at a time jumps twice as far."""
  judged = 0
  for index in range(60):
    clip = shapes.render_clip((7, 0, index), 32, 16, two_object_fraction=0.0)
    motion = clip.tracks[0].motion
    if motion not in motion_check.DIRECTIONS:
      continue
    centroids, _ = motion_check.object_track(clip.video, 100)
    max_step, straightness = motion_check.steadiness(centroids)
    assert motion_check.judge(clip.caption, centroids[-1] - centroids[0], 1.0, 3.0, 0.25)
    assert max_step < 2.0 and straightness > 0.95, (clip.caption, max_step, straightness)
    jumpy = centroids[(np.arange(16) // 4) * 4]
    assert motion_check.steadiness(jumpy)[0] > 2 * max_step
    judged += 1
  assert judged >= 20


def test_steadiness_is_closed_form():
  line = np.stack([np.arange(5.0), np.zeros(5)], axis=-1)
  assert motion_check.steadiness(line) == (1.0, 1.0)
  back_and_forth = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [2.0, 0.0]])
  assert motion_check.steadiness(back_and_forth) == (2.0, pytest.approx(1 / 3))
