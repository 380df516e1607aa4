"""`lumiere eval apps`: the requests it builds from ground-truth clips, its figures'
closed forms, and, end to end on a fresh conditional model with known pixels replaced,
the identities the applications promise (frame 0 is the image, known pixels unchanged,
a cinemagraph still outside its region)."""

import json

import numpy as np
import pytest

import test_train_support as support
from lumiere_jax import cli, weights
from lumiere_jax.evaluation import apps_eval, shapes_eval
from lumiere_jax.pipelines import applications, generate


@pytest.fixture(scope="module")
def items():
  return shapes_eval.held_out_items(8, seed=0, resolution=32, num_frames=16)


def test_inpaint_request_fills_every_object_pixel_and_keeps_background(items):
  for item in items:
    condition = apps_eval.request("inpaint", item.ground_truth)
    objects = apps_eval.object_pixels(item.ground_truth)
    assert condition.fill[objects].all() and not condition.clip[condition.fill].any()
    assert condition.known.any()  # something is left to keep


def test_figures_of_ground_truth_are_their_closed_forms(items):
  truth = np.stack([item.ground_truth for item in items])
  inpaint = [apps_eval.request("inpaint", clip) for clip in truth]
  result = apps_eval.figures("inpaint", truth, inpaint, truth)
  assert result == {"known_max_change": 0.0, "known_mean_change": 0.0, "seam_error": 0.0}
  shifted = truth.astype(np.int16) + 10  # every pixel off by 10
  result = apps_eval.figures("inpaint", np.clip(shifted, 0, 255), inpaint, truth)
  assert result["known_max_change"] == 10.0 and result["seam_error"] == 10.0
  stills = np.repeat(truth[:, :1], 16, axis=1)
  cinemagraph = [apps_eval.request("cinemagraph", clip) for clip in truth]
  result = apps_eval.figures("cinemagraph", stills, cinemagraph, truth)
  assert result["outside_max_change"] == 0.0 and result["inside_mean_change"] == 0.0
  animate = [apps_eval.request("animate", clip) for clip in truth]
  result = apps_eval.figures("animate", truth, animate, truth)
  assert result == {"frame0_mean_error": 0.0, "frame0_max_error": 0.0,
                    "mean_colour_error": 0.0}


def test_cinemagraph_region_holds_the_first_frames_objects(items):
  for item in items:
    condition = apps_eval.request("cinemagraph", item.ground_truth)
    first = apps_eval.object_pixels(item.ground_truth[:1])[0]
    assert condition.fill[1:, first].all() and not condition.fill[0].any()


def test_eval_apps_end_to_end_keeps_what_is_known(tmp_path, capsys, monkeypatch):
  config = support.micro_config("cond")  # 4 frames at 32x32
  params = generate.fresh_params(config)
  monkeypatch.setattr(weights, "load_model", lambda **kwargs: (config, params))
  out = tmp_path / "apps.json"
  code = cli.main(["eval", "apps", "--num", "2", "--steps", "1", "--known-pixels",
                   "replace", "--json", str(out), "--sheet", str(tmp_path / "s.png"),
                   "--quiet"])
  assert code == 0, capsys.readouterr().err
  report = json.loads(out.read_text())
  assert report["settings"]["known_pixels"] == "replace" and report["settings"]["num"] == 2
  assert report["animate"]["frame0_max_error"] == 0.0
  assert report["inpaint"]["known_max_change"] == 0.0
  assert report["cinemagraph"]["outside_max_change"] == 0.0
  assert (tmp_path / "s.png").is_file()
  assert applications.DEFAULT_CONDITIONAL_MODEL == report["settings"]["model"]


@pytest.mark.parametrize("argv,match", [
    (["--apps", "animate,zoom"], "choose from animate, inpaint, cinemagraph"),
    (["--num", "0"], "--num must be >= 1"),
    (["--dilate", "-1"], "--dilate must be >= 0"),
    (["--json", "{tmp}/none/a.json"], "does not exist"),
    (["--step", "2"], "--step selects a step of --checkpoint"),
])
def test_eval_apps_bad_input(tmp_path, capsys, argv, match):
  code = cli.main(["eval", "apps", *[a.format(tmp=tmp_path) for a in argv]])
  err = capsys.readouterr().err
  assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
  assert list(tmp_path.iterdir()) == []
