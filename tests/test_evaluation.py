"""The shapes evaluator: the tracker judges rendered ground truth right and its reversal
wrong, an empty video matches nothing, and `lumiere eval shapes` runs end to end."""

import json
import math

import jax
import numpy as np
import pytest

from lumiere_jax import cli, weights
from lumiere_jax.data import shapes
from lumiere_jax.evaluation import shapes_eval, tracker

DIRECTED = ("moving left", "moving right", "moving up", "moving down", "growing",
            "shrinking")


@pytest.fixture(scope="module")
def clips():
  return [shapes.render_clip((11, i), 32, 16, two_object_fraction=0.3) for i in range(160)]


def _judged(clips, reverse=False):
  rows = []
  for clip in clips:
    video = clip.video[::-1] if reverse else clip.video
    rows += [(track.motion, r) for track, r in zip(clip.tracks,
                                                   tracker.judge_video(video, clip.caption))]
  return rows


def test_ground_truth_is_judged_right(clips):
  rows = _judged(clips)
  assert len(rows) > 180
  for key in ("motion", "colour", "shape"):
    assert np.mean([r[key] for _, r in rows]) >= 0.95, key
  for motion in shapes.MOTIONS:  # every motion, not just on average
    assert np.mean([r["motion"] for m, r in rows if m == motion]) >= 0.9, motion


def test_ground_truth_played_backwards_moves_the_wrong_way(clips):
  rows = [r for m, r in _judged(clips, reverse=True) if m in DIRECTED]
  assert len(rows) > 100
  assert not any(r["motion"] for r in rows)
  assert np.mean([r["colour"] for r in rows]) >= 0.95  # still there, just backwards


def test_an_empty_video_matches_nothing():
  empty = np.zeros((16, 32, 32, 3), np.uint8)
  for r in tracker.judge_video(empty, "a red circle moving left and a blue square growing"):
    assert not (r["colour"] or r["shape"] or r["motion"])


def test_a_second_object_of_the_named_colour_is_not_the_named_object(clips):
  """One prompted object drawn twice (a copy shifted away from it, as the shipped model
  once drew a spurious second red circle) is judged absent: the colour's coverage is two
  blobs. The clip itself is judged right, and so is the object smeared by a pixel."""
  judged = 0
  for clip in clips:
    if len(clip.tracks) != 1 or clip.tracks[0].motion != "standing still":
      continue
    twice = np.maximum(clip.video, np.roll(clip.video, 16, axis=2))
    assert tracker.judge_video(clip.video, clip.caption)[0]["colour"], clip.caption
    assert not tracker.judge_video(twice, clip.caption)[0]["colour"], clip.caption
    smeared = np.maximum(clip.video, np.roll(clip.video, 1, axis=2))  # one blob, wider
    assert tracker.judge_video(smeared, clip.caption)[0]["colour"], clip.caption
    judged += 1
  assert judged >= 5


def test_an_object_that_changes_colour_halfway_is_lost_midway(clips):
  """Ground truth keeps every object in both halves; the same clip with the second
  half's object recoloured (as the model's two-object clips swap colours mid-clip) loses
  the named object midway, and an empty clip loses nothing (it never had it)."""
  judged = 0
  for clip in clips[:40]:
    if len(clip.tracks) != 1:
      continue
    (truth,) = tracker.judge_video(clip.video, clip.caption)
    assert not truth["lost_midway"] and truth["present_halves"] == [1.0, 1.0], clip.caption
    recoloured = clip.video.copy()
    recoloured[8:] = recoloured[8:, ..., ::-1]  # RGB -> BGR: another palette colour
    if tracker.judge_video(recoloured[8:], clip.caption)[0]["colour"]:
      continue  # white (and others) read the same backwards
    (half,) = tracker.judge_video(recoloured, clip.caption)
    assert half["lost_midway"] and half["present_halves"] == [1.0, 0.0], clip.caption
    assert not half["colour"]
    judged += 1
  assert judged >= 10
  empty = tracker.judge_video(np.zeros_like(clips[0].video), clips[0].caption)
  assert empty and not any(r["lost_midway"] for r in empty)


def test_a_caption_outside_the_grammar_matches_nothing(clips):
  (r,) = tracker.judge_video(clips[0].video, "a purple dog moving left")
  assert not (r["colour"] or r["shape"] or r["motion"])


def _shaken(video, pixels, seed=0):
  """Each frame shifted by up to `pixels` px in x and y: a jittering object."""
  rng = np.random.default_rng(seed)
  return np.stack([np.roll(f, tuple(rng.integers(-pixels, pixels + 1, size=2)), axis=(0, 1))
                   for f in video])


def test_a_jittering_object_is_not_bouncing(clips):
  """A turn counts only with BOUNCE_LEG on both sides: +-1 px of jitter on an object that
  moves straight, grows or stands still is not a bounce (it was, with any sign change)."""
  judged = 0
  for clip in clips[:60]:
    track = clip.tracks[0]
    if track.motion == "bouncing around":
      continue
    shaken = _shaken(clip.video, 1, seed=judged)
    caption = f"a {track.colour} {track.shape} bouncing around"
    assert not tracker.judge_video(shaken, caption)[0]["motion"], clip.caption
    judged += 1
  assert judged > 30


def test_turns_count_reversals_with_legs_on_both_sides():
  assert tracker.turns(np.array([0.0, 4, 8, 4, 0, 4]), leg=3) == 2
  assert tracker.turns(np.array([0.0, 1, 0, 1, 0, 1, 0]), leg=3) == 0
  assert tracker.turns(np.array([0.0, 2, 8, 6]), leg=3) == 0  # came back only 2
  assert tracker.turns(np.array([5.0, 4, 5, 9, 4]), leg=3) == 1


def test_background_flicker_counts_changes_away_from_the_objects():
  video = np.zeros((4, 32, 32, 3), np.uint8)
  video[:, 10:18, 0:8] = shapes.COLOURS["red"]  # a still square at the left edge
  video[1::2, :, 30:] = 40                      # the right edge blinks (dim: background)
  coverage = tracker.colour_coverage(video)
  flicker = tracker.background_flicker(video, coverage)
  # Changing pixels: 2 columns x 32 rows, 40 in every channel, every frame pair; the
  # square's neighbourhood (rows 8..19, columns 0..9) is not background, and does not
  # wrap round to the right edge.
  background = 32 * 32 - 12 * 10
  assert flicker == pytest.approx(40 * 2 * 32 / background)
  assert tracker.background_flicker(video[:, :, :16], coverage[..., :16]) == 0.0


def test_a_track_that_holds_then_jumps_has_larger_steps_and_jitter():
  clip = shapes.render_clip((3, 0), 32, 16, two_object_fraction=0.0,
                            required=("red", "square", "moving right"))
  jumpy = clip.video[(np.arange(16) // 4) * 4]
  (smooth,), (held,) = (tracker.judge_video(v, clip.caption) for v in (clip.video, jumpy))
  assert smooth["max_step"] < 2.0 and held["max_step"] > 2 * smooth["max_step"]
  assert held["centroid_jitter"] > 2 * smooth["centroid_jitter"]


def test_held_out_prompts_cover_every_motion_and_hold_a_held_out_combination():
  items = shapes_eval.held_out_items(24, seed=5, resolution=32, num_frames=16)
  again = shapes_eval.held_out_items(24, seed=5, resolution=32, num_frames=16)
  assert [i.caption for i in items] == [i.caption for i in again]
  held = {" ".join(t) for t in shapes_eval.HELD_OUT}
  first_motions = set()
  for item in items:
    phrases = [p[2:] for p in item.caption.split(" and ")]
    assert phrases[0] in held and not any(p in held for p in phrases[1:])
    first_motions.add(tracker.parse_caption(item.caption)[0][2])
  assert first_motions == set(shapes.MOTIONS)
  assert sum(" and " in i.caption for i in items) == 24 // shapes_eval.TWO_OBJECT_EVERY


def test_seen_prompts_are_the_held_out_ones_with_trained_combinations():
  """--combinations seen: prompt i names the held-out prompt's shape and motion in the next
  palette colour, and no prompt holds a held-out combination."""
  held = {" ".join(t) for t in shapes_eval.HELD_OUT}
  items = shapes_eval.held_out_items(16, seed=5, resolution=32, num_frames=16)
  seen = shapes_eval.held_out_items(16, seed=5, resolution=32, num_frames=16,
                                    combinations="seen")
  for item, twin in zip(items, seen):
    first = tracker.parse_caption(item.caption)[0]
    assert tracker.parse_caption(twin.caption)[0] == shapes_eval.seen_twin(first)
    assert not any(p[2:] in held for p in twin.caption.split(" and "))
    assert (" and " in item.caption) == (" and " in twin.caption)


def test_every_held_out_combination_appears_alone_and_with_a_second_object():
  captions = [shapes_eval.held_out_items(1, 0, 32, 16)[0].caption]  # builds one clip
  assert captions[0].startswith("a red triangle moving left")
  paired = {shapes.MOTIONS[i % 8] for i in range(32) if shapes_eval.two_objects(i)}
  alone = {shapes.MOTIONS[i % 8] for i in range(32) if not shapes_eval.two_objects(i)}
  assert paired == alone == set(shapes.MOTIONS)
  assert sum(shapes_eval.two_objects(i) for i in range(32)) == 8


def test_ground_truth_against_itself_has_ratio_one():
  items = shapes_eval.held_out_items(16, seed=0, resolution=32, num_frames=16)
  calls = []

  def truth(captions, seed):  # video i is item i's clip (the padding repeats the last)
    calls.append((len(captions), seed))
    return np.stack([items[min(seed + i, len(items) - 1)].ground_truth
                     for i in range(len(captions))])

  report, videos = shapes_eval.evaluate(truth, items, seed=0, batch=5)
  # One batch size throughout (the last padded), so a compiled sampler traces once.
  assert calls == [(5, 0), (5, 5), (5, 10), (5, 15)] and len(videos) == 16
  assert shapes_eval.seeds_used(16, 5) == 20 and shapes_eval.seeds_used(3, 8) == 3
  ratio = report["ratio"]
  for figures in (ratio["accuracy"], ratio["per_motion"], ratio["consistency"]):
    assert all(v == 1.0 for v in figures.values()), figures
  assert report["ground_truth"]["consistency"]["flicker"] == 0.0  # 0 / 0 counts as 1


def test_from_truth_hands_each_video_its_own_ground_truth():
  # 13 prompts in batches of 5 at seed 7: each call's starting noise level is passed on
  # and video i starts from item i's clip (the padded tail repeats the last), so a
  # sampler that returns its input scores exactly as the ground truth.
  items = shapes_eval.held_out_items(13, seed=7, resolution=32, num_frames=16)
  calls = []

  def identity(captions, seed, init_video, strength):
    calls.append((seed, strength, len(init_video)))
    return init_video

  edit = shapes_eval.from_truth(identity, items, seed=7, strength=0.25)
  report, videos = shapes_eval.evaluate(edit, items, seed=7, batch=5)
  assert calls == [(7, 0.25, 5), (12, 0.25, 5), (17, 0.25, 5)]
  assert np.array_equal(videos, np.stack([item.ground_truth for item in items]))
  ratio = report["ratio"]
  for figures in (ratio["accuracy"], ratio["per_motion"], ratio["consistency"]):
    assert all(v == 1.0 for v in figures.values()), figures


def test_one_and_two_object_prompts_are_scored_apart():
  items = shapes_eval.held_out_items(16, seed=0, resolution=32, num_frames=16)
  captions = [item.caption for item in items]
  two = [" and " in c for c in captions]
  truth = [item.ground_truth for item in items]
  # The two-object clips blanked: their objects match nothing, the single ones stay right.
  blanked = [np.zeros_like(v) if t else v for v, t in zip(truth, two)]
  ok, bad = shapes_eval.score(truth, captions), shapes_eval.score(blanked, captions)
  assert ok["by_count"]["two objects"]["n"] == bad["by_count"]["two objects"]["n"] == \
      2 * sum(two) > 0
  assert ok["by_count"]["one object"]["n"] == len(captions) - sum(two)
  assert ok["by_count"]["one object"]["n"] + ok["by_count"]["two objects"]["n"] == ok["objects"]
  assert bad["by_count"]["one object"] == ok["by_count"]["one object"]
  assert all(bad["by_count"]["two objects"][k] == 0.0 for k in ("motion", "colour", "shape"))
  assert ok["by_count"]["two objects"]["colour"] == 1.0
  assert ratio_rows(shapes_eval.ratios(bad, ok)["by_count"]["two objects"]) == [0.0] * 3
  # The consistency figures per count: the overall figure is their object-weighted mean.
  one, both = ok["by_count"]["one object"], ok["by_count"]["two objects"]
  for key in shapes_eval.FIGURES:
    assert min(one[key], both[key]) - 1e-9 <= ok["consistency"][key] <= \
        max(one[key], both[key]) + 1e-9, key
  assert ok["lost_midway"] == {"all": 0.0, "one object": 0.0, "two objects": 0.0}
  assert [len(r) for r in ok["rows"]] == [1 + t for t in two]
  assert "motion, two objects" in shapes_eval.table(
      {"model": bad, "ground_truth": ok, "ratio": shapes_eval.ratios(bad, ok)})


def ratio_rows(row: dict) -> list:
  return [row[k] for k in ("motion", "colour", "shape")]


def test_contrast_prompts_swap_each_motion_for_its_opposite():
  assert set(shapes_eval.OPPOSITE) == set(shapes.MOTIONS)
  assert all(shapes_eval.OPPOSITE[shapes_eval.OPPOSITE[m]] == m and
             shapes_eval.OPPOSITE[m] != m for m in shapes.MOTIONS)
  assert (shapes_eval.contrast_prompt("a red circle moving left and a blue square "
                                      "standing still")
          == "a red circle moving right and a blue square bouncing around")
  for item in shapes_eval.held_out_items(8, seed=0, resolution=32, num_frames=4):
    contrast = shapes_eval.contrast_prompt(item.caption)
    assert contrast != item.caption and shapes_eval.contrast_prompt(contrast) == item.caption


def test_ratio_is_model_over_truth_and_undefined_where_it_should_be():
  assert shapes_eval.ratio(0.5, 1.0) == 0.5 and shapes_eval.ratio(0.0, 0.0) == 1.0
  assert math.isnan(shapes_eval.ratio(1.0, 0.0))
  assert math.isnan(shapes_eval.ratio(math.nan, 1.0))




def test_eval_shapes_end_to_end(tmp_path, capsys, fresh_model):
  out = tmp_path / "eval.json"
  code = cli.main(["eval", "shapes", "--num", "3", "--batch", "2", "--steps", "2",
                   "--json", str(out), "--sheet", str(tmp_path / "s.png"),
                   "--xt-slice", str(tmp_path / "xt.png"),
                   "--videos", str(tmp_path / "clips.npz"), "--quiet"])
  assert code == 0, capsys.readouterr().err
  report = json.loads(out.read_text(), parse_constant=pytest.fail)  # standard JSON
  with np.load(tmp_path / "clips.npz") as clips:  # allow_pickle stays False
    assert clips["captions"].tolist() == report["captions"]
    assert clips["model"].dtype == np.uint8 and clips["model"].shape == (3, 4, 32, 32, 3)
    # The saved clips are the ones judged: scored again, they give the report's figures.
    assert shapes_eval.score(list(clips["model"]), report["captions"])["accuracy"] == \
        report["model"]["accuracy"]
    items = shapes_eval.held_out_items(3, seed=0, resolution=32, num_frames=4)
    assert np.array_equal(clips["ground_truth"], np.stack([i.ground_truth for i in items]))
  settings = report["settings"]
  assert settings["num"] == 3 and settings["steps"] == 2 and settings["batch"] == 2
  assert settings["model"] == weights.DEFAULT_MODEL and settings["frames"] == 4
  assert settings["held_out"][0] == "red triangle moving left"
  assert settings["judge"]["bounce_leg"] == tracker.BOUNCE_LEG
  assert len(report["captions"]) == 3 and report["ground_truth"]["accuracy"]["motion"] == 1.0
  assert (tmp_path / "s.png").is_file() and (tmp_path / "xt.png").is_file()
  assert "moving left" in capsys.readouterr().out


def test_eval_shapes_from_truth_at_a_low_level_returns_the_ground_truth(tmp_path, capsys,
                                                                       fresh_model):
  # From t = 0.01 (noise std 0.016) even an untrained model only redraws the last
  # hundredth of the noise: each clip comes back within a few levels of its own truth.
  out, clips = tmp_path / "e.json", tmp_path / "clips.npz"
  code = cli.main(["eval", "shapes", "--num", "3", "--batch", "2", "--from-truth", "0.01",
                   "--json", str(out), "--videos", str(clips), "--quiet"])
  assert code == 0, capsys.readouterr().err
  assert json.loads(out.read_text())["settings"]["from_truth"] == 0.01
  with np.load(clips) as saved:
    error = np.abs(saved["model"].astype(int) - saved["ground_truth"].astype(int))
  assert error.mean() < 2 and error.max() < 16, (error.mean(), error.max())


def test_eval_shapes_stylized_at_alpha_0_is_plain_generation(tmp_path, capsys, monkeypatch):
  from lumiere_jax.config import load_config
  from lumiere_jax.pipelines import generate
  config = load_config("shapes_tiny:t2v", ["data.num_frames=4", "diffusion.steps=2"])
  params = generate.fresh_params(config)
  style = jax.tree_util.tree_map(lambda w: w + 0.05, params)  # another backbone
  monkeypatch.setattr(weights, "load_model", lambda name=None, **kwargs: (
      (config, style) if name == "outlined" else (config, params)))

  def evaluate(*style_args):
    out = tmp_path / f"{len(list(tmp_path.iterdir()))}.json"
    assert cli.main(["eval", "shapes", "--num", "2", "--steps", "2", "--json", str(out),
                     "--quiet", *style_args]) == 0, capsys.readouterr().err
    return json.loads(out.read_text())

  plain, at_0, at_1 = (evaluate(), evaluate("--style", "outlined", "--alpha", "0"),
                       evaluate("--style", "outlined", "--alpha", "1"))
  assert at_0["settings"]["alpha"] == 0 and at_0["settings"]["style"] == "outlined"
  assert at_0["model"] == plain["model"]
  assert at_1["model"] != plain["model"]


@pytest.mark.parametrize("argv,match", [
    (["--num", "0"], "--num must be >= 1"),
    (["--json", "{tmp}/missing/e.json"], "does not exist"),
    (["--json", "{tmp}/e.txt"], "write it as .json"),
    (["--sheet", "{tmp}/s.gif"], "write it as .png or .jpg"),
    (["--step", "3"], "--step selects a step of --checkpoint"),
    (["--sheet", "{tmp}/missing/s.png"], "does not exist"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["--guidance", "-1"], "guidance scale must be >= 0"),
    (["--seed", str(2**31 - 2), "--num", "2"], "seed must be in"),
    (["--alpha", "0.5"], "--alpha goes with --style"),
    (["--style", "outlined"], "--alpha goes with --style"),
    (["--style", "outlined", "--alpha", "1.5"], "alpha must be in [0, 1]"),
    (["--from-truth", "0"], "--from-truth must be in (0, 1], got 0.0"),
    (["--from-truth", "0.5", "--pipeline", "keyframes-tsr"],
     "--from-truth applies to --pipeline stunet"),
])
def test_bad_input_is_one_line_exit_2_before_any_work(tmp_path, capsys, fresh_model, argv,
                                                      match):
  code = cli.main(["eval", "shapes", *[a.format(tmp=tmp_path) for a in argv]])
  err = capsys.readouterr().err
  assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
  assert fresh_model == [] and list(tmp_path.iterdir()) == []


def test_a_model_that_is_not_text_to_video_is_refused_before_generating(
    tmp_path, capsys, monkeypatch):
  from lumiere_jax.config import load_config
  config = load_config("shapes_tiny:t2i")
  monkeypatch.setattr(weights, "load_model", lambda **kwargs: (config, None))
  code = cli.main(["eval", "shapes", "--json", str(tmp_path / "e.json")])
  err = capsys.readouterr().err
  assert code == 2 and "needs a text-to-video model" in err, err
  assert list(tmp_path.iterdir()) == []
