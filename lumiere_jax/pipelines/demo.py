"""`lumiere demo`: a handful of shapes videos from the shipped model, written as mp4, gif
and an X-T slice each, plus one contact sheet: what the project does, in about a minute.

The videos are sampled with the model's own defaults (steps, guidance, negative prompt:
its config's `diffusion` section, the settings its evaluation used), as one batch.
"""

import os
import pathlib
from typing import Optional, Sequence

import numpy as np

from lumiere_jax import runtime
from lumiere_jax import weights
from lumiere_jax.diffusion import config as diffusion_config
from lumiere_jax.errors import UserError
from lumiere_jax.io import sheet as sheet_io
from lumiere_jax.io import video as video_io
from lumiere_jax.pipelines import generate

# Several motions, single and two objects; the seed of each is DEMO_SEED + its index.
DEMO_PROMPTS = (
    "a red circle moving right",
    "a blue square moving left",
    "a yellow triangle moving up",
    "a green circle moving down",
    "a magenta square growing",
    "a white circle bouncing around",
)
DEMO_SEED = 0
XT_SCALE = 8  # 16 frames x 32 pixels -> a visible 128 x 256 picture
SHEET_FRAMES = 8


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


def write_demo(videos: np.ndarray, prompts: Sequence[str], out_dir) -> list:
  """Per video: NNN_<prompt>.mp4, .gif and .xt.png; then sheet.png. Returns the paths."""
  out_dir = pathlib.Path(out_dir)
  written = []
  for i, (prompt, video) in enumerate(zip(prompts, videos)):
    name = generate.output_name(i, prompt)
    for suffix in (".mp4", ".gif"):
      written.append(video_io.write_video(out_dir / f"{name}{suffix}", video))
    xt = video_io.xt_slice(video, object_row(video))
    written.append(video_io.write_png(out_dir / f"{name}.xt.png", xt, scale=XT_SCALE))
  written.append(sheet_io.write_sheet(list(zip(prompts, videos)), out_dir / "sheet.png",
                                      SHEET_FRAMES))
  return written


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
    return write_demo(videos, prompts, out_dir)
