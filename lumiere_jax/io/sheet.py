"""Contact sheets: one row per clip, its caption above evenly spaced frames, enlarged
(nearest neighbour) so 32-pixel clips are easy to look at. Used for datasets
(`lumiere data show`) and generated videos (`lumiere generate --sheet`)."""

import pathlib
from typing import Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lumiere_jax.errors import UserError
from lumiere_jax.io.atomic import atomic_path

MIN_FRAME_SIZE = 96
GAP = 4
CAPTION_HEIGHT = 18
BACKGROUND = (40, 40, 40)
TEXT_COLOUR = (255, 255, 255)


def check_sheet_path(out) -> None:
  if pathlib.Path(out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
    raise UserError(f"{out}: a contact sheet is written as .png or .jpg")


def write_sheet(clips: Sequence[Tuple[Union[str, bytes], np.ndarray]], out,
                frames_per_clip: int = 8) -> pathlib.Path:
  """One row per (caption, uint8 video [T, H, W, 3]); written atomically."""
  out = pathlib.Path(out)
  check_sheet_path(out)
  rows = [_row(caption, video, frames_per_clip) for caption, video in clips]
  sheet = Image.new("RGB", (max(r.width for r in rows) + 2 * GAP,
                            sum(r.height for r in rows) + GAP * (len(rows) + 1)), BACKGROUND)
  top = GAP
  for row in rows:
    sheet.paste(row, (GAP, top))
    top += row.height + GAP
  with atomic_path(out) as tmp:
    sheet.save(tmp, format="PNG" if out.suffix.lower() == ".png" else "JPEG")
  return out


def _row(caption, video: np.ndarray, frames_per_clip: int) -> Image.Image:
  indices = np.unique(np.linspace(0, len(video) - 1, frames_per_clip).round().astype(int))
  scale = max(1, -(-MIN_FRAME_SIZE // video.shape[1]))
  frames = [Image.fromarray(video[i]).resize((video.shape[2] * scale, video.shape[1] * scale),
                                             Image.Resampling.NEAREST) for i in indices]
  caption = caption.decode("utf-8") if isinstance(caption, bytes) else str(caption)
  font = ImageFont.load_default(size=12)
  text_width = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(caption, font=font))
  width = max(sum(f.width for f in frames) + GAP * (len(frames) - 1), text_width + 4)
  row = Image.new("RGB", (width, CAPTION_HEIGHT + frames[0].height), BACKGROUND)
  ImageDraw.Draw(row).text((2, 2), caption, fill=TEXT_COLOUR, font=font)
  left = 0
  for frame in frames:
    row.paste(frame, (left, CAPTION_HEIGHT))
    left += frame.width + GAP
  return row
