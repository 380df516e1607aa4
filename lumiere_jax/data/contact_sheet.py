"""A contact sheet of a built dataset (`lumiere data show`); the drawing is io/sheet.py."""

import pathlib

from lumiere_jax.data.pipeline import open_split
from lumiere_jax.errors import UserError
from lumiere_jax.io.atomic import check_output_file
from lumiere_jax.io.sheet import check_sheet_path, write_sheet


def write_contact_sheet(dataset: str | pathlib.Path, out: str | pathlib.Path,
                        num_clips: int = 8, frames_per_clip: int = 8,
                        split: str = "train") -> pathlib.Path:
  """Writes the first num_clips clips of the split as a PNG (or JPEG) picture at `out`."""
  check_sheet_path(out)
  check_output_file(out, "--out")
  if num_clips < 1 or frames_per_clip < 1:
    raise UserError("the number of clips and of frames per clip must be at least 1")
  source = open_split(dataset, split)
  clips = [(source[i]["caption"], source[i]["video"]) for i in range(min(num_clips, len(source)))]
  return write_sheet(clips, out, frames_per_clip)
