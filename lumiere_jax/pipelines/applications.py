"""Lumiere's applications: one conditional model, several presets; stylized generation.

Conditional generation (LUMIERE.md). The conditional model takes <J, C, M>: the noisy
clip J, the conditioning clip C = clip * M and the mask M (1 on known pixels), 7
channels (models/conditioning.py). Each application is a preset that builds (C, M) as a
`Condition` (a clip and its known pixels); `ConditionalGenerator` samples any of them:
  animate      image-to-video: the image is frame 0 (and optionally another the last)
  inpaint      a clip with a region to fill, the same at every frame or per frame
  outpaint     a clip whose border (or a canvas around a smaller clip) is filled
  cinemagraph  a still image repeated; only a region moves, the rest stays the image
  keyframes    frame interpolation: every k-th frame of a clip known
At the command line a mask marks the pixels to FILL (white or 1), as inpainting tools do;
the presets take that `fill` and turn it into M = 1 - fill.

Known pixels. With `known_pixels='replace'` (diffusion.known_pixels) the model's
estimate of the clean clip takes the known pixels at every step (so the noisy clip's
known region follows C's own noising path), and the output takes them exactly. A
`dilation` of d pixels grows the region to fill by d for that replacement (against
seams: the model blends a band of d pixels around the region, whose pixels are then the
model's). With 'model' the known pixels are only the model's input and it decides
(they stay near C only as far as the model learnt to keep them).

Stylized generation: the base model's backbone interpolated with a style-fine-tuned one,
W = alpha W_style + (1 - alpha) W_orig; the temporal layers and the text encoder stay the
base model's (`interpolate_backbone`). Video-to-video editing is SDEdit through
pipelines/generate.py.
"""

import dataclasses
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax import runtime
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.diffusion import guidance, predictions, samplers
from lumiere_jax.diffusion.samplers import SamplerSettings
from lumiere_jax.diffusion.schedules import schedule_from_config
from lumiere_jax.errors import UserError
from lumiere_jax.io import video as video_io
from lumiere_jax.models import build, conditioning
from lumiere_jax.pipelines import generate as generate_pipeline
from lumiere_jax.pipelines import stepped
from lumiere_jax.train import checkpoint as checkpoint_lib

DEFAULT_CONDITIONAL_MODEL = "shapes_cond"
DEFAULT_STYLE_MODEL = "shapes_style_outlined"
# The alpha docs/applications.md documents (outlines show from about 0.6; 1 distorts the
# shapes and their motion: the eval's figures there).
DEFAULT_STYLE_ALPHA = 0.7
EXTRA = "extra"  # the conditioning channels in the sampler's cond (guidance pairs them)
# Config fields that must agree for a style model's backbone to replace the base's.
BACKBONE_FIELDS = ("model.", "text.")
NOT_BACKBONE_FIELDS = ("model.kind", "model.temporal.", "model.dtype", "model.remat")


@dataclasses.dataclass(frozen=True)
class Condition:
  """What a conditional model is given: `clip` uint8 [T, H, W, 3] (only its known pixels
  matter) and `known` uint8 [T, H, W, 1], 1 where the pixel is known."""

  clip: np.ndarray
  known: np.ndarray

  @property
  def fill(self) -> np.ndarray:
    """bool [T, H, W]: the pixels the model generates."""
    return self.known[..., 0] == 0


# ---------------------------------------------------------------------------------------
# Checks (each a UserError naming the problem), made before any model is built


def check_conditional_config(config, command: str = "conditional generation") -> None:
  """A 7-channel <J, C, M> model (the `cond` stage)."""
  if conditioning.kind(config.model.in_channels) != conditioning.MASKED:
    raise UserError(f"{command} needs a conditional <J, C, M> model (model.in_channels=7, "
                    f"the shapes_tiny:cond stage), got model.in_channels="
                    f"{config.model.in_channels} (stage {config.stage!r})")


def clip_shape(config) -> tuple:
  """[T, H, W, 3] of the model's clips."""
  return build.Model(config).clip_shape


def check_image(config, image: np.ndarray, name: str = "the image") -> None:
  _, height, width, _ = clip_shape(config)
  if image.shape[:2] != (height, width):
    raise UserError(f"{name} is {image.shape[1]}x{image.shape[0]} pixels; this model makes "
                    f"{width}x{height} frames (images are not resized: resize it first)")


def check_clip(config, video: np.ndarray, name: str = "the input video") -> None:
  frames, height, width, _ = clip_shape(config)
  if video.shape[:3] != (frames, height, width):
    raise UserError(f"{name} is {_describe(video.shape[:3])} (frames x height x width); "
                    f"this model makes {_describe((frames, height, width))} clips (videos "
                    "are not resized or cut: prepare it first)")


def check_fill_mask(mask: np.ndarray, shape, name: str = "the mask") -> np.ndarray:
  """bool [H, W] (every frame) or [T, H, W] -> bool [T, H, W] for clips of `shape`
  [T, H, W, ...]."""
  frames, height, width = shape[:3]
  if mask.ndim == 2 and mask.shape == (height, width):
    return np.broadcast_to(mask, (frames, height, width))
  if mask.ndim == 3 and mask.shape == (frames, height, width):
    return mask
  wanted = f"{width}x{height} pixels (or [T, H, W] = {_describe((frames, height, width))})"
  got = (f"{mask.shape[1]}x{mask.shape[0]} pixels" if mask.ndim == 2 else
         f"[T, H, W] = {_describe(mask.shape)}")
  raise UserError(f"{name} is {got}; this model's clips need {wanted}")


def parse_region(text: str) -> tuple:
  """'x0,y0,x1,y1' -> (x0, y0, x1, y1) integers (pixels; x1 and y1 exclusive)."""
  parts = text.split(",")
  try:
    values = tuple(int(p) for p in parts)
  except ValueError:
    values = ()
  if len(values) != 4:
    raise UserError(f"--region {text!r} is not x0,y0,x1,y1 (four integers, pixels)")
  return values


def check_region(region: tuple, height: int, width: int) -> None:
  x0, y0, x1, y1 = region
  if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
    raise UserError(f"region {x0},{y0},{x1},{y1} is not inside the {width}x{height} frame "
                    f"(need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height})")


def check_outpaint(pixels: int, resolution: int) -> None:
  if not 1 <= pixels <= (resolution - 1) // 2:
    raise UserError(f"--outpaint {pixels}: the border must be 1 to {(resolution - 1) // 2} "
                    f"pixels for {resolution}x{resolution} frames")


def check_alpha(alpha: float) -> None:
  if not 0.0 <= alpha <= 1.0:  # also refuses nan
    raise UserError(f"alpha must be in [0, 1] (0: the base model, 1: the style model), "
                    f"got {alpha}")


def check_condition(config, condition: Condition, count: int = 1) -> None:
  """A clip [T, H, W, 3] and known pixels [T, H, W, 1] for every prompt, or either one
  per prompt ([count, T, H, W, ...])."""
  for name, array in (("conditioning clips", condition.clip),
                      ("known-pixel masks", condition.known)):
    if array.ndim == 5 and len(array) != count:
      raise UserError(f"{len(array)} {name} for {count} prompts")
  clip = condition.clip[0] if condition.clip.ndim == 5 else condition.clip
  known = condition.known[0] if condition.known.ndim == 5 else condition.known
  check_clip(config, clip, "the conditioning clip")
  if known.shape != clip.shape[:3] + (1,):
    raise UserError(f"the known-pixel mask is {list(known.shape)}, the clip "
                    f"{list(clip.shape)}; expected [T, H, W, 1]")


def _describe(shape) -> str:
  return "x".join(map(str, shape))


# ---------------------------------------------------------------------------------------
# Presets: (C, M) for each application. Pure numpy; uint8 clips, M = 1 on known pixels.


def _known(fill: np.ndarray) -> np.ndarray:
  return (~np.asarray(fill, bool))[..., None].astype(np.uint8)


def animate_condition(image: np.ndarray, num_frames: int,
                      last_image: Optional[np.ndarray] = None) -> Condition:
  """Image-to-video: `image` is frame 0 (and `last_image`, if given, frame T - 1)."""
  clip = np.zeros((num_frames,) + image.shape, np.uint8)
  fill = np.ones(clip.shape[:3], bool)
  clip[0], fill[0] = image, False
  if last_image is not None:
    clip[-1], fill[-1] = last_image, False
  return Condition(clip, _known(fill))


def inpaint_condition(video: np.ndarray, fill: np.ndarray) -> Condition:
  """Fill the pixels where `fill` (bool [T, H, W]) is True; keep the others."""
  fill = np.broadcast_to(fill, video.shape[:3])
  return Condition(np.where(fill[..., None], 0, video).astype(np.uint8), _known(fill))


def border_fill(shape, pixels: int) -> np.ndarray:
  """bool [T, H, W]: a border `pixels` wide on every side."""
  fill = np.ones(shape[:3], bool)
  fill[:, pixels:shape[1] - pixels, pixels:shape[2] - pixels] = False
  return fill


def outpaint_condition(video: np.ndarray, pixels: int, resolution: int) -> Condition:
  """Fill a border `pixels` wide. A clip of the model's size keeps its centre; a clip
  2 * pixels smaller is placed in the middle of a canvas of the model's size."""
  frames, height, width = video.shape[:3]
  if (height, width) == (resolution - 2 * pixels,) * 2:
    canvas = np.zeros((frames, resolution, resolution, 3), np.uint8)
    canvas[:, pixels:pixels + height, pixels:pixels + width] = video
    video = canvas
  elif (height, width) != (resolution, resolution):
    raise UserError(f"outpainting a {width}x{height} video by {pixels} pixels: give it at "
                    f"{resolution}x{resolution} (its border is replaced) or at "
                    f"{resolution - 2 * pixels}x{resolution - 2 * pixels} (it is framed)")
  return inpaint_condition(video, border_fill(video.shape, pixels))


def region_fill(region: tuple, height: int, width: int) -> np.ndarray:
  """bool [H, W]: True inside the box (x0, y0, x1, y1), x1 and y1 exclusive."""
  x0, y0, x1, y1 = region
  fill = np.zeros((height, width), bool)
  fill[y0:y1, x0:x1] = True
  return fill


def cinemagraph_condition(image: np.ndarray, num_frames: int, moving: np.ndarray
                          ) -> Condition:
  """The still `image` at every frame; after frame 0 the pixels where `moving` (bool
  [H, W]) is True are generated: only that region moves."""
  clip = np.broadcast_to(image, (num_frames,) + image.shape).copy()
  fill = np.broadcast_to(moving, clip.shape[:3]).copy()
  fill[0] = False
  return inpaint_condition(clip, fill)


def keyframes_condition(video: np.ndarray, every: int) -> Condition:
  """Frame interpolation: frames 0, k, 2k, ... of `video` known, the others generated."""
  if every < 1:
    raise UserError(f"keyframes every {every} frames: give a step >= 1")
  fill = np.ones(video.shape[:3], bool)
  fill[::every] = False
  return inpaint_condition(video, fill)


# ---------------------------------------------------------------------------------------
# Known pixels


def grow(fill: np.ndarray, pixels: int) -> np.ndarray:
  """bool [..., H, W] grown by `pixels` in every direction within each frame (a square
  structuring element: a pixel joins when one within `pixels` rows and columns is in)."""
  grown = np.asarray(fill, bool)
  h, w = grown.shape[-2:]
  for _ in range(pixels):
    padded = np.pad(grown, ((0, 0),) * (grown.ndim - 2) + ((1, 1), (1, 1)))
    grown = np.logical_or.reduce([padded[..., dy:dy + h, dx:dx + w]
                                  for dy in range(3) for dx in range(3)])
  return grown


def replaced_pixels(condition: Condition, dilation: int) -> np.ndarray:
  """uint8 [..., T, H, W, 1]: the known pixels that `replace` puts back (the known
  region less a band of `dilation` pixels around the region to fill)."""
  return _known(grow(condition.fill, dilation))


def keep_known(denoiser, schedule, prediction: str, clip, replace):
  """A denoiser whose estimate of the clean clip takes `clip` where `replace` is 1:
  the prediction is turned into (x0, eps) at x, x0 is replaced there, and the result is
  turned back into the same kind of prediction. Any sampler then moves the known
  region along the clip's own noising path."""

  def fn(x, t, cond):
    out = denoiser(x, t, cond)
    alpha, sigma = schedule.alpha_sigma(t)
    expand = lambda a: a.reshape(a.shape + (1,) * (x.ndim - 1)).astype(x.dtype)
    alpha, sigma = expand(alpha), expand(sigma)
    x0, _ = predictions.to_x0_eps(out.astype(x.dtype), x, alpha, sigma, prediction)
    x0 = jnp.where(replace > 0, clip, x0)
    eps = predictions.eps_from_x0(x, x0, alpha, sigma)
    return predictions.target(x0, eps, alpha, sigma, prediction)

  return fn


class ConditionalGenerator:
  """The conditional model with fixed sampler settings and known-pixel handling; call
  it with prompts and a Condition (one for all prompts, or its clip and known pixels
  one per prompt) to get clips. One set of sampling programs (pipelines/stepped.py)
  per batch size."""

  def __init__(self, config, params: dict, settings: SamplerSettings,
               known_pixels: Optional[str] = None, dilation: Optional[int] = None,
               progress: bool = False):
    check_conditional_config(config)
    section = config.diffusion
    self.known_pixels = section.known_pixels if known_pixels is None else known_pixels
    self.dilation = section.known_dilation if dilation is None else dilation
    diffusion_config.check_known_pixels(self.known_pixels, self.dilation)
    self.config = config
    self.model = build.Model(config)
    self.params = params
    self.settings = settings
    self.schedule = schedule_from_config(section, config.data.resolution)
    self.sampler = stepped.Stepped(self._prepare, self._problem, self._finish,
                                   self.schedule, settings,
                                   "generating" if progress else None,
                                   runtime.interrupt_requested)

  def __call__(self, prompts: Sequence[str], condition: Condition, seed: int,
               guidance_scale: float, negative_prompt: str = "") -> np.ndarray:
    """uint8 [N, T, H, W, 3]: clip i from prompt i and seed + i, all with `condition`."""
    prompts = generate_pipeline.check_prompts(prompts)
    generate_pipeline.check_prompt_lengths(self.model.tokenizer, prompts)
    generate_pipeline.check_seed(seed, len(prompts))
    diffusion_config.check_guidance(guidance_scale)
    check_condition(self.config, condition, len(prompts))
    generate_pipeline.warn_unknown_words(self.model.tokenizer, [*prompts, negative_prompt])
    batch = lambda a: np.broadcast_to(a, (len(prompts),) + a.shape[-4:])  # one per prompt
    clip = batch(video_io.from_uint8(condition.clip))
    known = batch(condition.known.astype(np.float32))
    replace = batch(replaced_pixels(condition, self.dilation).astype(np.float32))
    seeds = np.arange(seed, seed + len(prompts), dtype=np.int32)
    runtime.check_interrupt("interrupted before sampling; nothing was written")
    videos = self.sampler(self.params, self.model.tokenize(prompts),
                          self.model.tokenize([negative_prompt]), seeds,
                          np.float32(guidance_scale), clip, known, replace)
    runtime.check_interrupt("interrupted while sampling; nothing was written")
    return np.asarray(videos)

  # The sampling program (stepped.Stepped): conditioning channels, text and noise; the
  # guided step with the known pixels handled as configured; uint8 conversion. args:
  # params, tokens, negative_tokens, seeds, guidance_scale, clip, known, replace.
  def _prepare(self, params, tokens, negative_tokens, seeds, guidance_scale, clip, known,
               replace):
    layout = self.model.to_model_layout
    clip = layout(clip)
    extra = conditioning.masked_channels(clip, layout(known))
    encode = lambda t: {**self.model.encode(params["text"], t), EXTRA: extra}
    keys = jax.vmap(jax.random.key)(seeds)
    noise = samplers.initial_noise(keys, clip.shape, self.settings.noise_correlation)
    return (encode(tokens), encode(negative_tokens)), noise

  def _problem(self, encodings, params, tokens, negative_tokens, seeds, guidance_scale, clip,
               known, replace) -> stepped.Problem:
    model, layout = self.model, self.model.to_model_layout
    cond, negative = encodings
    denoiser = lambda x, t, c: model.denoise(params, x, t, c, c[EXTRA])
    denoiser = guidance.classifier_free_guidance(denoiser, negative, guidance_scale)
    if self.known_pixels == "replace":
      denoiser = keep_known(denoiser, self.schedule, self.settings.prediction, layout(clip),
                            layout(replace))
    return stepped.Problem(denoiser, cond, jax.vmap(jax.random.key)(seeds))

  def _finish(self, encodings, x, params, tokens, negative_tokens, seeds, guidance_scale,
              clip, known, replace):
    layout = self.model.to_model_layout
    if self.known_pixels == "replace":
      x = jnp.where(layout(replace) > 0, layout(clip), x)
    return video_io.to_uint8(x.reshape((seeds.shape[0],) + self.model.clip_shape))


# ---------------------------------------------------------------------------------------
# Stylized generation


def check_style_config(base_config, style_config) -> None:
  """The style model's backbone must have the base backbone's architecture."""
  for config, what in ((base_config, "the base model"), (style_config, "the style model")):
    if conditioning.kind(config.model.in_channels) != conditioning.NONE:
      raise UserError(f"stylize needs text-to-video / text-to-image models (model."
                      f"in_channels=3); {what} has model.in_channels="
                      f"{config.model.in_channels} (stage {config.stage!r})")
  differing = checkpoint_lib.differing_fields(style_config.to_dict(), base_config.to_dict(),
                                              BACKBONE_FIELDS, NOT_BACKBONE_FIELDS)
  if differing:
    name, there, here = differing[0]
    raise UserError(f"the style model's backbone does not fit the base model: {name}="
                    f"{there!r} in the style model, {here!r} in the base model")


def interpolate_backbone(params: dict, style_backbone: dict, alpha: float) -> dict:
  """The base model's full tree with backbone W = alpha W_style + (1 - alpha) W_orig
  (float32 alpha; 0 gives the base backbone, 1 the style backbone, exactly); the temporal
  layers and the text encoder are the base model's, unchanged (the same arrays)."""
  check_alpha(alpha)
  a = np.float32(alpha)
  mix = jax.jit(lambda style, base: jax.tree_util.tree_map(
      lambda s, o: (a * s + (np.float32(1) - a) * o).astype(o.dtype), style, base))
  return {**params, "backbone": mix(style_backbone, params["backbone"])}
