"""Still images and masks given to the conditional commands (animate, inpaint,
cinemagraph).

Images: .png or .jpg (any mode, converted to RGB) or .npy uint8 [H, W, 3], read as uint8
[H, W, 3]. Masks: a .png (one mask for every frame; black 0 and white 255 only, after
conversion to greyscale) or a .npy [T, H, W] of 0 and 1 (bool or numbers), read as bool
[H, W] or [T, H, W], True where the file is white or 1. What white means (the pixels to
fill, or the pixels to keep) is the command's convention; the files only hold 0 and 1.
"""

import pathlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from lumiere_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".npy")
MASK_SUFFIXES = (".png", ".npy")


def _existing(path, suffixes, what: str) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.suffix.lower() not in suffixes:
    raise UserError(f"{what} {path}: unsupported format {path.suffix!r}; use one of "
                    f"{', '.join(suffixes)}")
  if not path.is_file():
    raise UserError(f"{what} file not found: {path}")
  return path


def _load_npy(path: pathlib.Path, what: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except ValueError as e:
    raise UserError(f"{what} {path}: not a readable .npy array ({e})") from e


def _load_picture(path: pathlib.Path, what: str, mode: str) -> np.ndarray:
  try:
    with Image.open(path) as picture:
      return np.asarray(picture.convert(mode))
  except (UnidentifiedImageError, OSError) as e:
    raise UserError(f"{what} {path}: not a readable picture ({type(e).__name__})") from e


def read_image(path) -> np.ndarray:
  """uint8 [H, W, 3] from a .png / .jpg (converted to RGB) or a .npy uint8 [H, W, 3]."""
  path = _existing(path, IMAGE_SUFFIXES, "image")
  if path.suffix.lower() != ".npy":
    return _load_picture(path, "image", "RGB")
  image = _load_npy(path, "image")
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise UserError(f"image {path} must be uint8 [H, W, 3], got {image.dtype} "
                    f"{list(image.shape)}")
  return image


def read_mask(path) -> np.ndarray:
  """bool [H, W] from a black-and-white .png, or bool [T, H, W] from a .npy of 0 and 1;
  True where the file is white (255) or 1."""
  path = _existing(path, MASK_SUFFIXES, "mask")
  if path.suffix.lower() == ".png":
    grey = _load_picture(path, "mask", "L")
    levels = np.unique(grey)
    if not set(levels.tolist()) <= {0, 255}:
      raise UserError(f"mask {path} has grey levels other than black (0) and white (255) "
                      f"({len(levels)} levels); save a black-and-white mask")
    return grey == 255
  mask = _load_npy(path, "mask")
  if mask.ndim != 3:
    raise UserError(f"mask {path} must be a .npy [T, H, W] (frames, height, width), got "
                    f"shape {list(mask.shape)}")
  if mask.dtype != bool and (mask.dtype.kind not in "iuf" or
                             not np.isin(mask, (0, 1)).all()):
    raise UserError(f"mask {path} must hold only 0 and 1 (or bool), got {mask.dtype} "
                    "values outside {0, 1}")
  return mask.astype(bool)
