"""The shapes renderer against the DESIGN.md spec, measured on the rendered pixels."""

import re

import numpy as np
import pytest

from lumiere_jax.data import shapes

R = 32
T = 16
CAPTION = re.compile(
    r"^a (?P<c1>\w+) (?P<s1>\w+) (?P<m1>moving \w+|bouncing around|growing|shrinking|"
    r"standing still)(?: and a (?P<c2>\w+) (?P<s2>\w+) (?P<m2>moving \w+|bouncing around|"
    r"growing|shrinking|standing still))?$")
AREA_PER_H2 = {"circle": np.pi, "square": 4.0, "triangle": 2.0}
CENTROID_DY_PER_H = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}


@pytest.fixture(scope="module")
def clips():
  return [shapes.render_clip(seed, R, T, two_object_fraction=0.5) for seed in range(300)]


def _tracks(clips, motion=None):
  return [(clip, track) for clip in clips for track in clip.tracks
          if motion is None or track.motion == motion]


def _coverage(video: np.ndarray, colour: str) -> np.ndarray:
  """Per-pixel share of the object of this colour, from the pixels alone: [T, H, W]."""
  c = np.array(shapes.COLOURS[colour], np.float64)
  pixels = video.astype(np.float64)
  alpha = pixels @ c / (c @ c)
  on_line = np.abs(pixels - alpha[..., None] * c).max(-1) <= 1.0
  return np.where(on_line & (alpha > 0.01), alpha, 0.0)


def test_same_seed_same_clip_and_different_seeds_differ():
  a, b = shapes.render_clip(7, R, T), shapes.render_clip(7, R, T)
  np.testing.assert_array_equal(a.video, b.video)
  assert a.caption == b.caption
  assert not np.array_equal(a.video, shapes.render_clip(8, R, T).video)


def test_every_pixel_is_black_or_a_shade_of_an_object_palette_colour(clips):
  for clip in clips:
    pixels = clip.video.reshape(-1, 3).astype(np.float64)
    explained = np.all(pixels == 0, axis=-1)
    for track in clip.tracks:
      c = np.array(shapes.COLOURS[track.colour], np.float64)
      alpha = np.clip(pixels @ c / (c @ c), 0, 1)
      explained |= np.abs(pixels - alpha[:, None] * c).max(-1) <= 1.0
    assert explained.all(), clip.caption


def test_fully_covered_pixels_have_exactly_the_palette_colour(clips):
  for clip in clips:
    for track in clip.tracks:
      exact = np.all(clip.video == shapes.COLOURS[track.colour], axis=-1)
      assert exact.sum(axis=(1, 2)).min() > 0, clip.caption


def test_edges_are_anti_aliased(clips):
  for clip in clips[:20]:
    for track in clip.tracks:
      alpha = _coverage(clip.video, track.colour)
      assert np.any((alpha > 0.05) & (alpha < 0.95)), clip.caption


def test_half_extents_and_rendered_areas_match_the_spec(clips):
  for clip, track in _tracks(clips):
    h = track.half_extents
    assert h.min() >= 0.12 * R - 1e-9 and h.max() <= 0.20 * R + 1e-9
    area = _coverage(clip.video, track.colour).sum(axis=(1, 2))
    expected = AREA_PER_H2[track.shape] * h ** 2
    np.testing.assert_allclose(area, expected, rtol=0.04, err_msg=clip.caption)


def test_rendered_centroids_follow_the_tracks(clips):
  ys, xs = np.mgrid[0:R, 0:R] + 0.5
  for clip, track in _tracks(clips):
    alpha = _coverage(clip.video, track.colour)
    mass = alpha.sum(axis=(1, 2))
    centroid = np.stack([(alpha * xs).sum((1, 2)) / mass, (alpha * ys).sum((1, 2)) / mass], -1)
    expected = track.centres.copy()
    expected[:, 1] += CENTROID_DY_PER_H[track.shape] * track.half_extents
    np.testing.assert_allclose(centroid, expected, atol=0.15, err_msg=clip.caption)


def test_objects_are_fully_visible_and_never_overlap(clips):
  for clip in clips:
    for track in clip.tracks:
      low = track.centres - track.half_extents[:, None]
      high = track.centres + track.half_extents[:, None]
      assert low.min() >= 0 and high.max() <= R, clip.caption
    if len(clip.tracks) == 2:
      a, b = clip.tracks
      gap = np.abs(a.centres - b.centres) - (a.half_extents + b.half_extents)[:, None]
      assert np.all(gap.max(axis=1) >= shapes.OBJECT_GAP), clip.caption


@pytest.mark.parametrize("motion", list(shapes.LINEAR_MOTIONS))
def test_linear_motions_travel_25_to_60_percent_at_constant_speed(clips, motion):
  direction = np.array(shapes.LINEAR_MOTIONS[motion], np.float64)
  tracks = _tracks(clips, motion)
  assert tracks
  for clip, track in tracks:
    steps = np.diff(track.centres, axis=0)
    np.testing.assert_allclose(steps, np.broadcast_to(steps[0], steps.shape), atol=1e-9)
    travel = track.centres[-1] - track.centres[0]
    distance = travel @ direction
    assert 0.25 * R <= distance <= 0.60 * R, clip.caption
    np.testing.assert_allclose(travel, distance * direction, atol=1e-9)


def test_bouncing_reflects_off_the_walls_at_least_once_at_constant_diagonal_speed(clips):
  tracks = _tracks(clips, "bouncing around")
  assert tracks
  for clip, track in tracks:
    assert track.bounces >= 1
    steps = np.abs(np.diff(track.centres, axis=0))
    reversals = np.sign(np.diff(track.centres, axis=0))
    assert np.any(reversals[1:] != reversals[:-1]), clip.caption
    speed = steps.max(axis=0)
    np.testing.assert_allclose(speed[0], speed[1])  # 45 degrees
    # A step is shorter than the speed only where it straddles a reflection.
    assert np.sum(steps < speed - 1e-9) <= track.bounces, clip.caption


def test_bouncing_turns_on_each_axis_and_travels_1_2_to_1_8_free_ranges(clips):
  """docs/data.md: each axis travels 1.2-1.8 times its free range R - 2h over the clip,
  so the object turns at least once on each axis, at a wall, and stays inside."""
  tracks = _tracks(clips, "bouncing around")
  for clip, track in tracks:
    h = track.half_extents[0]
    free = R - 2 * h
    velocity = np.diff(track.centres, axis=0)  # [T - 1, 2]
    speed = np.abs(velocity).max(axis=0)       # steps not straddling a wall are whole
    travel = speed * (T - 1) / free
    assert np.all((travel >= 1.2 - 1e-9) & (travel <= 1.8 + 1e-9)), (clip.caption, travel)
    for axis in range(2):
      signs = np.sign(velocity[:, axis])
      turns = np.flatnonzero(signs[1:] != signs[:-1])
      assert turns.size >= 1, (clip.caption, axis)
      # Each turn happens at a wall: the frame before or after it is within a step of
      # it (centre h or R - h).
      position = track.centres[:, axis]
      for turn in turns:
        near = position[turn:turn + 3]
        wall = np.minimum(np.abs(near - h), np.abs(near - (R - h))).min()
        assert wall <= speed[axis] + 1e-9, (clip.caption, axis, turn)
    assert track.bounces >= 2  # one on each axis at least


@pytest.mark.parametrize("motion", ["growing", "shrinking"])
def test_growing_and_shrinking_change_size_by_at_least_1_6_with_fixed_centre(clips, motion):
  tracks = _tracks(clips, motion)
  assert tracks
  for clip, track in tracks:
    h = track.half_extents
    ratio = h[-1] / h[0] if motion == "growing" else h[0] / h[-1]
    assert ratio >= 1.6 - 1e-9
    assert np.all(np.diff(h) > 0) if motion == "growing" else np.all(np.diff(h) < 0)
    np.testing.assert_allclose(track.centres, np.broadcast_to(track.centres[0], (T, 2)))
    area = _coverage(clip.video, track.colour).sum(axis=(1, 2))
    measured = area[-1] / area[0] if motion == "growing" else area[0] / area[-1]
    assert measured >= 1.6 ** 2 * 0.95, clip.caption


def test_standing_still_objects_do_not_change(clips):
  for clip, track in _tracks(clips, "standing still"):
    np.testing.assert_allclose(track.centres, np.broadcast_to(track.centres[0], (T, 2)))
    np.testing.assert_allclose(track.half_extents, track.half_extents[0])


def test_captions_follow_the_grammar_and_describe_the_objects(clips):
  for clip in clips:
    match = CAPTION.match(clip.caption)
    assert match, clip.caption
    parsed = [(match[f"c{k}"], match[f"s{k}"], match[f"m{k}"]) for k in (1, 2) if match[f"c{k}"]]
    assert parsed == [(t.colour, t.shape, t.motion) for t in clip.tracks]
    for colour, shape, motion in parsed:
      assert colour in shapes.COLOURS and shape in shapes.SHAPES and motion in shapes.MOTIONS
    if len(parsed) == 2:
      assert parsed[0][0] != parsed[1][0]


def test_every_colour_shape_and_motion_occurs(clips):
  tracks = [t for _, t in _tracks(clips)]
  assert {t.colour for t in tracks} == set(shapes.COLOURS)
  assert {t.shape for t in tracks} == set(shapes.SHAPES)
  assert {t.motion for t in tracks} == set(shapes.MOTIONS)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_two_object_fraction(fraction):
  counts = [len(shapes.sample_scene(np.random.default_rng(s), R, T, fraction))
            for s in range(400)]
  share = np.mean(np.array(counts) == 2)
  assert abs(share - fraction) <= 0.08


def test_excluded_and_required_combinations():
  excluded = frozenset({("red", "circle", "growing"), ("blue", "square", "moving up")})
  for seed in range(200):
    for track in shapes.sample_scene(np.random.default_rng(seed), R, T, 0.5, excluded):
      assert (track.colour, track.shape, track.motion) not in excluded
  tracks = shapes.sample_scene(np.random.default_rng(0), R, T, 1.0, required=("red", "circle",
                                                                              "growing"))
  assert (tracks[0].colour, tracks[0].shape, tracks[0].motion) == ("red", "circle", "growing")


@pytest.mark.parametrize("resolution,frames", [(64, 16), (128, 80), (32, 1)])
def test_other_sizes(resolution, frames):
  clip = shapes.render_clip(3, resolution, frames)
  assert clip.video.shape == (frames, resolution, resolution, 3)
  for track in clip.tracks:
    assert 0.12 * resolution <= track.half_extents.min() <= track.half_extents.max() \
        <= 0.20 * resolution


@pytest.mark.parametrize("resolution,frames", [(48, 16), (32, 0), (32, 81)])
def test_unsupported_sizes_are_refused(resolution, frames):
  with pytest.raises(ValueError):
    shapes.render_clip(0, resolution, frames)


def test_all_captions_covers_rendered_captions(clips):
  assert {clip.caption for clip in clips} <= set(shapes.all_captions())


@pytest.mark.parametrize("style", ["outlined", "striped"])
def test_styles_draw_part_of_each_plain_shape_with_the_same_tracks(style):
  """A style changes how objects are drawn, never where: the same tracks and caption,
  each styled pixel no brighter than the plain one, a visible share of the plain
  object's light kept and a visible share removed; outlines keep the edge and hollow
  the middle."""
  for seed in range(6):
    plain = shapes.render_clip(seed, 64, 4)
    styled = shapes.render_clip(seed, 64, 4, style=style)
    assert styled.caption == plain.caption
    for a, b in zip(plain.tracks, styled.tracks):
      np.testing.assert_array_equal(a.centres, b.centres)
    assert np.all(styled.video <= plain.video)
    kept = styled.video.astype(float).sum() / plain.video.astype(float).sum()
    assert 0.2 < kept < 0.8, (seed, kept)
    if style == "outlined":
      track = plain.tracks[0]
      cx, cy = np.rint(track.centres[0]).astype(int)
      assert not styled.video[0, cy, cx].any() and plain.video[0, cy, cx].any()


def test_unknown_style_is_refused():
  with pytest.raises(ValueError, match="style 'dotted' is not supported"):
    shapes.render_clip(0, style="dotted")
