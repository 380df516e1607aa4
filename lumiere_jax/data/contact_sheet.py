"""A contact sheet of a built dataset: one row per clip, its caption above evenly spaced
frames, enlarged (nearest neighbour) so 32-pixel clips are easy to look at."""

import pathlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lumiere_jax.data.pipeline import open_split
from lumiere_jax.errors import UserError

MIN_FRAME_SIZE = 96
GAP = 4
CAPTION_HEIGHT = 18
BACKGROUND = (40, 40, 40)
TEXT_COLOUR = (255, 255, 255)


def write_contact_sheet(dataset: str | pathlib.Path, out: str | pathlib.Path,
                        num_clips: int = 8, frames_per_clip: int = 8,
                        split: str = "train") -> pathlib.Path:
  """Writes the first num_clips clips of the split as a PNG (or JPEG) picture at `out`."""
  out = pathlib.Path(out)
  if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
    raise UserError(f"--out {out} must end in .png or .jpg")
  if num_clips < 1 or frames_per_clip < 1:
    raise UserError("the number of clips and of frames per clip must be at least 1")
  source = open_split(dataset, split)
  rows = [_row(source[i], frames_per_clip) for i in range(min(num_clips, len(source)))]
  sheet = Image.new("RGB", (max(r.width for r in rows) + 2 * GAP,
                            sum(r.height for r in rows) + GAP * (len(rows) + 1)), BACKGROUND)
  top = GAP
  for row in rows:
    sheet.paste(row, (GAP, top))
    top += row.height + GAP
  out.parent.mkdir(parents=True, exist_ok=True)
  sheet.save(out)
  return out


def _row(example: dict, frames_per_clip: int) -> Image.Image:
  video = example["video"]
  indices = np.unique(np.linspace(0, len(video) - 1, frames_per_clip).round().astype(int))
  scale = max(1, -(-MIN_FRAME_SIZE // video.shape[1]))
  frames = [Image.fromarray(video[i]).resize((video.shape[2] * scale, video.shape[1] * scale),
                                             Image.Resampling.NEAREST) for i in indices]
  caption = example["caption"]
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
