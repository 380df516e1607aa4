"""Text-to-video generation with the tiny STUNet (freshly initialised): one compiled
program per batch size, per-video seeds, SDEdit from a given video."""

import contextlib
import dataclasses

import jax
import numpy as np
import pytest

import trained_weights

from lumiere_jax.config import load_config
from lumiere_jax.data import shapes
from lumiere_jax.diffusion import noise
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.errors import UserError
from lumiere_jax.models import build
from lumiere_jax.pipelines import generate as pipeline

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def count_compilations():
  """Counts traces and XLA compilations (of anything) inside the block."""
  events = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event in COMPILE_EVENTS:
      events.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def model():
  config = load_config("shapes_tiny:t2v", ["data.num_frames=8"])
  params = pipeline.fresh_params(config)
  return pipeline.TextToVideo(config, params, SamplerSettings("dpmpp", steps=2,
                                                              threshold="dynamic"))


def test_second_call_with_new_prompts_does_not_compile(model):
  first = model(["a red circle moving left", "a blue square growing"], seed=0,
                guidance_scale=3.0)
  with count_compilations() as events:
    second = model(["a green triangle bouncing around", "a white circle standing still"],
                   seed=7, guidance_scale=1.5)
  assert events == []
  assert first.shape == second.shape == (2, 8, 32, 32, 3) and first.dtype == np.uint8
  assert np.abs(first.astype(int) - second).mean() > 1


def test_video_depends_only_on_its_prompt_and_seed(model):
  """Video i of a batch made with seed s is the video of prompt i alone with seed s + i,
  which is what the manifest's per-video seed promises (up to float reassociation in
  batched kernels: at most 2 of 255 levels)."""
  prompts = ["a red circle moving left", "a blue square growing"]
  batch = model(prompts, seed=3, guidance_scale=2.0)
  alone = model(prompts[1:], seed=4, guidance_scale=2.0)
  assert np.abs(batch[1].astype(int) - alone[0]).max() <= 2
  assert np.abs(batch[0].astype(int) - alone[0]).mean() > 1


def test_the_starting_noise_has_the_settings_frame_correlation(model):
  """A model trained on frame-correlated noise samples from it (its config's
  diffusion.frame_noise_correlation becomes the settings' noise_correlation)."""
  keys = jax.vmap(jax.random.key)(np.arange(2))
  correlated = pipeline.TextToVideo(model.config, model.params, dataclasses.replace(
      model.settings, noise_correlation=0.5))
  plain = model.initial_noise(keys)
  np.testing.assert_array_equal(correlated.initial_noise(keys),
                                noise.frame_correlated(plain, 0.5))
  assert np.abs(np.asarray(plain[:, 1:] - plain[:, :-1])).mean() > 1


def test_sdedit_from_a_video(model):
  video = model(["a red circle moving left"], seed=0, guidance_scale=2.0)[0]
  edited = model(["a red circle moving left", "a cyan square moving up"], seed=0,
                 guidance_scale=2.0, init_video=video, strength=0.5)
  assert edited.shape == (2, 8, 32, 32, 3)
  with pytest.raises(UserError, match="strength"):
    model(["a"], seed=0, guidance_scale=2.0, init_video=video, strength=1.5)
  with pytest.raises(UserError, match="8x32x32"):
    model(["a"], seed=0, guidance_scale=2.0, init_video=video[:4], strength=0.5)


def test_sdedit_output_follows_the_input_video_and_the_strength(model):
  """SDEdit noises its input to level `strength` and denoises from there: each output
  stays near its own input at a low strength and drifts away as the strength grows, and
  an edit of clip A is nearer A than the other clip B (and vice versa)."""
  clips = np.stack([shapes.render_clip(seed, 32, 8).video for seed in (1, 2)])

  def edit(strength):  # the batch size test_sdedit_from_a_video compiled already
    return model(["a red circle moving left"] * 2, seed=5, guidance_scale=2.0,
                 init_video=clips, strength=strength).astype(np.float64)

  def distance(a, b):
    return np.abs(a - b.astype(np.float64)).mean()

  a, b = clips
  assert distance(a, b) > 10  # two really different inputs
  edits = {strength: edit(strength) for strength in (0.05, 0.4, 1.0)}
  for i, (own, other) in enumerate(((a, b), (b, a))):
    drift = [distance(edits[s][i], own) for s in edits]
    # Measured with the fresh tiny model: about 24, 84 and 113 of 255 levels.
    assert drift[0] < 0.5 * drift[1] and drift[1] < drift[2], drift
    # Measured: 24 from its own input, 48 from the other clip.
    low = edits[0.05][i]
    assert distance(low, own) < 0.75 * distance(low, other), (distance(low, own),
                                                            distance(low, other))


@pytest.mark.parametrize("kwargs,match", [
    (dict(prompts=[""]), "prompt 1 is empty"),
    (dict(prompts=[]), "no prompts"),
    (dict(guidance_scale=-1.0), "guidance"),
    (dict(seed=-1), "seed"),
])
def test_bad_requests_are_refused(model, kwargs, match):
  request = dict(prompts=["a red circle"], seed=0, guidance_scale=1.0) | kwargs
  with pytest.raises(UserError, match=match):
    model(**request)


def _predictions(model, prompts, negative, scale, x, t):
  negatives = [negative] if isinstance(negative, str) else negative
  denoiser, cond = model.guided_denoiser(model.params, model.model.tokenize(prompts),
                                         model.model.tokenize(negatives), scale)
  return np.asarray(denoiser(x, t, cond))


@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0, 3.0, 7.5])
def test_empty_negative_prompt_is_plain_cfg_and_a_negative_prompt_replaces_it(model, scale):
  net, params = model.model, model.params
  prompts = ["a red circle moving left", "a blue square growing"]
  x = jax.random.normal(jax.random.key(0), (2,) + model.video_shape)
  t = np.array([0.9, 0.4], np.float32)

  def alone(texts):  # each branch run on its own, not interleaved with the other
    return np.asarray(net.denoise(params, x, t, net.encode_prompts(params, texts)))

  # Each branch, run in one batch of 2B against alone, agrees to float rounding (up to
  # 3e-6 seen, either XLA:CPU convolution path); the combination weighs those errors by
  # |s| and |1 - s|.
  atol = 5e-6 * (abs(scale) + abs(1 - scale))
  conditional, empty = alone(prompts), alone([""] * 2)
  np.testing.assert_allclose(_predictions(model, prompts, "", scale, x, t),
                             scale * conditional + (1 - scale) * empty, atol=atol, rtol=0)
  negative = alone(["a red circle moving right"] * 2)
  guided = _predictions(model, prompts, "a red circle moving right", scale, x, t)
  np.testing.assert_allclose(guided, negative + scale * (conditional - negative),
                             atol=atol, rtol=0)
  if scale != 1.0:  # at w = 1 both are the conditional prediction
    assert np.abs(guided - _predictions(model, prompts, "", scale, x, t)).max() > 1e-4
  # One negative prompt per prompt: each prompt is guided away from its own.
  own = ["a red circle moving right", "a blue square shrinking"]
  np.testing.assert_allclose(_predictions(model, prompts, own, scale, x, t),
                             alone(own) + scale * (conditional - alone(own)),
                             atol=atol, rtol=0)


def test_negative_prompts_are_one_or_one_per_prompt(model):
  with pytest.raises(UserError, match="2 negative prompts for 3 prompts"):
    model(["a red circle"] * 3, 0, 1.0, negative_prompt=["a", "b"])


@pytest.fixture(scope="module")
def expert(model):
  """(config, params) of a low-noise expert: the same architecture, other weights."""
  params = jax.jit(lambda rng: build.init_params(model.config, rng))(jax.random.key(11))
  return model.config, params


@pytest.mark.parametrize("own_views", [False, True])
def test_a_low_noise_expert_denoises_the_steps_at_and_below_the_switch(model, expert,
                                                                        own_views):
  """With expert_switch s the guided prediction is the model's at t > s and the expert's
  (its own CFG) at t <= s; the same prompts and noise throughout. An expert whose
  temporal layers read their own caption view (model.temporal.caption_drop_words, trained
  weights) reads the prompts its own way."""
  if own_views:
    config = model.config.copy_and_resolve_references()
    with config.unlocked():
      config.model.temporal.caption_drop_words = ("circle", "square")
    expert = (config, trained_weights.perturbed(expert[1], seed=3))
  switched = pipeline.TextToVideo(model.config, model.params, model.settings,
                                  expert=expert, expert_switch=0.5)
  alone = pipeline.TextToVideo(*expert, model.settings)
  prompts = ["a red circle moving left", "a blue square growing"]
  x = jax.random.normal(jax.random.key(0), (2,) + model.video_shape)

  def predict(pipe, t):
    denoiser, cond = pipe.guided_denoiser(pipe.params, pipe.tokenize(prompts),
                                          pipe.tokenize([""]), 3.0, pipe.expert_params)
    return np.asarray(denoiser(x, np.full((2,), t, np.float32), cond))

  for t, owner in ((0.9, model), (0.51, model), (0.5, alone), (0.2, alone)):
    np.testing.assert_allclose(predict(switched, t), predict(owner, t), atol=5e-5, rtol=0)
  assert np.abs(predict(model, 0.2) - predict(alone, 0.2)).max() > 1e-3


def test_an_expert_switch_of_zero_samples_with_the_model_alone(model, expert):
  """Switch 0 is the model alone, bit for bit; an expert given without a switch, or
  one that makes other clips, is refused."""
  prompts = ["a red circle moving left"]
  off = pipeline.TextToVideo(model.config, model.params, model.settings, expert_switch=0.0)
  np.testing.assert_array_equal(off(prompts, 0, 2.0), model(prompts, 0, 2.0))
  with pytest.raises(UserError, match="needs an expert switch"):
    pipeline.TextToVideo(model.config, model.params, model.settings, expert=expert)
  with pytest.raises(UserError, match="names none"):
    pipeline.TextToVideo(model.config, model.params, model.settings, expert_switch=0.3)
  longer = load_config("shapes_tiny:t2v", ["data.num_frames=16"])
  with pytest.raises(UserError, match="low-noise expert makes 16x32x32x3"):
    pipeline.TextToVideo(model.config, model.params, model.settings,
                         expert=(longer, expert[1]), expert_switch=0.3)
  with pytest.raises(UserError, match="expert switch 1.0 is invalid"):
    pipeline.TextToVideo(model.config, model.params, model.settings, expert=expert,
                         expert_switch=1.0)
