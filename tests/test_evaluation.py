"""The shapes evaluator: the tracker judges rendered ground truth right and its reversal
wrong, an empty video matches nothing, and `lumiere eval shapes` runs end to end."""

import json

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


def test_a_caption_outside_the_grammar_matches_nothing(clips):
  (r,) = tracker.judge_video(clips[0].video, "a purple dog moving left")
  assert not (r["colour"] or r["shape"] or r["motion"])


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


def test_ground_truth_against_itself_has_ratio_one():
  items = shapes_eval.held_out_items(16, seed=0, resolution=32, num_frames=16)
  truth = lambda captions, seed: np.stack([items[seed + i].ground_truth
                                           for i in range(len(captions))])
  report, _ = shapes_eval.evaluate(truth, items, seed=0, batch=5)
  assert all(v == 1.0 for v in report["ratio"]["accuracy"].values())
  assert report["model"] == report["ground_truth"]




def test_eval_shapes_end_to_end(tmp_path, capsys, fresh_model):
  out = tmp_path / "eval.json"
  code = cli.main(["eval", "shapes", "--num", "3", "--batch", "2", "--steps", "2",
                   "--json", str(out), "--sheet", str(tmp_path / "s.png"),
                   "--xt-slice", str(tmp_path / "xt.png"), "--quiet"])
  assert code == 0, capsys.readouterr().err
  report = json.loads(out.read_text())
  assert report["settings"]["num"] == 3 and report["settings"]["steps"] == 2
  assert report["settings"]["model"] == weights.DEFAULT_MODEL
  assert len(report["captions"]) == 3 and report["ground_truth"]["accuracy"]["motion"] == 1.0
  assert (tmp_path / "s.png").is_file() and (tmp_path / "xt.png").is_file()
  assert "moving left" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["--num", "0"], "--num must be >= 1"),
    (["--json", "{tmp}/missing/e.json"], "does not exist"),
    (["--json", "{tmp}/e.txt"], "write it as .json"),
    (["--sheet", "{tmp}/s.gif"], "write it as .png or .jpg"),
    (["--step", "3"], "--step selects a step of --checkpoint"),
])
def test_bad_input_is_one_line_exit_2_before_any_work(tmp_path, capsys, fresh_model, argv,
                                                      match):
  code = cli.main(["eval", "shapes", *[a.format(tmp=tmp_path) for a in argv]])
  err = capsys.readouterr().err
  assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
  assert fresh_model == [] and list(tmp_path.iterdir()) == []
