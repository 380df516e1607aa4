"""`lumiere demo`: per video an mp4, a gif and an X-T slice through the object, and one
contact sheet; a bad --out is one line, exit 2, before any work."""

import numpy as np
import pytest

import test_train_support as support
from lumiere_jax import cli, weights
from lumiere_jax.pipelines import applications, demo, generate


@pytest.fixture()
def demo_model(fresh_model, monkeypatch):
  monkeypatch.setattr(demo, "DEMO_PROMPTS", demo.DEMO_PROMPTS[:2])
  monkeypatch.setattr(weights, "manifest", lambda: {weights.DEFAULT_MODEL: {}})
  return fresh_model


def test_demo_writes_every_file(tmp_path, capsys, demo_model):
  out = tmp_path / "demo"
  assert cli.main(["demo", "--out", str(out), "--quiet"]) == 0
  assert demo_model == [{"name": weights.DEFAULT_MODEL}]
  names = sorted(p.name for p in out.iterdir())
  stems = [generate.output_name(i, p) for i, p in enumerate(demo.DEMO_PROMPTS)]
  assert names == sorted([f"{s}{x}" for s in stems for x in (".gif", ".mp4", ".xt.png")]
                         + ["sheet.png", "apps", "apps_sheet.png"])
  # Without the conditional and style models, the text-to-video model's application:
  # the first video edited.
  edit = generate.output_name(0, f"edit: {demo.EDIT_PROMPT}")
  assert sorted(p.name for p in (out / "apps").iterdir()) == sorted(
      f"{edit}{x}" for x in (".gif", ".mp4", ".xt.png"))
  assert str(out.resolve()) in capsys.readouterr().out


def test_demo_adds_the_applications_when_the_conditional_model_ships(tmp_path, capsys,
                                                                     demo_model,
                                                                     monkeypatch):
  cond = support.micro_config("cond", "diffusion.steps=2")
  cond_params = generate.fresh_params(cond)
  t2v_load = weights.load_model
  monkeypatch.setattr(weights, "manifest", lambda: {
      weights.DEFAULT_MODEL: {}, applications.DEFAULT_CONDITIONAL_MODEL: {},
      applications.DEFAULT_STYLE_MODEL: {}})
  monkeypatch.setattr(weights, "load_model", lambda **kw: (
      (cond, cond_params) if kw.get("name") == applications.DEFAULT_CONDITIONAL_MODEL
      else t2v_load(**kw)))
  out = tmp_path / "demo"
  assert cli.main(["demo", "--out", str(out), "--quiet"]) == 0
  apps = sorted(p.name for p in (out / "apps").iterdir())
  labels = [f"{a}: {p}" for a, p, _ in demo.APP_EXAMPLES] + [
      f"edit: {demo.EDIT_PROMPT}", f"stylize: {demo.STYLE_PROMPT}"]
  stems = [generate.output_name(i, label) for i, label in enumerate(labels)]
  assert apps == sorted(f"{s}{x}" for s in stems for x in (".gif", ".mp4", ".xt.png"))
  assert (out / "apps_sheet.png").is_file() and (out / "sheet.png").is_file()
  printed = capsys.readouterr().out
  assert f"wrote {len(demo.DEMO_PROMPTS) + len(labels)} videos" in printed
  # The requests: animate and cinemagraph know all of frame 0, inpaint a frame with a
  # hole where the white square went, the cinemagraph less after frame 0.
  _, condition = demo.app_requests(32, support.DATA_FRAMES)
  known = condition.known[..., 0].astype(bool)
  assert known[0, 0].all() and not known[0, 1:].any()
  assert 0 < known[1].mean() < 1 and known[2, 0].all() and not known[2, 1].all()


def test_the_xt_slice_goes_through_the_object():
  video = np.zeros((4, 32, 32, 3), np.uint8)
  video[:, 20:24, 5:9] = 200
  assert demo.object_row(video) in range(20, 24)


def test_bad_out_is_one_line_exit_2_before_loading(tmp_path, capsys, fresh_model):
  (tmp_path / "file").write_text("x")
  code = cli.main(["demo", "--out", str(tmp_path / "file")])
  err = capsys.readouterr().err
  assert code == 2 and "not a directory" in err and len(err.strip().splitlines()) == 1
  assert fresh_model == []


def test_demo_adds_the_cascade_when_the_ssr_model_ships(tmp_path, capsys, demo_model,
                                                        monkeypatch):
  from test_upsample import ssr_config  # pylint: disable=g-import-not-at-top
  from lumiere_jax.pipelines import upsample  # pylint: disable=g-import-not-at-top
  ssr = ssr_config("data.resolution=64", "data.low_resolution=32")  # the demo's 32 -> 64
  ssr_params = generate.fresh_params(ssr)
  t2v_load = weights.load_model
  monkeypatch.setattr(weights, "manifest", lambda: {
      weights.DEFAULT_MODEL: {}, upsample.DEFAULT_SSR_MODEL: {}})
  monkeypatch.setattr(weights, "load_model", lambda **kw: (
      (ssr, ssr_params) if kw.get("name") == upsample.DEFAULT_SSR_MODEL else t2v_load(**kw)))
  out = tmp_path / "demo"
  assert cli.main(["demo", "--out", str(out), "--quiet"]) == 0
  stem = generate.output_name(0, f"{demo.DEMO_PROMPTS[0]} x2")
  assert sorted(p.name for p in (out / "cascade").iterdir()) == sorted(
      f"{stem}{x}" for x in (".gif", ".mp4", ".xt.png"))
  assert f"wrote {len(demo.DEMO_PROMPTS) + 2} videos" in capsys.readouterr().out
