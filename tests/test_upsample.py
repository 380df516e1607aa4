"""Spatial super-resolution: noise conditioning augmentation (model input, training,
sampling), the Upsampler over windows, `lumiere upsample` and the cascade and long clips
of `lumiere generate`, with their answers to bad input: one line, exit 2, nothing written.

Models are freshly initialised micro configs (tests/test_train_support.py): these tests
are about the machinery, not a trained model. pytest runs on 8 forced CPU devices
(tests/conftest.py), so the pipelines shard their windows over 8 devices here.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import test_train_support as support
from lumiere_jax import cli, weights
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.config import load_config
from lumiere_jax.diffusion import samplers
from lumiere_jax.diffusion import windows as windows_lib
from lumiere_jax.diffusion.schedules import cosine_schedule
from lumiere_jax.models import build, conditioning
from lumiere_jax.pipelines import generate, upsample, windowed
from lumiere_jax.train import loss as loss_lib

# x4 from 4x4 to 16x16, two levels with one temporal halving (windows: multiples of 2).
SSR = ("data.resolution=16", "data.low_resolution=4", "model.block_out_channels=(8, 8)",
       "model.cross_attention_levels=(False, False)", "model.temporal.down_levels=(True,)",
       "diffusion.steps=2")


def ssr_config(*overrides):
  return support.micro_config("ssr", *SSR, *overrides)


@pytest.fixture(scope="module")
def ssr_model():
  config = ssr_config()
  return config, generate.fresh_params(config)


def low_res_clip(frames, size=4, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), np.uint8)


# -- noise conditioning augmentation -------------------------------------------------------

def test_noise_augmentation_is_the_forward_process_at_the_level():
  schedule = cosine_schedule()
  clip = jax.random.uniform(jax.random.key(0), (3, 2, 4, 4, 3), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(1), clip.shape)
  levels = jnp.array([0.0, 0.15, 1.0])
  out = np.asarray(conditioning.noise_augment(clip, levels, noise, schedule))
  np.testing.assert_allclose(out[0], clip[0], atol=3e-3)  # level 0: clean (sigma 6e-4)
  np.testing.assert_allclose(out[2], noise[2], atol=3e-3)  # level 1: pure noise
  alpha, sigma = schedule.alpha_sigma(0.15)
  np.testing.assert_allclose(out[1], alpha * clip[1] + sigma * noise[1], rtol=1e-5, atol=1e-6)
  assert 0.2 < float(sigma) < 0.3  # the sampling default noises the clip lightly


def test_training_draws_a_noise_level_per_example():
  schedule = cosine_schedule()
  extra = jnp.zeros((6, 2, 8, 8, 3))
  noised, levels = loss_lib.augment_conditioning(extra, jax.random.key(3), schedule, 0.5)
  levels = np.asarray(levels)
  assert levels.shape == (6,) and len(set(levels.tolist())) == 6
  assert levels.min() >= 0.0 and levels.max() <= 0.5
  # each example carries noise of its own level's sigma
  spread = np.asarray(noised).reshape(6, -1).std(axis=1)
  np.testing.assert_allclose(spread, np.asarray(schedule.alpha_sigma(levels)[1]), rtol=0.12)


def test_the_noise_level_is_an_input_of_the_ssr_model_only(ssr_model):
  config, params = ssr_model
  assert "noise_level_embedding" in params["backbone"]
  t2v = nn_abstract(support.micro_config("t2v"))
  assert "noise_level_embedding" not in t2v["backbone"]
  model = build.Model(config)
  x = jax.random.normal(jax.random.key(0), (1, 4, 16, 16, 3))
  extra = jax.random.normal(jax.random.key(1), x.shape)
  cond = model.encode_prompts(params, [""])

  @jax.jit
  def model_fn(p, level):
    return model.denoise(p, x, jnp.array([0.5]), {**cond, "noise_level": level}, extra)

  denoise = lambda p, level: np.asarray(model_fn(p, jnp.array([level])))
  # zero-initialised output layer: at init the level changes nothing ...
  np.testing.assert_array_equal(denoise(params, 0.0), denoise(params, 0.8))
  # ... and once that layer has weights, the output follows the level
  trained = flax.core.copy(params, {})
  embedding = dict(trained["backbone"]["noise_level_embedding"])
  kernel = embedding["linear_2"]["kernel"]
  embedding["linear_2"] = {**embedding["linear_2"],
                           "kernel": jax.random.normal(jax.random.key(2), kernel.shape)}
  trained = {**trained, "backbone": {**trained["backbone"], "noise_level_embedding": embedding}}
  assert np.abs(denoise(trained, 0.0) - denoise(trained, 0.8)).max() > 1e-3


def nn_abstract(config):
  return flax.linen.meta.unbox(build.abstract_params(config))


def test_the_ssr_loss_noises_its_conditioning(ssr_model):
  _, params = ssr_model
  rng = np.random.default_rng(0)
  batch = {"video": rng.integers(0, 256, (2, 4, 16, 16, 3), np.uint8),
           "low_res_video": rng.integers(0, 256, (2, 4, 4, 4, 3), np.uint8),
           "tokens": np.zeros((2, 8), np.int32)}
  losses = [float(jax.jit(loss_lib.make_loss_fn(ssr_config(f"diffusion.noise_aug_max={m}")))(
      params, batch, jax.random.key(0))[0]) for m in (0.0, 1.0)]
  assert np.isfinite(losses).all() and losses[0] != losses[1]


def test_the_residual_form_diffuses_the_clip_minus_its_clean_upsampling(ssr_model,
                                                                        monkeypatch):
  """diffusion.ssr_residual_scale = s: the loss's clean signal is s (clip - upsampling of
  the clean low-resolution clip, not of the noise-augmented one), the upsampling bilinear
  or bicubic as diffusion.ssr_residual_base says."""
  _, params = ssr_model
  rng = np.random.default_rng(1)
  batch = {"video": rng.integers(0, 256, (2, 4, 16, 16, 3), np.uint8),
           "low_res_video": rng.integers(0, 256, (2, 4, 4, 4, 3), np.uint8),
           "tokens": np.zeros((2, 8), np.int32)}
  seen = {}
  real_loss = loss_lib.diffusion_loss

  def spy(denoise, params, x0, *args, **kwargs):
    seen.setdefault("x0", []).append(x0)
    return real_loss(denoise, params, x0, *args, **kwargs)

  monkeypatch.setattr(loss_lib, "diffusion_loss", spy)
  for scale, base in ((0.0, "bilinear"), (4.0, "bilinear"), (4.0, "bicubic")):
    config = ssr_config(f"diffusion.ssr_residual_scale={scale}", "diffusion.threshold='none'",
                        f"diffusion.ssr_residual_base='{base}'")
    loss_lib.make_loss_fn(config)(params, batch, jax.random.key(0))
  clip = batch["video"].astype(np.float32) / 127.5 - 1
  low = jnp.asarray(batch["low_res_video"].astype(np.float32) / 127.5 - 1)
  bilinear = np.asarray(jax.image.resize(low, clip.shape, "bilinear"))
  # PIL's bicubic (Keys, a = -0.5; uint8, so clipped) of one frame, inside the border
  frame = batch["low_res_video"][0, 0]
  pil = np.asarray(Image.fromarray(frame).resize((16, 16), Image.BICUBIC), np.float32)
  bicubic = np.clip(((clip - seen["x0"][2] / 4.0)[0, 0] + 1) * 127.5, 0, 255)
  np.testing.assert_allclose(bicubic[4:12, 4:12], pil[4:12, 4:12], atol=1.0)
  np.testing.assert_allclose(seen["x0"][0], clip, atol=1e-6)
  np.testing.assert_allclose(seen["x0"][1], 4.0 * (clip - bilinear), atol=1e-5)
  assert np.abs(seen["x0"][2] - seen["x0"][1]).max() > 0.1  # another base


# -- the Upsampler -----------------------------------------------------------------------

@pytest.mark.parametrize("residual_scale,base", [(0.0, "bilinear"), (4.0, "bilinear"),
                                                 (4.0, "bicubic")])
def test_one_window_upsampling_equals_plain_sampling(ssr_model, residual_scale, base):
  """A window of at least the clip: one window of 8 (padded to 8 windows, sharded over 8
  devices) gives exactly what sampling the model on the whole clip gives; in the residual
  form, that sample / s plus the clean upsampling."""
  _, params = ssr_model
  config = ssr_config(*([f"diffusion.ssr_residual_scale={residual_scale}",
                         "diffusion.threshold='none'", f"diffusion.ssr_residual_base='{base}'"]
                        if residual_scale else []))
  settings = diffusion_config.sampler_settings(config.diffusion)
  upsampler = upsample.Upsampler(config, params, settings, windowed.WindowSettings(8, 2))
  assert upsampler.sampling.devices == jax.device_count() == 8
  low = low_res_clip(4)
  out = upsampler(low, seed=3)
  assert out.shape == (1, 4, 16, 16, 3) and out.dtype == np.uint8

  @jax.jit
  def plain(params, low_res):
    keys = jax.vmap(jax.random.key)(jnp.array([3]))
    extra, levels = upsampler.conditioning(low_res, keys, config.diffusion.noise_aug_level)
    cond = {**upsampler.model.encode_prompts(params, [""]), "noise_level": levels}
    denoiser = lambda x, t, c: upsampler.model.denoise(params, x, t, c, extra)
    x = samplers.sample(denoiser, samplers.initial_noise(keys, extra.shape), cond, keys,
                        upsampler.schedule, settings)
    if residual_scale:
      method = {"bilinear": "bilinear", "bicubic": "cubic"}[base]
      x = jax.image.resize(low_res, x.shape, method) + x / residual_scale
    return jnp.round((jnp.clip(x, -1, 1) + 1) * 127.5).astype(jnp.uint8)

  np.testing.assert_array_equal(out, plain(params, low[None].astype(np.float32) / 127.5 - 1))


def test_long_clips_upsample_in_windows(ssr_model):
  config, params = ssr_model
  settings = diffusion_config.sampler_settings(config.diffusion)
  windows = windowed.window_settings(config)  # the clip length: 4 frames, overlap 2
  upsampler = upsample.Upsampler(config, params, settings, windows)
  assert upsampler.sampling.plan(11).starts == (0, 2, 4, 6, 7)
  low = low_res_clip(11)
  first, again, other = upsampler(low, seed=0), upsampler(low, seed=0), upsampler(low, seed=1)
  assert first.shape == (1, 11, 16, 16, 3)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)


# -- the command line --------------------------------------------------------------------

def merged(*overrides) -> list:
  """The overrides with each field once, the last value winning (the command line
  refuses a field given twice)."""
  fields = dict(o.split("=", 1) for o in (*support.MICRO, *overrides))
  return [f"{k}={v}" for k, v in fields.items()]


def ssr_flags():
  return ["--config", "shapes_tiny:ssr", *[f"--config.{o}" for o in merged(*SSR)]]


def run_cli(capsys, *argv):
  code = cli.main(list(argv))
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_upsample_command_writes_the_upsampled_clip(tmp_path, capsys):
  np.save(tmp_path / "low.npy", low_res_clip(6))
  code, out, err = run_cli(capsys, "upsample", *ssr_flags(), "--video",
                           str(tmp_path / "low.npy"), "--out", str(tmp_path / "high.npy"),
                           "--quiet", "--overlap", "1", "--weighting", "ramp",
                           "--rotate-windows")
  assert code == 0, err
  assert out.strip() == str(tmp_path / "high.npy")
  high = np.load(tmp_path / "high.npy")
  assert high.shape == (6, 16, 16, 3) and high.dtype == np.uint8


UPSAMPLE_BAD_INPUTS = [
    (["--window", "2", "--overlap", "2"], "must be larger than the overlap"),
    (["--overlap", "-1"], "overlap must be >= 0"),
    (["--window", "3", "--overlap", "1"], "must be a multiple of 2"),
    (["--noise-level", "1.5"], "outside the schedule"),
    (["--noise-level", "-0.1"], "outside the schedule"),
    (["--video", "{tmp}/big.npy"], "this SSR model upsamples 4x4 clips to 16x16"),
    (["--video", "{tmp}/odd.npy"], "needs a multiple of 2 frames"),
    (["--video", "{tmp}/broken.mp4"], "could not decode video"),
    (["--video", "{tmp}/missing.gif"], "video file not found"),
    (["--out", "{tmp}/out.avi"], "unsupported video format"),
    (["--config", "shapes_tiny:t2v"], "needs an SSR model"),
    (["--step", "3"], "--step selects a step of --checkpoint"),
    (["--config.diffusion.window_rotate=sometimes"], "diffusion.window_rotate' expects bool"),
]


@pytest.mark.parametrize("argv,match", UPSAMPLE_BAD_INPUTS,
                         ids=[m for _, m in UPSAMPLE_BAD_INPUTS])
def test_upsample_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, match):
  np.save(tmp_path / "low.npy", low_res_clip(6))
  np.save(tmp_path / "big.npy", low_res_clip(6, size=8))
  np.save(tmp_path / "odd.npy", low_res_clip(3))
  (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
  before = sorted(tmp_path.iterdir())
  defaults = {"--video": str(tmp_path / "low.npy"), "--out": str(tmp_path / "out.npy")}
  argv = [a.format(tmp=tmp_path) for a in argv]
  for flag, value in defaults.items():
    if flag not in argv:
      argv += [flag, value]
  source = [] if "--config" in argv else ssr_flags()
  code, _, err = run_cli(capsys, "upsample", *source, *argv)
  assert_one_line_error(code, err, match)
  assert sorted(tmp_path.iterdir()) == before


def test_upsample_without_a_shipped_ssr_model_says_so(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(weights, "manifest", lambda *a: {"shapes_t2v": {}})
  np.save(tmp_path / "low.npy", low_res_clip(4))
  code, _, err = run_cli(capsys, "upsample", "--video", str(tmp_path / "low.npy"), "--out",
                         str(tmp_path / "out.npy"))
  assert_one_line_error(code, err, "no SSR model is shipped")
  assert not (tmp_path / "out.npy").exists()


def assert_one_line_error(code, err, match):
  assert code == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err
  assert match in lines[0], lines[0]


# -- generate: long clips and the cascade ------------------------------------------------

PROMPT = ("--prompt", "a red circle moving left")
BASE = ("--config", "shapes_tiny:t2v",
        *[f"--config.{o}" for o in merged("data.resolution=8", "diffusion.steps=2")])


@pytest.mark.parametrize("noise,rotate", [("independent", ()), ("repeat", ("--rotate-windows",))])
def test_generate_a_clip_longer_than_the_model_in_windows(tmp_path, capsys, noise, rotate):
  out = tmp_path / "long.npy"
  code, _, err = run_cli(capsys, "generate", *BASE, *PROMPT, "--num-frames", "10",
                         "--window-noise", noise, *rotate, "--out", str(out), "--quiet")
  assert code == 0, err
  assert np.load(out).shape == (10, 8, 8, 3)


def test_long_clip_window_noise_repeat_starts_from_the_first_windows_noise():
  """'repeat': frame f starts from the noise of frame repeated_noise_frames(...)[f] of the
  first window (FreeNoise); 'independent' (the paper's): every frame its own noise."""
  config = load_config("shapes_tiny:t2v", list(merged("data.resolution=8",
                                                      "diffusion.steps=2")))
  params = generate.fresh_params(config)
  settings = samplers.SamplerSettings("dpmpp", steps=2)
  keys = jax.vmap(jax.random.key)(np.arange(2, dtype=np.int32))
  noise = {}
  for mode in ("independent", "repeat"):
    windows = windowed.window_settings(config, noise=mode)
    noise[mode] = np.asarray(generate.TextToVideo(
        config, params, settings, num_frames=10, windows=windows).initial_noise(keys))
  assert noise["repeat"].shape == noise["independent"].shape == (2, 10, 8, 8, 3)
  sources = windows_lib.repeated_noise_frames(10, 4, 2)
  np.testing.assert_array_equal(noise["repeat"], noise["repeat"][:, sources])
  first = noise["independent"][:, :4]
  later = noise["independent"][:, 4:]
  assert not any(np.allclose(later[:, f], first[:, g]) for f in range(6) for g in range(4))


@pytest.fixture(scope="module")
def ssr_files(tmp_path_factory):
  """Micro SSR config files (--ssr-config takes no overrides): x4 from 8x8 and from 16x16."""
  folder = tmp_path_factory.mktemp("ssr_configs")
  paths = {}
  for low in (8, 16):
    paths[f"ssr{low}"] = folder / f"micro_ssr_{low}.py"
    overrides = merged(*SSR, f"data.resolution={4 * low}", f"data.low_resolution={low}")
    paths[f"ssr{low}"].write_text(
        "from lumiere_jax.config import load_config\n\n\n"
        "def get_config(arg=None):\n"
        f"  return load_config('shapes_tiny:ssr', {overrides!r})\n")
  return paths


def test_the_cascade_generates_then_upsamples(tmp_path, capsys, ssr_files):
  out = tmp_path / "cascade.npy"
  code, _, err = run_cli(capsys, "generate", *BASE, *PROMPT, "--upsample", "--ssr-config",
                         str(ssr_files["ssr8"]), "--out", str(out), "--quiet")
  assert code == 0, err
  assert np.load(out).shape == (4, 32, 32, 3)


GENERATE_BAD_INPUTS = [
    (["--num-frames", "10", "--window", "3", "--overlap", "3"],
     "must be larger than the overlap"),
    (["--num-frames", "10", "--overlap", "-2"], "overlap must be >= 0"),
    (["--window", "4"], "apply to --num-frames beyond the model's clip length (4 frames)"),
    (["--ssr-config", "shapes_tiny:ssr"], "--ssr-config applies to --upsample"),
    (["--upsample", "--ssr-config", "shapes_tiny:t2v"], "needs an SSR model"),
    (["--upsample", "--ssr-config", "{ssr16}"],
     "the base model makes 8x8 frames but the SSR model upsamples 16x16 clips"),
]


@pytest.mark.parametrize("argv,match", GENERATE_BAD_INPUTS,
                         ids=[m for _, m in GENERATE_BAD_INPUTS])
def test_generate_bad_windows_and_cascades_are_one_line(tmp_path, capsys, ssr_files, argv,
                                                        match):
  argv = [a.format(**ssr_files) for a in argv]
  code, _, err = run_cli(capsys, "generate", *BASE, *PROMPT, *argv, "--out",
                         str(tmp_path / "out.npy"))
  assert_one_line_error(code, err, match)
  assert list(tmp_path.iterdir()) == []


# -- the shipped model -------------------------------------------------------------------

def test_the_shipped_ssr_model_beats_bicubic_upsampling():
  """The default SSR model (shapes_ssr_x2, its own sampling defaults) on clips rendered
  by the data builder, area-downsampled to its low resolution: higher PSNR and sharper
  edges than PIL's bicubic upsampling (docs/ssr.md measures 16 held-out clips)."""
  from lumiere_jax.data import pipeline, shapes  # pylint: disable=g-import-not-at-top
  from lumiere_jax.evaluation import ssr_eval  # pylint: disable=g-import-not-at-top
  config, params = weights.load_model(name=upsample.DEFAULT_SSR_MODEL)
  size, low_size = config.data.resolution, config.data.low_resolution
  truth = np.stack([shapes.render_clip(seed, size, 8).video for seed in (101, 102)])
  low = pipeline.area_downsample(truth, low_size)
  settings = diffusion_config.sampler_settings(config.diffusion)
  upsampler = upsample.Upsampler(config, params, settings, windowed.window_settings(config))
  ssr = np.concatenate([upsampler(clip, seed=i) for i, clip in enumerate(low)])
  bicubic = np.stack([ssr_eval.resize(clip, size, ssr_eval.BASELINES["bicubic"])
                      for clip in low])
  report = ssr_eval.scores({"ssr": ssr, "bicubic": bicubic}, truth)
  assert report["ssr"]["psnr"] > report["bicubic"]["psnr"] + 0.5, report
  assert report["ssr"]["edge_sharpness"] > report["bicubic"]["edge_sharpness"], report
