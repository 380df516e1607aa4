"""The applications (pipelines/applications.py and the animate, inpaint, cinemagraph,
stylize and edit commands): the widened conditional model equals the base model at init,
known pixels survive exactly with replacement, the presets build the right (C, M), the
style interpolation is exact, and every command runs end to end.

Models are freshly initialised micro configs at 16x16 (tests/test_train_support.py):
these tests are about the machinery, not a trained model. (Bad input to the commands:
tests/test_bad_input.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import test_train_support as support
from lumiere_jax import cli
from lumiere_jax.data import masks
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.models import build, conditioning, widen
from lumiere_jax.parallel.mesh import make_mesh
from lumiere_jax.pipelines import applications, generate
from lumiere_jax.train import checkpoint
from lumiere_jax.train import state as state_lib
from lumiere_jax.train.optimizer import make_optimizer

R, T = 16, support.DATA_FRAMES
SMALL = ("data.resolution=16", "diffusion.steps=1")
PROMPT = "a red circle moving left"


def micro(stage: str, *overrides):
  return support.micro_config(stage, *SMALL, *overrides)


def perturbed(params, scale: float = 0.05, seed: int = 1):
  """Every leaf moved off its initial value (zero-initialised projections included), so
  that equalities cannot hold by accident of a zero weight."""
  rng = np.random.default_rng(seed)  # numpy: no compile per leaf shape
  return jax.tree_util.tree_map(
      lambda leaf: jnp.asarray(np.asarray(leaf) + scale * rng.standard_normal(leaf.shape),
                               leaf.dtype), params)


@pytest.fixture(scope="module")
def base():
  config = micro("t2v")
  return config, perturbed(generate.fresh_params(config))


@pytest.fixture(scope="module")
def cond_model():
  config = micro("cond")
  return config, perturbed(generate.fresh_params(config))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return support.build_dataset(tmp_path_factory.mktemp("data"))


def random_clip(seed: int, shape=(T, R, R, 3)) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------------------------------
# Widening


def test_widened_model_equals_the_base_model_for_any_conditioning(base):
  config, params = base
  wide = widen.widen_params(params, 7)
  kernel = np.asarray(widen.input_kernel(wide))
  assert kernel.shape[2] == 7 and not kernel[:, :, 3:].any()
  np.testing.assert_array_equal(kernel[:, :, :3], widen.input_kernel(params))
  base_model, cond_model = build.Model(config), build.Model(micro("cond"))
  x = jax.random.normal(jax.random.key(2), (2, T, R, R, 3))
  t = jnp.array([0.3, 0.8])
  text = base_model.encode_prompts(params, [PROMPT, "a blue square growing"])
  reference = jax.jit(base_model.denoise)(params, x, t, text)
  denoise = jax.jit(cond_model.denoise)
  outs = []
  for seed in range(3):
    clip = jax.random.uniform(jax.random.key(10 + seed), x.shape, minval=-1, maxval=1)
    known = jax.random.uniform(jax.random.key(20 + seed), x.shape[:-1] + (1,)) > 0.5
    outs.append(np.asarray(denoise(wide, x, t, text,
                                   conditioning.masked_channels(clip, known))))
  # The conditioning changes nothing, bit for bit (zero weights, the same program); the
  # 3- and 7-channel programs agree up to float32 summation order, which XLA:CPU picks
  # per CPU (exact on an AVX-512 EPYC, 1.1e-6 apart on an AVX2 one).
  for out in outs[1:]:
    np.testing.assert_array_equal(out, outs[0])
  np.testing.assert_allclose(outs[0], np.asarray(reference), atol=1e-5, rtol=0)


def test_cond_stage_loads_a_t2v_checkpoint_with_the_first_convolution_widened(tmp_path,
                                                                               data_dir):
  """train.init_checkpoint = a t2v workdir: every group as saved (trained ones from the
  EMA), the first convolution's 3 input channels as saved and 4 new zero ones."""
  t2v = support.micro_config("t2v", f"train.data_dir={data_dir}",
                             "train.trainable=('backbone','temporal')")
  saved = support.save_random_checkpoint(t2v, tmp_path / "t2v", 2, data_dir)
  config = support.micro_config("cond", f"train.data_dir={data_dir}")
  layout = state_lib.Layout(config, make_mesh(config.mesh), make_optimizer(config.train))
  loaded = checkpoint.load_params(tmp_path / "t2v", config, layout.params_target())
  assert sorted(loaded) == ["backbone", "temporal", "text"]
  kernel = np.asarray(widen.input_kernel(loaded))
  np.testing.assert_array_equal(kernel[:, :, :3], widen.input_kernel(saved.ema))
  assert kernel.shape[2] == 7 and not kernel[:, :, 3:].any()
  np.testing.assert_array_equal(loaded["backbone"]["conv_in"]["bias"],
                                saved.ema["backbone"]["conv_in"]["bias"])
  for a, b in zip(jax.tree_util.tree_leaves(loaded["temporal"]),
                  jax.tree_util.tree_leaves(saved.ema["temporal"])):
    np.testing.assert_array_equal(a, b)
  assert loaded["backbone"]["conv_in"]["kernel"].sharding == \
      layout.params_target()["backbone"]["conv_in"]["kernel"].sharding


# ---------------------------------------------------------------------------------------
# Training data of the cond stage


def test_cinemagraph_training_clips_are_still_outside_the_region():
  rng = np.random.default_rng(0)
  video = random_clip(0)
  mask = masks.cinemagraph_mask(rng, T, R, R)
  clip = masks.training_clip("cinemagraph", video, mask)
  still = mask[..., 0].astype(bool)
  np.testing.assert_array_equal(clip[still], np.broadcast_to(video[:1], video.shape)[still])
  np.testing.assert_array_equal(clip[~still], video[~still])  # the region keeps its motion
  assert masks.training_clip("inpaint", video, mask) is video


# ---------------------------------------------------------------------------------------
# Presets


def test_presets_build_c_and_m():
  image, last = random_clip(1, (R, R, 3)), random_clip(2, (R, R, 3))
  animate = applications.animate_condition(image, T, last)
  assert animate.known[0].all() and animate.known[-1].all() and not animate.known[1:-1].any()
  np.testing.assert_array_equal(animate.clip[0], image)
  np.testing.assert_array_equal(animate.clip[-1], last)

  video = random_clip(3)
  border = applications.outpaint_condition(video, 3, R)
  assert border.fill.sum() == T * (R * R - (R - 6) ** 2)
  np.testing.assert_array_equal(border.clip[:, 3:-3, 3:-3], video[:, 3:-3, 3:-3])
  framed = applications.outpaint_condition(video[:, :R - 6, :R - 6], 3, R)
  np.testing.assert_array_equal(framed.fill, border.fill)
  np.testing.assert_array_equal(framed.clip[:, 3:-3, 3:-3], video[:, :R - 6, :R - 6])

  moving = applications.region_fill((2, 4, 10, 7), R, R)
  assert moving.sum() == 8 * 3 and moving[4:7, 2:10].all()
  cinemagraph = applications.cinemagraph_condition(image, T, moving)
  assert cinemagraph.known[0].all()
  np.testing.assert_array_equal(cinemagraph.fill[1:], np.broadcast_to(moving, (T - 1, R, R)))
  np.testing.assert_array_equal(cinemagraph.clip[3][~moving], image[~moving])

  keyframes = applications.keyframes_condition(video, 2)
  assert keyframes.known[::2].all() and not keyframes.known[1::2].any()


def test_grow_dilates_the_region_to_fill_by_whole_pixels():
  fill = np.zeros((1, 9, 9), bool)
  fill[0, 4, 4] = True
  assert applications.grow(fill, 0).sum() == 1
  assert applications.grow(fill, 2)[0, 2:7, 2:7].all() and applications.grow(fill, 2).sum() == 25


# ---------------------------------------------------------------------------------------
# Known pixels


def test_replace_keeps_the_known_pixels_exactly(cond_model):
  """The inpainted clip equals the input outside the region, to the bit; with a
  dilation, outside the grown region. The region itself is the model's."""
  config, params = cond_model
  video = random_clip(4)
  fill = np.zeros((R, R), bool)
  fill[4:10, 5:12] = True
  condition = applications.inpaint_condition(video, fill)
  settings = SamplerSettings("ddim", steps=2, threshold="static")
  generator = applications.ConditionalGenerator(config, params, settings, "replace", 0)
  out = generator([PROMPT, "a blue square growing"], condition, seed=0, guidance_scale=2.0)
  assert out.shape == (2, T, R, R, 3) and out.dtype == np.uint8
  for clip in out:
    np.testing.assert_array_equal(clip[:, ~fill], video[:, ~fill])
    assert np.abs(clip[:, fill].astype(int) - video[:, fill]).mean() > 10
  generator.dilation = 2
  grown = applications.grow(fill[None], 2)[0]
  dilated = generator([PROMPT], condition, seed=0, guidance_scale=2.0)[0]
  np.testing.assert_array_equal(dilated[:, ~grown], video[:, ~grown])


# ---------------------------------------------------------------------------------------
# Stylized generation


def test_style_interpolation_is_exact(base):
  config, params = base
  style = perturbed(params, 0.5, seed=7)["backbone"]
  for alpha, expected in ((0.0, params["backbone"]), (1.0, style)):
    mixed = applications.interpolate_backbone(params, style, alpha)
    for a, b in zip(jax.tree_util.tree_leaves(mixed["backbone"]),
                    jax.tree_util.tree_leaves(expected)):
      np.testing.assert_array_equal(a, b)
  # In between: the formula in float32, to within the rounding of its two terms (XLA
  # may fuse the multiply-add).
  mixed = applications.interpolate_backbone(params, style, 0.3)
  a = np.float32(0.3)
  for w, s, o in zip(*(jax.tree_util.tree_leaves(t) for t in (mixed["backbone"], style,
                                                                 params["backbone"]))):
    first, second = a * np.asarray(s), (np.float32(1) - a) * np.asarray(o)
    rounding = np.finfo(np.float32).eps * (np.abs(first) + np.abs(second))
    assert np.all(np.abs(np.asarray(w) - (first + second)) <= rounding)
  assert mixed["temporal"] is params["temporal"] and mixed["text"] is params["text"]
  with pytest.raises(Exception, match=r"alpha must be in \[0, 1\]"):
    applications.interpolate_backbone(params, style, 1.5)


def test_style_model_must_fit_the_base_backbone(base):
  config, _ = base
  applications.check_style_config(config, micro("style"))
  with pytest.raises(Exception, match="model.block_out_channels"):
    applications.check_style_config(config, micro("style", "model.block_out_channels=(16,)"))


# ---------------------------------------------------------------------------------------
# The commands, end to end


def run_cli(capsys, *argv) -> str:
  code = cli.main([*argv, "--steps", "1", "--quiet"])
  captured = capsys.readouterr()
  assert code == 0, captured.err
  return captured.out.strip()


def cond_flags():
  return ("--config", "shapes_tiny:cond", *support.cli_overrides(*SMALL))


def save_png(path, array) -> str:
  Image.fromarray(array).save(path)
  return str(path)


def test_animate_keeps_the_image_as_frame_0(tmp_path, capsys):
  image = random_clip(5, (R, R, 3))
  out = tmp_path / "a.npy"
  printed = run_cli(capsys, "animate", "--image", save_png(tmp_path / "i.png", image),
                    "--last-image", save_png(tmp_path / "j.png", image[::-1]), "--prompt",
                    PROMPT, "--out", str(out), *cond_flags())
  assert printed == str(out)
  clip = np.load(out)
  assert clip.shape == (T, R, R, 3)
  np.testing.assert_array_equal(clip[0], image)
  np.testing.assert_array_equal(clip[-1], image[::-1])


def test_inpaint_with_a_png_mask_and_an_npy_mask_and_outpaint(tmp_path, capsys):
  video = random_clip(6)
  np.save(tmp_path / "v.npy", video)
  fill = np.zeros((R, R), np.uint8)
  fill[2:8, 3:9] = 255
  png = save_png(tmp_path / "m.png", fill)
  run_cli(capsys, "inpaint", "--video", str(tmp_path / "v.npy"), "--mask", png, "--prompt",
          PROMPT, "--out", str(tmp_path / "a.npy"), *cond_flags())
  keep = fill == 0
  np.testing.assert_array_equal(np.load(tmp_path / "a.npy")[:, keep], video[:, keep])
  per_frame = np.zeros((T, R, R), bool)
  per_frame[1:, 10:14, 10:14] = True
  np.save(tmp_path / "m.npy", per_frame)
  run_cli(capsys, "inpaint", "--video", str(tmp_path / "v.npy"), "--mask",
          str(tmp_path / "m.npy"), "--prompt", PROMPT, "--out", str(tmp_path / "b.npy"),
          "--known-pixels", "model", *cond_flags())
  assert np.load(tmp_path / "b.npy").shape == video.shape
  run_cli(capsys, "inpaint", "--video", str(tmp_path / "v.npy"), "--outpaint", "3",
          "--prompt", PROMPT, "--out", str(tmp_path / "c.npy"), *cond_flags())
  np.testing.assert_array_equal(np.load(tmp_path / "c.npy")[:, 3:-3, 3:-3],
                                video[:, 3:-3, 3:-3])


def test_cinemagraph_moves_only_the_region(tmp_path, capsys):
  image = random_clip(7, (R, R, 3))
  out = tmp_path / "c.npy"
  run_cli(capsys, "cinemagraph", "--image", save_png(tmp_path / "i.png", image),
          "--region", "4,2,12,9", "--prompt", PROMPT, "--out", str(out), *cond_flags())
  clip = np.load(out)
  still = ~applications.region_fill((4, 2, 12, 9), R, R)
  np.testing.assert_array_equal(clip[:, still], np.broadcast_to(image[still], clip[:, still].shape))


def test_stylize_and_edit(tmp_path, capsys, data_dir):
  # A random style backbone (the dataset is 32x32; the backbone's shapes do not depend
  # on the resolution, so it serves the 16x16 base model).
  support.save_random_checkpoint(support.micro_config("style", f"train.data_dir={data_dir}"),
                                 tmp_path / "style", 1, data_dir)
  t2v = ("--config", "shapes_tiny:t2v", *support.cli_overrides(*SMALL))
  run_cli(capsys, "stylize", "--style-checkpoint", str(tmp_path / "style"), "--alpha", "0.5",
          "--prompt", PROMPT, "--out", str(tmp_path / "s.npy"), *t2v)
  assert np.load(tmp_path / "s.npy").shape == (T, R, R, 3)
  video = random_clip(8)
  np.save(tmp_path / "v.npy", video)
  run_cli(capsys, "edit", "--video", str(tmp_path / "v.npy"), "--strength", "0.3",
          "--prompt", PROMPT, "--out", str(tmp_path / "e.npy"), *t2v)
  assert np.load(tmp_path / "e.npy").shape == video.shape
