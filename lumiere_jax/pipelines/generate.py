"""Text-to-video generation: prompts -> uint8 videos [N, T, H, W, 3].

All prompts of a call are one batch, sampled by three compiled programs (text encoding
and starting noise; one guided sampling step, called once per step from the host; the
uint8 conversion: pipelines/stepped.py). They are traced once per batch size and kept by
the `TextToVideo` object: new prompts, seeds, guidance scales or SDEdit strengths reuse
them, and the persistent compilation cache keeps them across processes.

The weights come from lumiere_jax.weights (a shipped model by name, or a training run's
EMA weights); `fresh_params` initialises an untrained model for development and tests.
"""

import json
import logging
import pathlib
import re
from typing import Optional, Sequence, Union

import jax
import numpy as np

from lumiere_jax import runtime
from lumiere_jax import weights
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion import denoisers, guidance, samplers
from lumiere_jax.diffusion import windows as windows_lib
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.diffusion.schedules import schedule_from_config
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic
from lumiere_jax.io import sheet as sheet_io
from lumiere_jax.io import video as video_io
from lumiere_jax.models import build, conditioning, text
from lumiere_jax.pipelines import stepped, windowed

MAX_SEED = 2**31 - 1
XT_SLICE_SCALE = 8  # a 16-frame, 32-pixel slice becomes a viewable 128 x 256 picture
SHEET_FRAMES = 8  # frames per video on a --sheet contact sheet

log = logging.getLogger(__name__)


def check_prompts(prompts: Sequence[str]) -> list:
  """Non-empty list of non-blank prompts. (The empty prompt is the unconditional input of
  classifier-free guidance, so asking for it is almost certainly a mistake.)"""
  prompts = list(prompts)
  if not prompts:
    raise UserError("no prompts given")
  for i, prompt in enumerate(prompts, 1):
    if not prompt.strip():
      raise UserError(f"prompt {i} is empty")
    if not text.words(prompt):  # it would encode exactly as the empty prompt
      raise UserError(f"prompt {i} ({prompt[:40]!r}) has no words, only symbols; the "
                      f"model reads words of letters and digits")
  return prompts


def check_prompt_lengths(tokenizer, prompts: Sequence[str]) -> None:
  """A prompt longer than the model reads would be cut without a word: refused."""
  limit = tokenizer.max_words
  for i, prompt in enumerate(prompts, 1):
    count = len(text.words(prompt))
    if count > limit:
      raise UserError(f"prompt {i} has {count} words; this model reads at most {limit} "
                      f"(text.max_length={tokenizer.max_length} tokens, with BOS and EOS)")


def check_seed(seed: int, count: int) -> None:
  if not 0 <= seed <= MAX_SEED - count:
    raise UserError(f"seed must be in [0, {MAX_SEED - count}] for {count} videos, got {seed}")


def check_generation_config(config) -> None:
  if conditioning.kind(config.model.in_channels) != conditioning.NONE:
    raise UserError(f"generate needs a text-to-video or text-to-image config "
                    f"(model.in_channels=3), got model.in_channels="
                    f"{config.model.in_channels} (stage {config.stage!r})")


def video_shape(config) -> tuple:
  """[T, H, W, 3] of one generated video (T = 1 for a text-to-image model)."""
  return build.Model(config).clip_shape


def check_init_video(config, init_video, strength: float, count: int,
                     shape: Optional[tuple] = None) -> None:
  """`shape`: [T, H, W, 3] of the videos to make (default: the model's clip)."""
  samplers.check_strength(strength)
  video = np.asarray(init_video)
  shape = video_shape(config) if shape is None else tuple(shape)
  if video.shape not in (shape, (count,) + shape):
    raise UserError(f"the input video is {_describe(video.shape[-4:-1])} (frames x height x "
                    f"width); this model makes {_describe(shape[:3])}")


def _describe(shape) -> str:
  return "x".join(map(str, shape))


def check_request(config, prompts, seed, guidance_scale, init_video=None,
                  strength=1.0, shape=None) -> list:
  """Everything about a generation request that can be wrong, checked before any work."""
  check_generation_config(config)
  prompts = check_prompts(prompts)
  check_prompt_lengths(text.tokenizer_from_config(config.text), prompts)
  check_seed(seed, len(prompts))
  diffusion_config.check_guidance(guidance_scale)
  if init_video is not None:
    check_init_video(config, init_video, strength, len(prompts), shape)
  return prompts


def fresh_params(config) -> dict:
  """A freshly initialised model (from config.seed, so it does not change with the
  sampling seed): for development and tests; trained models come from lumiere_jax.weights."""
  return jax.jit(lambda rng: build.init_params(config, rng))(jax.random.key(config.seed))


def warn_unknown_words(tokenizer, prompts: Sequence[str]) -> list:
  """One warning naming the words the model's vocabulary lacks (they become <unk>)."""
  unknown = tokenizer.unknown_words(prompts)
  if unknown:
    log.warning("words outside the model's vocabulary (encoded as <unk>, which the model "
                "never saw in training): %s", ", ".join(unknown))
  return unknown


class TextToVideo:
  """A model with fixed sampler settings; call it with prompts to get videos.

  `num_frames` longer than the model's clip: the clip is sampled in overlapping windows
  fused at every step (temporal MultiDiffusion, pipelines/windowed.py), with `windows`
  (default: the config's diffusion.window settings).

  A low-noise expert (diffusion.expert_switch > 0, or `expert_switch`): the steps at
  times t <= the switch are denoised by `expert`, (config, params) of another video model
  (default: the shipped model the config's diffusion.low_noise_expert names); an
  `expert_switch` of 0 samples with this model alone."""

  def __init__(self, config, params: dict, settings: SamplerSettings,
               progress: bool = False, model: Optional[build.Model] = None,
               num_frames: Optional[int] = None,
               windows: Optional[windowed.WindowSettings] = None,
               expert: Optional[tuple] = None, expert_switch: Optional[float] = None):
    check_generation_config(config)
    self.config = config
    self.model = model or build.Model(config)
    self.settings = settings
    self.video_shape = self.model.clip_shape
    self.schedule = schedule_from_config(config.diffusion, config.data.resolution)
    self.plan = None
    if num_frames is not None and num_frames != self.video_shape[0]:
      self.plan, params = self._plan_windows(params, num_frames, windows)
    self.params = params
    self.expert, self.expert_params, self.expert_switch = self._expert(expert, expert_switch)
    # Ctrl-C ends sampling after the step in progress (runtime.handle_interrupts).
    self.sampler = stepped.Stepped(self._prepare, self._problem, self._finish,
                                   self.schedule, settings,
                                   "generating" if progress else None,
                                   runtime.interrupt_requested)

  def __call__(self, prompts: Sequence[str], seed: int, guidance_scale: float,
               init_video: Optional[np.ndarray] = None, strength: float = 1.0,
               negative_prompt: Union[str, Sequence[str]] = "") -> np.ndarray:
    """uint8 [N, T, H, W, 3]; video i uses seed + i. With `init_video` (uint8
    [T, H, W, 3], or one per prompt) each video is an SDEdit of it at level `strength`.
    `negative_prompt` (one for all prompts, or one per prompt) takes the place of the
    empty prompt in guidance (guided = n + w (c - n)): the samples are pushed away from
    it; "" is plain CFG."""
    prompts = check_request(self.config, prompts, seed, guidance_scale, init_video, strength,
                            self.video_shape)
    negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
    if len(negatives) not in (1, len(prompts)):
      raise UserError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give "
                      f"one for all or one per prompt")
    init = None
    if init_video is not None:
      init = np.broadcast_to(video_io.from_uint8(init_video),
                             (len(prompts),) + self.video_shape)
    warn_unknown_words(self.model.tokenizer, [*prompts, *negatives])
    tokens, negative = self.tokenize(prompts), self.tokenize(negatives)
    seeds = np.arange(seed, seed + len(prompts), dtype=np.int32)
    runtime.check_interrupt("interrupted before sampling; nothing was written")
    videos = self.sampler(self.params, tokens, negative, seeds, np.float32(guidance_scale),
                          init, np.float32(strength), self.expert_params)
    runtime.check_interrupt("interrupted while sampling; nothing was written")
    return np.asarray(videos)

  def tokenize(self, prompts: Sequence[str]) -> dict:
    """Each model's own token ids of the prompts, {'model'[, 'expert']} (their caption
    views may differ: model.temporal.caption_drop_words)."""
    tokens = {"model": self.model.tokenize(prompts)}
    if self.expert is not None:
      tokens["expert"] = self.expert.tokenize(prompts)
    return tokens

  def guided_denoiser(self, params, tokens, negative_tokens, guidance_scale,
                      expert_params=None):
    """(fn(x, t, cond) -> guided prediction, cond): classifier-free guidance with the
    negative prompt's encoding in the unconditional's place, n + w (c - n); with a
    low-noise expert, its guided prediction at times t <= the switch."""
    encodings = self.encode(params, tokens, negative_tokens, expert_params)
    return self._guided_from(params, encodings, guidance_scale, expert_params)

  def encode(self, params, tokens, negative_tokens, expert_params=None) -> dict:
    """The prompts' and negative prompts' encodings, {'model': (cond, negative)}, and the
    expert's own as 'expert' (its own text encoder). Tokens: `tokenize`'s ids of each
    model, or one array of ids that both read."""
    ids = lambda t, which: t[which] if isinstance(t, dict) else t
    encodings = {"model": _encode(self.model, params, ids(tokens, "model"),
                                  ids(negative_tokens, "model"))}
    if self.expert is not None:
      encodings["expert"] = _encode(self.expert, expert_params, ids(tokens, "expert"),
                                    ids(negative_tokens, "expert"))
    return encodings

  def _guided_from(self, params, encodings: dict, guidance_scale, expert_params):
    guided, cond = _guided(self.model, params, *encodings["model"], guidance_scale,
                           self._windows)
    if self.expert is None:
      return guided, cond
    low, low_cond = _guided(self.expert, expert_params, *encodings["expert"],
                            guidance_scale, self._windows)
    switch = self.expert_switch

    def experts(x, t, cond):
      # Every example of a sampling step is at the same time (samplers.py).
      return jax.lax.cond(t[0] > switch, lambda: guided(x, t, cond),
                          lambda: low(x, t, low_cond))

    return experts, cond

  def _windows(self, denoiser):
    return denoiser if self.plan is None else self.sampling.denoiser(denoiser, self.plan)

  def _expert(self, expert, expert_switch):
    """(expert Model, its params, switch), or (None, None, 0.0) without an expert."""
    section = self.config.diffusion
    switch = section.get("expert_switch", 0.0) if expert_switch is None else expert_switch
    diffusion_config.check_expert_switch(switch)
    if not switch:
      if expert is not None:
        raise UserError("a low-noise expert needs an expert switch > 0 (the time below "
                        "which it denoises); this model's config has none")
      return None, None, 0.0
    if expert is None:
      name = section.get("low_noise_expert", "")
      if not name:
        raise UserError(f"an expert switch of {switch} needs a low-noise expert; this "
                        "model's config names none (diffusion.low_noise_expert)")
      expert = weights.load_shipped(name)
    expert_config, params = expert
    check_expert(self.config, expert_config)
    if self.plan is not None:
      params = self.sampling.replicate(params)
    return build.Model(expert_config), params, float(switch)

  def _plan_windows(self, params, num_frames: int, windows):
    """(plan, params on the window devices) for clips of `num_frames` frames."""
    if not self.model.is_video:
      raise UserError(f"an image model makes 1 frame; {num_frames} frames need a video model")
    windows = windows or windowed.window_settings(self.config)
    windowed.check_clip_length(self.config, num_frames, windows)
    self.sampling = windowed.WindowedSampling(self.config, windows)
    self.video_shape = (num_frames,) + self.video_shape[1:]
    return self.sampling.plan(num_frames), self.sampling.replicate(params)

  def initial_noise(self, keys) -> jax.Array:
    """The starting noise [B, T, H, W, C] of the keys' videos. A long clip with window
    noise 'repeat' repeats its first window's noise (windows.repeated_noise_frames)."""
    shape = (keys.shape[0],) + self.video_shape
    if self.plan is None or self.sampling.settings.noise == "independent":
      return samplers.initial_noise(keys, shape, self.settings.noise_correlation)
    s = self.sampling.settings
    frames = windows_lib.repeated_noise_frames(shape[1], self.plan.window, s.overlap)
    first = samplers.initial_noise(keys, (shape[0], self.plan.window) + shape[2:],
                                   self.settings.noise_correlation)
    return first[:, frames]

  # The sampling program (stepped.Stepped): encodings and start noise, the guided step,
  # uint8 conversion. args: params, tokens, negative_tokens, seeds, guidance_scale, init,
  # strength, expert_params.
  def _prepare(self, params, tokens, negative_tokens, seeds, guidance_scale, init, strength,
               expert_params):
    keys = jax.vmap(jax.random.key)(seeds)
    layout = self.model.to_model_layout
    if init is None:
      x = layout(self.initial_noise(keys))
    else:
      x = samplers.sdedit_start(layout(init), keys, self.schedule, strength,
                                self.settings.noise_correlation)
    return self.encode(params, tokens, negative_tokens, expert_params), x

  def _problem(self, encodings, params, tokens, negative_tokens, seeds, guidance_scale,
               init, strength, expert_params) -> stepped.Problem:
    denoiser, cond = self._guided_from(params, encodings, guidance_scale, expert_params)
    return stepped.Problem(denoiser, cond, jax.vmap(jax.random.key)(seeds),
                           t_start=1.0 if init is None else strength)

  def _finish(self, encodings, x, params, tokens, negative_tokens, seeds, *unused):
    return video_io.to_uint8(x.reshape((seeds.shape[0],) + self.video_shape))


def _encode(model: build.Model, params, tokens, negative_tokens) -> tuple:
  """(cond, negative): the prompts' and the negative prompts' encodings."""
  return (model.encode(params["text"], tokens), model.encode(params["text"], negative_tokens))


def _guided(model: build.Model, params, cond, negative, guidance_scale, windows):
  """(guided denoiser, cond) of one model: CFG with the negative prompt's encoding in the
  unconditional's place; `windows` wraps the plain denoiser (MultiDiffusion or identity)."""
  denoiser = windows(denoisers.bind(model.denoise, params))
  return guidance.classifier_free_guidance(denoiser, negative, guidance_scale), cond


def add_expert_arguments(parser) -> None:
  """The low-noise expert's flags, shared by `generate` and `eval shapes`."""
  group = parser.add_argument_group(
      "low-noise expert (diffusion.low_noise_expert: the steps at t <= the switch)")
  source = group.add_mutually_exclusive_group()
  source.add_argument("--expert", metavar="NAME", help="a shipped video model (default: the "
                      "model's diffusion.low_noise_expert)")
  source.add_argument("--expert-checkpoint", metavar="DIR", help="a training workdir's EMA "
                      "weights as the expert")
  group.add_argument("--expert-switch", type=float, metavar="S", help="the time in [0, 1) "
                     "at and below which the expert denoises; 0: the model alone "
                     "(default: the model's diffusion.expert_switch)")


def expert_from_args(args) -> Optional[tuple]:
  """(config, params) of the expert the flags name, or None (the model's own, if any)."""
  if args.expert is None and args.expert_checkpoint is None:
    return None
  return weights.load_model(checkpoint=args.expert_checkpoint, name=args.expert)


def check_expert(config, expert_config) -> None:
  """A low-noise expert must be a video model making the same clips from prompts read
  alike (the same text settings; each model tokenizes them its own way)."""
  main, expert = build.Model(config), build.Model(expert_config)
  if not expert.is_video or expert.clip_shape != main.clip_shape or \
      expert.in_channels != main.in_channels:
    raise UserError(f"the low-noise expert makes {_describe(expert.clip_shape)} clips from "
                    f"{expert.in_channels} channels; this model makes "
                    f"{_describe(main.clip_shape)} from {main.in_channels}")
  if expert_config.text.to_dict() != config.text.to_dict():
    raise UserError("the low-noise expert's text settings (config.text) differ from this "
                    "model's: it would not read the prompts as this model does")


def generate(config, params: dict, prompts: Sequence[str], *, settings: SamplerSettings,
             guidance_scale: float, seed: int, init_video: Optional[np.ndarray] = None,
             strength: float = 1.0, negative_prompt: str = "",
             progress: bool = False, num_frames: Optional[int] = None,
             windows: Optional[windowed.WindowSettings] = None,
             expert: Optional[tuple] = None,
             expert_switch: Optional[float] = None) -> np.ndarray:
  """One-shot generation: validates the request, builds the model, samples. A
  `num_frames` other than the model's clip length is sampled in windows (TextToVideo)."""
  shape = None if num_frames is None else (num_frames,) + video_shape(config)[1:]
  prompts = check_request(config, prompts, seed, guidance_scale, init_video, strength, shape)
  model = TextToVideo(config, params, settings, progress, num_frames=num_frames,
                      windows=windows, expert=expert, expert_switch=expert_switch)
  return model(prompts, seed, guidance_scale, init_video, strength, negative_prompt)


def output_name(index: int, prompt: str) -> str:
  """'003_a-red-circle-moving-left': sortable, readable, safe on any filesystem."""
  slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48].rstrip("-")
  return f"{index:03d}_{slug or 'video'}"


def check_outputs(count: int, out=None, out_dir=None, extra_formats=(), xt_slice=None,
                  sheet=None):
  """Validates the output request before any work, so bad input writes nothing."""
  if (out is None) == (out_dir is None):
    raise UserError("give exactly one of --out PATH and --out-dir DIR")
  if out is not None:
    video_io.check_video_path(out)
    if count != 1:
      raise UserError(f"--out writes one video but {count} prompts were given; use "
                      "--out-dir for several")
    if extra_formats:
      raise UserError("--also applies to --out-dir; with --out the suffix picks the format")
    atomic.check_output_file(out, "--out")
  else:
    atomic.check_output_dir(out_dir, "--out-dir")
  for fmt in extra_formats:
    video_io.check_video_path(f"video.{fmt}")
  if xt_slice is not None:
    if pathlib.Path(xt_slice).suffix.lower() != ".png":
      raise UserError(f"--xt-slice {xt_slice}: the X-T slice is written as .png")
    atomic.check_output_file(xt_slice, "--xt-slice")
  if sheet is not None:
    sheet_io.check_sheet_path(sheet)
    atomic.check_output_file(sheet, "--sheet")


def save_outputs(videos: np.ndarray, prompts: Sequence[str], seed: int, out=None,
                 out_dir=None, extra_formats=(), xt_slice=None, sheet=None) -> list:
  """Writes the videos as requested (see check_outputs); returns the paths written.

  --out-dir gets NNN_<prompt>.npy per video (plus the extra formats) and manifest.jsonl,
  one {"prompt", "seed", "path"} line per video with the .npy path relative to the
  directory; video i was made with seed + i. Each file is written atomically and the
  manifest last, so it only ever lists complete videos.
  """
  written = []
  if out is not None:
    written.append(video_io.write_video(out, videos[0]))
  else:
    out_dir = pathlib.Path(out_dir)
    lines = []
    for i, (prompt, video) in enumerate(zip(prompts, videos)):
      name = output_name(i, prompt)
      for suffix in (".npy", *(f".{fmt}" for fmt in extra_formats)):
        written.append(video_io.write_video(out_dir / f"{name}{suffix}", video))
      lines.append(json.dumps({"prompt": prompt, "seed": seed + i, "path": f"{name}.npy"}))
    manifest = out_dir / "manifest.jsonl"
    atomic.write_text(manifest, "".join(line + "\n" for line in lines))
    written.append(manifest)
  if xt_slice is not None:
    written.append(video_io.write_png(xt_slice, video_io.xt_slices(videos),
                                      scale=XT_SLICE_SCALE))
  if sheet is not None:
    written.append(sheet_io.write_sheet(list(zip(prompts, videos)), sheet,
                                             SHEET_FRAMES))
  return written
