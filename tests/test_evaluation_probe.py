"""`lumiere eval probe` (evaluation/probe.py): the centroid it reads off a conditional
mean is right, and on the dataset's own means it sees the captioned motions (what a
learned model must match)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lumiere_jax import cli, weights
from lumiere_jax.data import builders, shapes
from lumiere_jax.errors import UserError
from lumiere_jax.models import build
from lumiere_jax.evaluation import probe as motion_probe


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


def test_probe_bad_input_is_one_line_exit_2(tmp_path, capsys):
  missing = str(tmp_path / "missing")
  for argv, match in ((["--checkpoint", missing, "--seeds", "0"], "--seeds"),
                      (["--checkpoint", missing], "does not exist"),
                      (["--model", "shapes_t2v", "--raw"], "--raw selects"),
                      (["--checkpoint", missing, "--data", missing], "is not a folder")):
    code = cli.main(["eval", "probe", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, (argv, err)


def test_caption_swap_gap_is_zero_for_a_model_blind_to_the_caption(fresh_model):
  """With the text encoder zeroed every caption encodes alike, so the swapped caption
  denoises exactly as well as the true one; with its own weights the captions differ.
  Only clips moving in a direction are used, at most max_clips of them."""
  config, params = weights.load_model()
  model = build.Model(config)
  clips = [(c.caption, c.video) for c in
           (shapes.render_clip((2, i), 32, 4, two_object_fraction=0.0) for i in range(12))]
  directed = sum(motion_probe.swapped_direction(caption) is not None for caption, _ in clips)
  assert directed >= 3
  blind = dict(params, text=jax.tree.map(jnp.zeros_like, params["text"]))
  (gap,) = motion_probe.caption_swap_gap(model, blind, clips, [0.9], max_clips=3).values()
  assert gap["clips"] == 3 and gap["true"] > 0 and gap["gap"] == pytest.approx(0, abs=1e-6)
  (gap,) = motion_probe.caption_swap_gap(model, params, clips, [0.9], max_clips=3).values()
  assert gap["swapped"] != gap["true"]
  with pytest.raises(UserError, match="no single-object clip"):
    motion_probe.caption_swap_gap(model, params, clips[:0], [0.9], max_clips=3)
