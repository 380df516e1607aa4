"""`lumiere eval ssr`: PSNR and the edge figures in closed form, the baselines, and the
command end to end on a freshly initialised micro SSR model (the machinery, not a
trained model), with its answers to bad input."""

import json

import numpy as np
import pytest
from PIL import Image

import test_train_support as support
from test_upsample import ssr_config
from lumiere_jax import cli
from lumiere_jax.commands import upsample
from lumiere_jax.data import pipeline, shapes
from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import ssr_eval
from lumiere_jax.pipelines import generate


def rendered(seed=0, resolution=32, frames=4):
  return shapes.render_clip(seed, resolution, frames, two_object_fraction=0.0).video


def test_psnr_is_the_closed_form():
  a = np.full((2, 8, 8, 3), 100, np.uint8)
  assert ssr_eval.psnr(a, a) == float("inf")
  assert ssr_eval.psnr(a, a + 5) == pytest.approx(10 * np.log10(255 ** 2 / 25))
  b = a.copy()
  b[0, 0, 0, 0] = 0  # one pixel of 384 off by 100
  assert ssr_eval.psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 * 384 / 100 ** 2))


def test_the_truth_is_its_own_sharpness_and_bicubic_blurs_it():
  truth = rendered()
  assert ssr_eval.edge_figures(truth, truth) == (1.0, 0.0)
  low = pipeline.area_downsample(truth, 8)
  sharpness, error = ssr_eval.edge_figures(ssr_eval.resize(low, 32, Image.BICUBIC), truth)
  assert sharpness < 0.8 and error > 0
  flat = np.full_like(truth, 7)
  assert all(np.isnan(ssr_eval.edge_figures(truth, flat)))  # no edges to judge


def test_gradients_of_a_ramp_are_its_slope():
  ramp = np.broadcast_to(np.arange(8, dtype=np.uint8)[None, :, None] * 10, (8, 8, 3))
  np.testing.assert_allclose(ssr_eval.gradients(ramp), 10.0)


def test_a_constant_clip_resizes_to_itself():
  clip = np.full((2, 4, 4, 3), 77, np.uint8)
  for method in ssr_eval.BASELINES.values():
    np.testing.assert_array_equal(ssr_eval.resize(clip, 16, method),
                                  np.full((2, 16, 16, 3), 77, np.uint8))


@pytest.fixture()
def micro_ssr(monkeypatch):
  """load_ssr gives a fresh micro SSR model (4 -> 16 pixels); the held-out clips are
  rendered shapes clips area-downsampled to 16 pixels."""
  config = ssr_config()
  params = generate.fresh_params(config)
  truth = np.stack([pipeline.area_downsample(rendered(i), 16) for i in range(2)])
  monkeypatch.setattr(upsample, "load_ssr", lambda *a, **k: (config, lambda: params))
  monkeypatch.setattr(ssr_eval, "held_out_clips", lambda config, data, num: truth[:num])
  return truth


def test_eval_ssr_end_to_end(tmp_path, capsys, micro_ssr):
  out = tmp_path / "ssr.json"
  code = cli.main(["eval", "ssr", "--data", str(tmp_path), "--num", "2", "--json", str(out),
                   "--sheet", str(tmp_path / "s.png"), "--quiet", "--weighting", "ramp",
                   "--rotate-windows"])
  assert code == 0, capsys.readouterr().err
  record = json.loads(out.read_text())
  assert set(record["report"]) == {"ssr", "bicubic", "bilinear"}
  assert record["settings"]["low_resolution"] == 4 and record["settings"]["num"] == 2
  assert record["settings"]["weighting"] == "ramp" and record["settings"]["rotate_windows"]
  low = pipeline.area_downsample(micro_ssr, 4)
  bicubic = [ssr_eval.psnr(ssr_eval.resize(c, 16, Image.BICUBIC), t)
             for c, t in zip(low, micro_ssr)]
  assert record["report"]["bicubic"]["psnr"] == pytest.approx(np.mean(bicubic))
  assert (tmp_path / "s.png").is_file()


@pytest.mark.parametrize("argv,match", [
    (["--num", "0"], "--num must be >= 1"),
    (["--json", "{tmp}/r.txt"], "write it as .json"),
    (["--sheet", "{tmp}/none/s.png"], "does not exist"),
    (["--step", "3"], "--step selects a step of --checkpoint"),
])
def test_bad_input_is_one_line_exit_2_before_any_work(tmp_path, capsys, argv, match):
  code = cli.main(["eval", "ssr", "--data", str(tmp_path),
                   *[a.format(tmp=tmp_path) for a in argv]])
  err = capsys.readouterr().err
  assert code == 2 and len(err.strip().splitlines()) == 1 and match in err, err
  assert list(tmp_path.iterdir()) == []


def test_a_dataset_at_another_resolution_is_refused(tmp_path):
  config = ssr_config().unlock()  # makes 16x16; the micro dataset is 32x32
  config.data.eval_split = "train"
  data = support.build_dataset(tmp_path / "d")
  with pytest.raises(UserError, match="the SSR model makes 16x16"):
    ssr_eval.held_out_clips(config, data, 1)
  with pytest.raises(UserError, match="split has 32 clips, --num asks for 33"):
    ssr_eval.held_out_clips(config, data, 33)
