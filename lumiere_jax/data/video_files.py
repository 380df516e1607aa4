"""Users' own videos: finding clips and captions in a folder, and decoding them to clips.

A source folder holds video files (.mp4, .gif, .webm) and folders of PNG frames (one
folder per clip, frames in natural name order), at any depth. Captions come from a
jsonl file (`captions.jsonl` in the folder, or one given explicitly) with lines
`{"video": "<path relative to the folder>", "caption": "..."}`, or else from a sidecar
text file per clip: `a/b.mp4` -> `a/b.txt`, frame folder `a/clip/` -> `a/clip.txt`.

Decoding uses the ffmpeg binary that ships in the imageio-ffmpeg wheel: it resamples to
the requested fps, scales the shorter side to the resolution (bicubic, antialiased when
shrinking), centre-crops a square and stops after the clip's frames, so even long,
large videos cost only a short read. The clip is the first `num_frames` frames.

A video with fewer frames than the clip is skipped, not padded or looped: padding
would teach that motion stops, looping would teach a jump cut.
"""

import dataclasses
import json
import pathlib
import re
import subprocess

import imageio_ffmpeg
import numpy as np
from PIL import Image

from lumiere_jax.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".gif", ".webm")
FRAME_SUFFIX = ".png"
CAPTIONS_FILE = "captions.jsonl"
DECODE_TIMEOUT_S = 300


class SkippedClip(Exception):
  """A clip that cannot be used; the message says why, for the warning."""


@dataclasses.dataclass(frozen=True)
class SourceClip:
  name: str             # path relative to the source folder, '/'-separated
  path: pathlib.Path    # a video file or a folder of PNG frames
  caption: str


def find_clips(src: str | pathlib.Path, captions: str | pathlib.Path | None = None) -> list:
  """Every clip under `src` with its caption, sorted by name; UserError if there are
  none or if any lacks a caption (a setup mistake, reported before anything is built)."""
  src = pathlib.Path(src)
  if not src.is_dir():
    raise UserError(f"source folder {src} does not exist or is not a folder")
  paths = _clip_paths(src)
  if not paths:
    raise UserError(f"no videos in {src}: expected {', '.join(VIDEO_SUFFIXES)} files or "
                    f"sub-folders of {FRAME_SUFFIX} frames")
  names = [path.relative_to(src).as_posix() for path in paths]
  captions_file = pathlib.Path(captions) if captions else src / CAPTIONS_FILE
  if captions or captions_file.is_file():
    table = read_captions_jsonl(captions_file)
    where = f"{captions_file}"
  else:
    table = {name: _read_sidecar(path) for name, path in zip(names, paths)}
    where = "sidecar .txt files"
  missing = [name for name in names if table.get(name) is None]
  if missing:
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    raise UserError(f"{where} has no caption for {len(missing)} of {len(names)} videos "
                    f"({shown})")
  return [SourceClip(name, path, table[name]) for name, path in zip(names, paths)]


def _clip_paths(src: pathlib.Path) -> list:
  videos = [p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
  frame_folders = {p.parent for p in src.rglob(f"*{FRAME_SUFFIX}") if p.parent != src}
  return sorted(videos + list(frame_folders), key=lambda p: p.relative_to(src).as_posix())


def read_captions_jsonl(path: pathlib.Path) -> dict:
  """{relative video path: caption}; UserError naming the first bad line."""
  if not path.is_file():
    raise UserError(f"caption file {path} does not exist")
  table = {}
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} line {number} is not valid JSON ({e.msg})") from e
    if not (isinstance(entry, dict) and isinstance(entry.get("video"), str)
            and isinstance(entry.get("caption"), str)):
      raise UserError(f"{path} line {number} needs string fields 'video' and 'caption'")
    table[entry["video"]] = entry["caption"]
  return table


def _read_sidecar(clip_path: pathlib.Path) -> str | None:
  sidecar = clip_path.with_name(clip_path.name + ".txt") if clip_path.is_dir() \
      else clip_path.with_suffix(".txt")
  return sidecar.read_text(encoding="utf-8").strip() if sidecar.is_file() else None


def read_clip(path: pathlib.Path, resolution: int, num_frames: int,
              fps: float | None = None) -> np.ndarray:
  """uint8 [num_frames, resolution, resolution, 3]; SkippedClip if unusable."""
  if path.is_dir():
    frames = _read_png_frames(path, resolution, num_frames)
  else:
    frames = _read_video_file(path, resolution, num_frames, fps)
  if len(frames) < num_frames:
    rate = f" at {fps:g} fps" if fps and not path.is_dir() else ""
    raise SkippedClip(f"only {len(frames)} frames{rate}, shorter than the {num_frames}-frame "
                      f"clip")
  return frames


def _read_video_file(path, resolution, num_frames, fps) -> np.ndarray:
  filters = [f"fps={fps:g}"] if fps else []
  filters += [f"scale={resolution}:{resolution}:force_original_aspect_ratio=increase"
              f":flags=bicubic", f"crop={resolution}:{resolution}"]
  command = [imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path),
             "-an", "-sn", "-vf", ",".join(filters), "-frames:v", str(num_frames),
             "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
  try:
    result = subprocess.run(command, capture_output=True, timeout=DECODE_TIMEOUT_S,
                            check=False)
  except subprocess.TimeoutExpired as e:
    raise SkippedClip(f"decoding took longer than {DECODE_TIMEOUT_S} s") from e
  frame_bytes = resolution * resolution * 3
  count = len(result.stdout) // frame_bytes
  if result.returncode != 0 or count == 0:
    raise SkippedClip(f"unreadable ({_last_line(result.stderr) or 'no frames decoded'})")
  data = np.frombuffer(result.stdout[: count * frame_bytes], np.uint8)
  return data.reshape(count, resolution, resolution, 3)


def _last_line(stderr: bytes) -> str:
  lines = stderr.decode("utf-8", "replace").strip().splitlines()
  return lines[-1].strip() if lines else ""


def _read_png_frames(folder, resolution, num_frames) -> np.ndarray:
  """PNG folders carry no timing: frame k is the k-th file, whatever --fps says."""
  files = sorted(folder.glob(f"*{FRAME_SUFFIX}"), key=_natural_key)[:num_frames]
  try:
    return np.stack([_square_frame(file, resolution) for file in files])
  except (OSError, SyntaxError, ValueError) as e:  # what PIL raises for broken images
    raise SkippedClip(f"unreadable frame ({e})") from e


def _square_frame(file: pathlib.Path, resolution: int) -> np.ndarray:
  with Image.open(file) as image:
    image = image.convert("RGB")
    scale = resolution / min(image.size)
    size = tuple(max(resolution, round(side * scale)) for side in image.size)
    image = image.resize(size, Image.Resampling.BICUBIC)
  left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
  return np.asarray(image.crop((left, top, left + resolution, top + resolution)))


def _natural_key(path: pathlib.Path) -> list:
  """frame_2 before frame_10."""
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]
