"""Videos as uint8 [T, H, W, 3]: conversion from model space, .npy/.gif/.mp4 files, X-T
slices.

Files go through the ffmpeg binary that ships in the imageio-ffmpeg wheel (no system
ffmpeg needed). mediapy's reader passes `-vsync`, which that ffmpeg (9.x) no longer
accepts, so reading and writing both use imageio_ffmpeg directly. GIFs get one palette
computed from the whole clip (ffmpeg palettegen) and keep every frame; Pillow's GIF
writer would merge identical consecutive frames and change T.
"""

import pathlib
import warnings

import imageio_ffmpeg
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lumiere_jax.errors import UserError
from lumiere_jax.io.atomic import atomic_path

FPS = 16  # Lumiere's frame rate
VIDEO_SUFFIXES = (".npy", ".gif", ".mp4")
_GIF_FILTER = "split[a][b];[a]palettegen=stats_mode=full[p];[b][p]paletteuse=dither=none"


def to_uint8(video):
  """Model space [-1, 1] float -> uint8 [0, 255] (jax; usable inside jit)."""
  return jnp.round((jnp.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def from_uint8(video) -> np.ndarray:
  """uint8 [0, 255] -> float32 model space [-1, 1]."""
  return np.asarray(video, np.float32) / 127.5 - 1.0


def check_video_path(path) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.suffix.lower() not in VIDEO_SUFFIXES:
    raise UserError(f"{path}: unsupported video format {path.suffix!r}; use one of "
                    f"{', '.join(VIDEO_SUFFIXES)}")
  return path


def check_video_array(video, name: str = "video") -> np.ndarray:
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
    raise UserError(f"{name} must be uint8 [T, H, W, 3], got {video.dtype} "
                    f"{list(video.shape)}")
  return video


def write_video(path, video, fps: int = FPS) -> pathlib.Path:
  """Writes uint8 [T, H, W, 3] as .npy (exact), .gif or .mp4 (H.264, yuv420p, near
  lossless: crf 12), atomically."""
  path = check_video_path(path)
  video = check_video_array(video)
  with atomic_path(path) as tmp:
    if path.suffix.lower() == ".npy":
      with open(tmp, "wb") as f:
        np.save(f, video)
    elif path.suffix.lower() == ".gif":
      _ffmpeg_write(tmp, video, fps, codec="gif", pix_fmt="pal8",
                    params=["-filter_complex", _GIF_FILTER])
    else:
      _ffmpeg_write(tmp, video, fps, codec="libx264", pix_fmt="yuv420p",
                    params=["-crf", "12"])
  return path


def _ignore_fork_warning():
  """JAX warns on every os.fork, because a forked copy of a multithreaded process can
  deadlock. subprocess forks and immediately execs ffmpeg (no Python runs in the child),
  so the warning does not apply to these calls. Use inside warnings.catch_warnings()."""
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                          category=RuntimeWarning)


def _ffmpeg_write(path, video, fps, codec, pix_fmt, params):
  height, width = video.shape[1:3]
  with warnings.catch_warnings():
    _ignore_fork_warning()
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), fps=fps, codec=codec, pix_fmt_in="rgb24",
        pix_fmt_out=pix_fmt, quality=None, macro_block_size=1, output_params=params,
        ffmpeg_log_level="error")
    try:
      writer.send(None)
      for frame in video:
        writer.send(np.ascontiguousarray(frame))
    finally:
      writer.close()


def read_video(path) -> np.ndarray:
  """Reads a .npy, .gif or .mp4 video as uint8 [T, H, W, 3]."""
  path = check_video_path(path)
  if not path.is_file():
    raise UserError(f"video file not found: {path}")
  if path.suffix.lower() == ".npy":
    try:
      video = np.load(path, allow_pickle=False)
    except ValueError as e:
      raise UserError(f"{path}: not a readable .npy array ({e})") from e
    return check_video_array(video, str(path))
  try:
    with warnings.catch_warnings():
      _ignore_fork_warning()
      frames = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
      width, height = next(frames)["size"]
      video = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in frames]
  except (RuntimeError, OSError, ValueError, StopIteration) as e:
    raise UserError(f"{path}: could not decode video ({type(e).__name__})") from e
  return check_video_array(np.stack(video), str(path))


def xt_slice(video, row=None) -> np.ndarray:
  """The X-T slice [T, W, 3]: one row of pixels (default the middle one) over time.
  Smooth motion draws smooth streaks; temporal aliasing shows as jumps."""
  video = check_video_array(video)
  row = video.shape[1] // 2 if row is None else row
  return video[:, row]


def xt_slices(videos, gap: int = 1) -> np.ndarray:
  """The X-T slices of a batch [N, T, H, W, 3] side by side, with grey columns between."""
  slices = [xt_slice(v) for v in videos]
  separator = np.full((slices[0].shape[0], gap, 3), 128, np.uint8)
  parts = [p for s in slices for p in (separator, s)][1:]
  return np.concatenate(parts, axis=1)


def write_png(path, image, scale: int = 1) -> pathlib.Path:
  """Writes uint8 [H, W, 3] as PNG, each pixel enlarged to scale x scale (nearest), so a
  16 x 32 slice is visible."""
  path = pathlib.Path(path)
  if path.suffix.lower() != ".png":
    raise UserError(f"{path}: the X-T slice is written as .png")
  image = np.repeat(np.repeat(np.asarray(image, np.uint8), scale, 0), scale, 1)
  with atomic_path(path) as tmp:
    Image.fromarray(image).save(tmp, format="PNG")
  return path
