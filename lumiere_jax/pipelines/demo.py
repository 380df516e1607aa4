"""`lumiere demo`: a handful of shapes videos from the shipped model, written as mp4, gif
and an X-T slice each, plus one contact sheet: what the project does, in about a minute.

The videos are sampled with the model's own defaults (steps, guidance, negative prompt:
its config's `diffusion` section, the settings its evaluation used), as one batch.

Then one example of each application into apps/, with apps_sheet.png (each clip above
its input): where the install ships the conditional model
(applications.DEFAULT_CONDITIONAL_MODEL), APP_EXAMPLES (animate, inpaint, cinemagraph;
their inputs are rendered shapes clips, built as `lumiere eval apps` builds them),
sampled as one batch; with the text-to-video model, an SDEdit of a rendered clip of
EDIT_SOURCE to EDIT_PROMPT and, where the style model ships (applications.DEFAULT_STYLE_MODEL),
STYLE_PROMPT stylized at applications.DEFAULT_STYLE_ALPHA. Where the SSR model ships
(upsample.DEFAULT_SSR_MODEL), the cascade: the first demo video upsampled by it in temporal
windows, into cascade/ with its X-T slice.
"""

import os
import pathlib
from typing import Optional, Sequence

import numpy as np

from lumiere_jax import runtime
from lumiere_jax.data import shapes
from lumiere_jax import weights
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import apps_eval
from lumiere_jax.io import sheet as sheet_io
from lumiere_jax.io import video as video_io
from lumiere_jax.pipelines import applications, generate, upsample, windowed

# Four kinds of motion, one object each; the seed of each is DEMO_SEED + its index.
DEMO_PROMPTS = (
    "a red circle moving right",
    "a blue square moving left",
    "a magenta square growing",
    "a white circle bouncing around",  # a held-out combination
)  # four, not more: the demo's time on 2 cores (README)
DEMO_SEED = 0
XT_SCALE = 8  # 16 frames x 32 pixels -> a visible 128 x 256 picture
SHEET_FRAMES = 8
# (application, prompt, the rendered clip its input comes from: colour, shape, motion)
APP_EXAMPLES = (
    ("animate", "a green square moving right", ("green", "square", "moving right")),
    ("inpaint", "a cyan circle moving left", ("white", "square", "moving left")),
    ("cinemagraph", "a yellow circle growing", ("yellow", "circle", "growing")),
)
EDIT_SOURCE = ("red", "circle", "moving right")  # rendered, then recoloured by SDEdit
EDIT_PROMPT = "a blue circle moving right"
EDIT_STRENGTH = 0.8
STYLE_PROMPT = "a green square moving up"


def check_out_dir(out_dir) -> pathlib.Path:
  """The output folder must be creatable and writable; checked before any work."""
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise UserError(f"--out {out_dir} exists and is not a directory")
  parent = next((p for p in (out_dir, *out_dir.parents) if p.exists()), pathlib.Path("."))
  probe = parent / f".lumiere-write-test-{os.getpid()}"
  try:
    probe.touch()
    probe.unlink()
  except OSError as e:
    raise UserError(f"--out {out_dir}: cannot write there ({e.strerror})") from None
  return out_dir


def object_row(video: np.ndarray) -> int:
  """The pixel row that crosses the most object pixels over the clip: the X-T slice
  through it shows the object's horizontal motion (the middle row may miss it)."""
  bright = video.max(axis=-1) > 60  # the background is black
  return int(np.argmax(bright.sum(axis=(0, 2))))


def write_demo(videos: np.ndarray, prompts: Sequence[str], out_dir,
               sheet: Optional[str] = "sheet.png") -> list:
  """Per video: NNN_<prompt>.mp4, .gif and .xt.png; then `sheet`. Returns the paths."""
  out_dir = pathlib.Path(out_dir)
  written = []
  for i, (prompt, video) in enumerate(zip(prompts, videos)):
    name = generate.output_name(i, prompt)
    for suffix in (".mp4", ".gif"):
      written.append(video_io.write_video(out_dir / f"{name}{suffix}", video))
    xt = video_io.xt_slice(video, object_row(video))
    written.append(video_io.write_png(out_dir / f"{name}.xt.png", xt, scale=XT_SCALE))
  if sheet is not None:
    written.append(sheet_io.write_sheet(list(zip(prompts, videos)), out_dir / sheet,
                                        SHEET_FRAMES))
  return written


def app_requests(resolution: int, num_frames: int) -> tuple:
  """(prompts, Condition with one clip and known mask per example) of APP_EXAMPLES."""
  conditions = [apps_eval.request(app, shapes.render_clip(
      (DEMO_SEED, i), resolution, num_frames, two_object_fraction=0.0,
      required=triple).video) for i, (app, _, triple) in enumerate(APP_EXAMPLES)]
  return [p for _, p, _ in APP_EXAMPLES], applications.Condition(
      np.stack([c.clip for c in conditions]), np.stack([c.known for c in conditions]))


def conditional_examples(progress: bool) -> list:
  """[(label, video, input)] of APP_EXAMPLES (input: the known pixels); [] when the
  conditional model is not shipped."""
  name = applications.DEFAULT_CONDITIONAL_MODEL
  if name not in weights.manifest():
    return []
  config, params = weights.load_model(name=name)
  section = config.diffusion
  model = applications.ConditionalGenerator(
      config, params, diffusion_config.sampler_settings(section), progress=progress)
  frames, resolution = applications.clip_shape(config)[:2]
  prompts, condition = app_requests(resolution, frames)
  videos = model(prompts, condition, DEMO_SEED, section.guidance)
  return [(f"{app}: {prompt}", video, clip * known) for (app, prompt, _), video, clip, known
          in zip(APP_EXAMPLES, videos, condition.clip, condition.known)]


def text_to_video_examples(model: generate.TextToVideo, source: np.ndarray,
                           stylize: bool) -> list:
  """[(label, video, input or None)]: `source` edited to EDIT_PROMPT and, with `stylize`
  where the style model ships, STYLE_PROMPT stylized."""
  section = model.config.diffusion
  edited = model([EDIT_PROMPT], DEMO_SEED, section.guidance, init_video=source,
                 strength=EDIT_STRENGTH, negative_prompt=section.negative_prompt)[0]
  examples = [(f"edit: {EDIT_PROMPT}", edited, source)]
  name = applications.DEFAULT_STYLE_MODEL
  if stylize and name in weights.manifest():
    style_config, style_params = weights.load_model(name=name)
    applications.check_style_config(model.config, style_config)
    alpha = applications.DEFAULT_STYLE_ALPHA
    params = applications.interpolate_backbone(model.params, style_params["backbone"], alpha)
    styled = generate.TextToVideo(model.config, params, model.settings,
                                  progress=model.sampler.progress is not None, model=model.model,
                                  expert_switch=0.0)  # the style is in this backbone
    examples.append((f"stylize: {STYLE_PROMPT}", styled(
        [STYLE_PROMPT], DEMO_SEED, section.guidance,
        negative_prompt=section.negative_prompt)[0], None))
  return examples


def write_apps(examples: list, out_dir: pathlib.Path) -> list:
  """apps/ (write_demo) and apps_sheet.png: each clip above its input, if any."""
  with runtime.shielded():
    labels, videos = [e[0] for e in examples], [e[1] for e in examples]
    written = write_demo(videos, labels, out_dir / "apps", sheet=None)
    rows = [row for label, video, given in examples
            for row in ((label, video),) + (() if given is None else (("input", given),))]
    written.append(sheet_io.write_sheet(rows, out_dir / "apps_sheet.png", SHEET_FRAMES))
  return written


def run_cascade(video: np.ndarray, prompt: str, out_dir: pathlib.Path,
                progress: bool) -> list:
  """The base model's `video` upsampled by the shipped SSR model (module docstring); []
  where it is not shipped."""
  if upsample.DEFAULT_SSR_MODEL not in weights.manifest():
    return []
  config, params = weights.load_model(name=upsample.DEFAULT_SSR_MODEL)
  if config.data.low_resolution != video.shape[1]:
    return []  # a --model at another resolution than the SSR model's input
  high = upsample.upsample(config, params, video, settings=diffusion_config.sampler_settings(
      config.diffusion), windows=windowed.window_settings(config), seed=DEMO_SEED,
                           progress=progress)
  factor = config.data.resolution // config.data.low_resolution
  with runtime.shielded():
    return write_demo(high, [f"{prompt} x{factor}"], out_dir / "cascade", sheet=None)


def run_demo(out_dir, model_name: str = weights.DEFAULT_MODEL,
             prompts: Optional[Sequence[str]] = None, progress: bool = True) -> list:
  prompts = DEMO_PROMPTS if prompts is None else prompts
  out_dir = check_out_dir(out_dir)
  config, params = weights.load_model(name=model_name)
  section = config.diffusion
  model = generate.TextToVideo(config, params, diffusion_config.sampler_settings(section),
                               progress=progress)
  videos = model(list(prompts), DEMO_SEED, section.guidance,
                 negative_prompt=section.negative_prompt)
  with runtime.shielded():  # once writing starts, Ctrl-C lets it finish
    written = write_demo(videos, prompts, out_dir)
  runtime.check_interrupt(f"interrupted; the text-to-video demo files were complete and "
                          f"are written to {out_dir}")
  # The style model was fine-tuned from the shipped model's backbone: it stylizes that one.
  source = shapes.render_clip((DEMO_SEED, len(APP_EXAMPLES)), config.data.resolution,
                             model.video_shape[0], two_object_fraction=0.0,
                             required=EDIT_SOURCE).video
  examples = conditional_examples(progress) + text_to_video_examples(
      model, source, stylize=model_name == weights.DEFAULT_MODEL)
  runtime.check_interrupt(f"interrupted; the text-to-video demo files were complete and "
                          f"are written to {out_dir}; the applications' were not")
  written += write_apps(examples, out_dir)
  runtime.check_interrupt(f"interrupted; the demo files were complete and are written to "
                          f"{out_dir}; the cascade's were not")
  return written + run_cascade(videos[0], prompts[0], out_dir, progress)
