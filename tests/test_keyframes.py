"""The keyframes + TSR baseline (issue 16): keyframe positions, the quarter-rate mask and
the strided frame window agree on frames 0, 5, 10, 15 of 16; the cascade's clips hold
the keyframe model's frames exactly there; the keyframe-segment frame steps have their
closed form; `lumiere eval shapes --pipeline keyframes-tsr` runs end to end.

Models are freshly initialised micro configs (tests/test_train_support.py).
"""

import json

import numpy as np
import pytest

import test_train_support as support
from lumiere_jax import cli, weights
from lumiere_jax.config import load_config
from lumiere_jax.data import masks, pipeline
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import shapes_eval
from lumiere_jax.pipelines import applications, generate, keyframes

R = 16
SMALL = ("data.resolution=16", "diffusion.steps=1")


def test_keyframe_positions_spread_from_the_first_frame_to_the_last():
  np.testing.assert_array_equal(masks.keyframe_positions(16, 4), [0, 5, 10, 15])
  np.testing.assert_array_equal(masks.keyframe_positions(8, 2), [0, 7])
  np.testing.assert_array_equal(masks.keyframe_positions(4, 4), [0, 1, 2, 3])
  np.testing.assert_array_equal(masks.keyframe_positions(16, 1), [0])
  for bad in (0, 17):
    with pytest.raises(ValueError):
      masks.keyframe_positions(16, bad)


def test_quarter_rate_mask_knows_exactly_the_keyframes():
  mask = masks.quarter_rate_mask(np.random.default_rng(0), 16, 8, 8)
  known = np.flatnonzero(mask.reshape(16, -1).all(axis=1))
  np.testing.assert_array_equal(known, [0, 5, 10, 15])
  assert mask.sum() == 4 * 8 * 8  # the other frames hold no known pixel
  assert masks.DEFAULT_MASK_WEIGHTS["quarter_rate"] > 0


def test_frame_stride_takes_every_kth_frame_of_a_random_window():
  video = np.arange(20)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  rng = np.random.default_rng(0)
  starts = set()
  for _ in range(50):
    frames = pipeline._frame_window(video, 4, rng, stride=5)[:, 0, 0, 0]
    np.testing.assert_array_equal(np.diff(frames), [5, 5, 5])
    starts.add(int(frames[0]))
  assert starts == set(range(5))  # windows of 16 frames start anywhere in 0..4
  clip = pipeline._frame_window(video[:16], 4, rng, stride=5)[:, 0, 0, 0]
  np.testing.assert_array_equal(clip, masks.keyframe_positions(16, 4))


def test_the_keyframes_config_trains_on_the_tsr_models_keyframes():
  config = load_config("shapes_tiny:keyframes")
  span = pipeline.window_length(config.data.num_frames, config.data.frame_stride)
  t2v = load_config("shapes_tiny:t2v")
  assert span == t2v.data.num_frames and not any(config.model.temporal.down_levels)
  with pytest.raises(UserError, match="data.frame_stride=0 is invalid"):
    load_config("shapes_tiny:keyframes", ["data.frame_stride=0"])


def test_segment_steps_closed_form():
  # Frame values with steps d_i: 6 on the pairs touching a keyframe (0, 5, 10, 15), 2
  # on the others; the mean steps are those, whatever the frame size.
  touches = [i in (0, 4, 5, 9, 10, 14) for i in range(15)]
  steps = np.where(touches, 6.0, 2.0)
  values = np.concatenate([[0.0], np.cumsum(steps)])
  video = values[None, :, None, None, None] * np.ones((2, 16, 3, 3, 3))
  result = shapes_eval.segment_steps(video)
  assert result == {"across": 6.0, "inside": 2.0, "across_over_inside": 3.0}
  smooth = np.arange(16.0)[None, :, None, None, None] * np.ones((1, 16, 2, 2, 3))
  assert shapes_eval.segment_steps(smooth)["across_over_inside"] == 1.0


def test_keyframe_condition_holds_the_keyframes_at_their_positions():
  keys = np.random.default_rng(0).integers(1, 256, (2, 4, R, R, 3), dtype=np.uint8)
  condition = keyframes.keyframe_condition(keys, 16)
  positions = [0, 5, 10, 15]
  np.testing.assert_array_equal(condition.clip[:, positions], keys)
  others = [i for i in range(16) if i not in positions]
  assert not condition.clip[:, others].any()
  np.testing.assert_array_equal(np.flatnonzero(condition.known[:, 0, 0, 0]), positions)


@pytest.fixture(scope="module")
def cascade():
  """A 2-frame keyframe model (frames 0 and 3 of 4) and a 4-frame TSR model."""
  key_config = support.micro_config("keyframes", *SMALL, "data.num_frames=2",
                                    "data.frame_stride=3")
  tsr_config = support.micro_config("cond", *SMALL)
  settings = SamplerSettings(method="ddim", steps=2)
  key_model = generate.TextToVideo(key_config, generate.fresh_params(key_config), settings)
  tsr = applications.ConditionalGenerator(tsr_config, generate.fresh_params(tsr_config),
                                          settings)
  return key_model, tsr


def test_the_cascade_keeps_the_keyframe_models_frames_exactly(cascade):
  key_model, tsr = cascade
  model = keyframes.KeyframesTSR(key_model, tsr)
  prompts = ["a red circle moving left", "a blue square growing"]
  videos = model(prompts, seed=3, guidance_scale=2.0)
  keys = key_model(prompts, 3, 2.0)
  assert videos.shape == (2, support.DATA_FRAMES, R, R, 3)
  np.testing.assert_array_equal(videos[:, [0, 3]], keys)
  # The in-between frames are the TSR model's, not copies of the keyframes.
  assert not np.array_equal(videos[:, 1], videos[:, 0])


def test_models_that_do_not_fit_are_refused():
  tsr_config = support.micro_config("cond", *SMALL)
  wider = support.micro_config("keyframes", "data.resolution=32", "data.num_frames=2")
  with pytest.raises(UserError, match="the keyframe model makes 32x32 frames, the TSR "
                     "model 16x16"):
    keyframes.check_models(wider, tsr_config)
  as_long = support.micro_config("keyframes", *SMALL)  # 4 frames, as many as the TSR's
  with pytest.raises(UserError, match="needs 2 to 3"):
    keyframes.check_models(as_long, tsr_config)
  with pytest.raises(UserError, match="needs a conditional"):
    keyframes.check_models(as_long, support.micro_config("t2v", *SMALL))


def test_eval_shapes_compares_the_cascade_on_the_same_prompts(tmp_path, capsys,
                                                              monkeypatch):
  key_config = support.micro_config("keyframes", "data.num_frames=2", "data.frame_stride=3")
  tsr_config = support.micro_config("cond")
  models = {None: (key_config, generate.fresh_params(key_config)),
            "tsr": (tsr_config, generate.fresh_params(tsr_config))}
  calls = []

  def load_model(checkpoint=None, name=None, step=None):
    calls.append((checkpoint, name))
    return models["tsr" if name == "tsr" else None]

  monkeypatch.setattr(weights, "load_model", load_model)
  out = tmp_path / "cascade.json"
  code = cli.main(["eval", "shapes", "--pipeline", "keyframes-tsr", "--tsr-model", "tsr",
                   "--num", "2", "--steps", "1", "--json", str(out), "--quiet"])
  assert code == 0, capsys.readouterr().err
  assert calls == [(None, None), (None, "tsr")]
  report = json.loads(out.read_text())
  settings = report["settings"]
  assert settings["pipeline"] == "keyframes-tsr" and settings["tsr_model"] == "tsr"
  assert settings["keyframes"] == [0, 3] and settings["frames"] == 4
  segments = report["ground_truth"]["segments"]
  assert segments["across"] > 0 and segments["inside"] > 0
  assert "frame step across" in capsys.readouterr().out


def _report(path, pipeline, motion, seed=0, fvd=None):
  """A minimal eval shapes report of 8 ground-truth prompts, judged by the real scorer."""
  items = shapes_eval.held_out_items(8, seed=seed, resolution=32, num_frames=16)
  captions = [item.caption for item in items]
  truth = shapes_eval.score([item.ground_truth for item in items], captions)
  model = json.loads(json.dumps(truth))
  model["accuracy"]["motion"] = motion
  report = {"model": model, "ground_truth": truth, "ratio": {}, "captions": captions}
  if fvd is not None:
    report["fvd"] = fvd
  settings = {"num": 8, "seed": seed, "resolution": 32, "frames": 16, "pipeline": pipeline,
              "model": "m", "held_out": [" ".join(t) for t in shapes_eval.HELD_OUT]}
  shapes_eval.write_json(path, report, settings)
  return str(path)


def _fvd(value, frames=16):
  return {"value": value, "extractor": "shapes", "weights": "abc", "preprocess": "p",
          "feature_dim": 64, "frames": frames, "resolution": [32, 32], "num_real": 96,
          "num_fake": 96, "reference": "r", "label": "x"}


def test_compare_puts_reports_side_by_side_and_refuses_different_prompts(tmp_path, capsys):
  a = _report(tmp_path / "a.json", "stunet", 0.75, fvd=_fvd(10.0))
  b = _report(tmp_path / "b.json", "keyframes-tsr", 0.5, fvd=_fvd(20.0))
  md = tmp_path / "table.md"
  assert cli.main(["eval", "compare", a, b, "--markdown", str(md)]) == 0
  table = md.read_text()
  assert "| stunet (m) | keyframes-tsr (m + None) | ground truth |" in table
  assert "| motion accuracy | 0.75 | 0.5 | 1 |" in table
  assert "| FVD (shapes features) | 10 | 20 | 0 |" in table
  capsys.readouterr()
  for other, match in (
      (_report(tmp_path / "c.json", "stunet", 0.5, seed=1), "seed is 0 vs 1"),
      (_report(tmp_path / "d.json", "stunet", 0.5, fvd=_fvd(5.0, frames=8)),
       "frames differs (16 vs 8)"),
      (_report(tmp_path / "e.json", "stunet", 0.5), "has no Fréchet distance")):
    assert cli.main(["eval", "compare", a, other]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err, err
