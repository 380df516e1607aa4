"""TFDS builders (array_record files, no TensorFlow needed) and the functions that run them.

Two datasets:
  shapes        the synthetic clips of `shapes.py`; splits `train` and, when some caption
                combinations are held out, `heldout` (clips that each contain one of them)
  video_folder  users' own videos (see `video_files.py`); split `train`

A build writes the normal TFDS layout, OUT/<name>/<version>/, which
`tfds.builder_from_directory` opens. Everything is first written under a hidden
OUT/.incomplete-* folder and renamed into place only when complete, so an interrupted
build never leaves a folder that looks like a dataset, and an existing dataset is never
overwritten.

Records keep generation order (no TFDS shuffling): record i of a split is the example with
`id` i, and the same options give byte-identical array_record files.

TFDS's writer holds a split in memory before writing it and past 1 GB spills to
TensorFlow files, which needs TensorFlow (not a dependency). `_build` lets it hold up to
`writer_memory_limit()` (half the machine's memory) instead, and `build_shapes` refuses,
before any work, a build whose largest split would not fit.
"""

import contextlib
import dataclasses
import logging
import os
import pathlib
import shutil
import tempfile
from typing import Callable, Iterable

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle
import tqdm

from lumiere_jax import runtime
from lumiere_jax.data import shapes
from lumiere_jax.data import video_files
from lumiere_jax.data.text_embeddings import TextEmbeddingTable
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic

VERSION = "1.0.0"
FILE_FORMAT = "array_record"
FOLDER_RESOLUTIONS = range(16, 1025, 16)
HELD_OUT_VIDEOS_PER_COMBINATION = 16
INTERRUPTED = "interrupted; nothing was written"

log = logging.getLogger(__name__)


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder that lives in this package rather than in a TFDS dataset folder.

  TFDS looks for checksum files next to a builder's code, and on Python >= 3.9 that lookup
  imports `importlib_resources`, which TFDS does not install; these builders download
  nothing, so they have no code path to look in.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  # TFDS announces "Downloading and preparing dataset ... Subsequent calls will reuse this
  # data" around every build, naming the hidden staging folder: nothing is downloaded
  # here, and the `lumiere data` command says what is built where.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


# ---------------------------------------------------------------------------------------
# Features


def _clip_features(num_frames: int, resolution: int, text_embeddings, **extra):
  """Fields every clip dataset has.

  Arrays are stored as raw bytes: array_record already compresses every record with zstd
  (TFDS writes one record per chunk), so files stay small and reading is a zstd decode
  plus a copy. TFDS's own ZLIB encoding decodes an 80x128x128 clip ~5x slower, and its
  default encoding stores each pixel as an int64 varint.
  """
  features = {
      "id": np.int64,
      "video": tfds.features.Tensor(shape=(num_frames, resolution, resolution, 3),
                                    dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
      "caption": tfds.features.Text(),
      **extra,
  }
  if text_embeddings is not None:
    length, width = text_embeddings.shape
    features["text_embedding"] = tfds.features.Tensor(
        shape=(length, width), dtype=text_embeddings.embeddings.dtype,
        encoding=tfds.features.Encoding.BYTES)
    features["text_mask"] = tfds.features.Tensor(shape=(length,), dtype=np.bool_)
  return tfds.features.FeaturesDict(features)


def _progress(items, desc: str, unit: str):
  """A progress bar on a terminal (none in logs and pipes)."""
  return tqdm.tqdm(items, desc=desc, unit=unit, disable=None, leave=False)


def _with_text(example: dict, text_embeddings) -> dict:
  if text_embeddings is not None:
    example["text_embedding"], example["text_mask"] = text_embeddings(example["caption"])
  return example


# ---------------------------------------------------------------------------------------
# Shapes


@dataclasses.dataclass(frozen=True)
class ShapesOptions:
  num_videos: int
  resolution: int = 32
  num_frames: int = 16
  seed: int = 0
  two_object_fraction: float = 0.5
  held_out: tuple = ()           # (colour, shape, motion) triples kept out of `train`
  num_held_out_videos: int = 0   # size of the `heldout` split
  style: str = "plain"           # how objects are drawn (shapes.STYLES; the style stage)


class Shapes(_Builder, skip_registration=True):
  """The synthetic shapes clips with captions and per-object ground truth."""

  VERSION = tfds.core.Version(VERSION)

  def __init__(self, options: ShapesOptions, text_embeddings=None, **kwargs):
    self.options = options
    self.text_embeddings = text_embeddings
    super().__init__(**kwargs)

  def _info(self):
    o = self.options
    features = _clip_features(
        o.num_frames, o.resolution, self.text_embeddings,
        num_objects=np.int32,
        # colour, shape, motion indices into shapes.COLOUR_NAMES/SHAPES/MOTIONS; -1 = none
        object_attributes=tfds.features.Tensor(shape=(shapes.MAX_OBJECTS, 3), dtype=np.int32),
        object_centres=tfds.features.Tensor(shape=(shapes.MAX_OBJECTS, o.num_frames, 2),
                                            dtype=np.float32),
        object_half_extents=tfds.features.Tensor(shape=(shapes.MAX_OBJECTS, o.num_frames),
                                                 dtype=np.float32))
    metadata = dataclasses.asdict(o) | {"held_out": [" ".join(c) for c in o.held_out]}
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict(metadata),
                                 description="Synthetic shapes clips (lumiere_jax).")

  def _split_generators(self, dl_manager):
    del dl_manager
    held_out = frozenset(self.options.held_out)
    splits = {"train": self._generate_examples(0, self.options.num_videos, held_out, ())}
    if held_out:
      splits["heldout"] = self._generate_examples(1, self.options.num_held_out_videos,
                                                  frozenset(), self.options.held_out)
    return splits

  def _generate_examples(self, split_code: int, count: int, excluded, required_cycle):
    o = self.options
    split = "heldout" if split_code else "train"
    for index in _progress(range(count), f"rendering {split} clips", "clip"):
      runtime.check_interrupt(INTERRUPTED)
      required = required_cycle[index % len(required_cycle)] if required_cycle else None
      clip = shapes.render_clip((o.seed, split_code, index), o.resolution, o.num_frames,
                                o.two_object_fraction, excluded, required, o.style)
      yield index, _with_text(_shapes_example(index, clip, o.num_frames),
                              self.text_embeddings)


def _shapes_example(index: int, clip: shapes.Clip, num_frames: int) -> dict:
  attributes = np.full((shapes.MAX_OBJECTS, 3), -1, np.int32)
  centres = np.zeros((shapes.MAX_OBJECTS, num_frames, 2), np.float32)
  half_extents = np.zeros((shapes.MAX_OBJECTS, num_frames), np.float32)
  for k, track in enumerate(clip.tracks):
    attributes[k] = (shapes.COLOUR_NAMES.index(track.colour), shapes.SHAPES.index(track.shape),
                     shapes.MOTIONS.index(track.motion))
    centres[k], half_extents[k] = track.centres, track.half_extents
  return {"id": index, "video": clip.video, "caption": clip.caption,
          "num_objects": len(clip.tracks), "object_attributes": attributes,
          "object_centres": centres, "object_half_extents": half_extents}


def parse_combination(text: str) -> tuple:
  """'red triangle moving left' (an optional leading 'a') -> ('red', 'triangle', 'moving left')."""
  words = text.strip().lower().split()
  if words[:1] == ["a"]:
    words = words[1:]
  colour, shape, motion = (words[0] if words else ""), " ".join(words[1:2]), " ".join(words[2:])
  if colour not in shapes.COLOURS or shape not in shapes.SHAPES or motion not in shapes.MOTIONS:
    raise UserError(f"held-out combination {text!r} is not '<colour> <shape> <motion>' with "
                    f"colour in {shapes.COLOUR_NAMES}, shape in {shapes.SHAPES}, motion in "
                    f"{shapes.MOTIONS}")
  return colour, shape, motion


def build_shapes(out_dir: str | pathlib.Path, num_videos: int, resolution: int = 32,
                 num_frames: int = 16, seed: int = 0, two_object_fraction: float = 0.5,
                 held_out: Iterable[str] = (), num_held_out_videos: int | None = None,
                 text_embeddings: str | pathlib.Path | None = None,
                 on_start: Callable | None = None, style: str = "plain") -> pathlib.Path:
  """Builds the shapes dataset under out_dir and returns its version folder;
  `on_start(version folder)` is called once every input has been checked.

  `held_out` lists caption combinations ('red triangle moving left'); `train` never
  contains them and `heldout` gets `num_held_out_videos` clips (default 16 per
  combination) that each contain one. `style` (shapes.STYLES) draws the objects
  outlined or striped instead of filled, for the style stage.
  """
  combinations = tuple(dict.fromkeys(parse_combination(c) for c in held_out))
  if num_held_out_videos is None:
    num_held_out_videos = HELD_OUT_VIDEOS_PER_COMBINATION * len(combinations)
  options = ShapesOptions(num_videos, resolution, num_frames, seed, two_object_fraction,
                          combinations, num_held_out_videos, style)
  _check_shapes_options(options)
  _check_split_memory(options)
  table = TextEmbeddingTable(text_embeddings) if text_embeddings else None
  path, _ = _build(out_dir, "shapes", lambda data_dir: Shapes(options, table, data_dir=data_dir),
                   on_start)
  return path


def writer_memory_limit() -> int:
  """Bytes TFDS's writer may hold for one split: half of the machine's memory."""
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _check_split_memory(o: ShapesOptions) -> None:
  clip_bytes = o.num_frames * o.resolution ** 2 * 3
  largest = max(o.num_videos, o.num_held_out_videos if o.held_out else 0) * clip_bytes
  if largest > writer_memory_limit():
    raise UserError(
        f"{o.num_videos} videos of {o.num_frames} frames at {o.resolution}x{o.resolution} "
        f"are {largest / 2**30:.1f} GiB, more than the {writer_memory_limit() / 2**30:.1f} "
        f"GiB (half this machine's memory) the writer may hold; build fewer videos")


def _check_shapes_options(o: ShapesOptions) -> None:
  try:
    shapes.check_size(o.resolution, o.num_frames)
    shapes.check_style(o.style)
  except ValueError as e:
    raise UserError(str(e)) from e
  if o.num_videos < 1:
    raise UserError(f"the number of videos must be at least 1, got {o.num_videos}")
  if not 0.0 <= o.two_object_fraction <= 1.0:
    raise UserError(f"the two-object fraction must be in [0, 1], got {o.two_object_fraction}")
  if not 0 <= o.seed < 2**63:
    raise UserError(f"the seed must be a non-negative integer, got {o.seed}")
  total = len(shapes.COLOURS) * len(shapes.SHAPES) * len(shapes.MOTIONS)
  if len(o.held_out) > total // 2:
    raise UserError(f"{len(o.held_out)} held-out combinations leave too few for training "
                    f"(at most {total // 2} of {total})")
  if o.held_out and o.num_held_out_videos < 1:
    raise UserError("held-out combinations need at least 1 held-out video")


# ---------------------------------------------------------------------------------------
# Users' videos


@dataclasses.dataclass
class FolderReport:
  """What a folder build did: where it wrote, how many clips, and what it skipped why."""
  path: pathlib.Path
  written: int
  skipped: dict  # clip name -> reason


class VideoFolder(_Builder, skip_registration=True):
  """Users' clips, resized, centre-cropped and cut to the configured frames and fps."""

  VERSION = tfds.core.Version(VERSION)

  def __init__(self, clips: list, resolution: int, num_frames: int, fps: float | None,
               text_embeddings=None, **kwargs):
    self.clips, self.resolution, self.num_frames, self.fps = clips, resolution, num_frames, fps
    self.text_embeddings = text_embeddings
    self.skipped = {}
    self.written = 0
    super().__init__(**kwargs)

  def _info(self):
    features = _clip_features(self.num_frames, self.resolution, self.text_embeddings,
                              source=tfds.features.Text())
    metadata = {"resolution": self.resolution, "num_frames": self.num_frames,
                "fps": self.fps, "num_sources": len(self.clips)}
    return tfds.core.DatasetInfo(builder=self, features=features, disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict(metadata),
                                 description="Users' videos (lumiere_jax).")

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    index = 0
    for clip in _progress(self.clips, "reading videos", "video"):
      runtime.check_interrupt(INTERRUPTED)
      try:
        video = video_files.read_clip(clip.path, self.resolution, self.num_frames, self.fps)
      except video_files.SkippedClip as e:
        log.warning("skipping %s: %s", clip.name, e)
        self.skipped[clip.name] = str(e)
        continue
      example = {"id": index, "video": video, "caption": clip.caption, "source": clip.name}
      yield index, _with_text(example, self.text_embeddings)
      index += 1
    self.written = index
    if index == 0:
      name, reason = next(iter(self.skipped.items()))
      raise UserError(f"none of the {len(self.clips)} videos could be used (e.g. {name}: "
                      f"{reason}); nothing was written")


def build_folder(out_dir: str | pathlib.Path, src: str | pathlib.Path, resolution: int,
                 num_frames: int, fps: float | None = None,
                 captions: str | pathlib.Path | None = None,
                 text_embeddings: str | pathlib.Path | None = None,
                 on_start: Callable | None = None) -> FolderReport:
  """Builds the video_folder dataset from `src`; unreadable or short clips are skipped
  with a warning each and listed in the report. `on_start` as for build_shapes."""
  if resolution not in FOLDER_RESOLUTIONS:
    raise UserError(f"resolution {resolution} is not supported; use a multiple of 16 "
                    f"from 16 to 1024")
  if num_frames < 1:
    raise UserError(f"frames must be at least 1, got {num_frames}")
  if fps is not None and fps <= 0:
    raise UserError(f"fps must be positive, got {fps}")
  clips = video_files.find_clips(src, captions)
  table = TextEmbeddingTable(text_embeddings) if text_embeddings else None
  if table is not None:
    for clip in clips:  # a missing caption is found now, not halfway through the build
      table(clip.caption)
  path, builder = _build(out_dir, "video_folder", lambda data_dir: VideoFolder(
      clips, resolution, num_frames, fps, table, data_dir=data_dir), on_start)
  return FolderReport(path, builder.written, builder.skipped)


# ---------------------------------------------------------------------------------------
# Building and finding datasets


def check_output(out_dir, name: str) -> pathlib.Path:
  """The version folder a build of `name` would write under out_dir; UserError, before
  any work, if it exists or cannot be made."""
  out_dir = atomic.check_output_dir(out_dir, "--out")
  final = out_dir / name / VERSION
  for folder in (out_dir / name, final):
    if folder.exists() and not folder.is_dir():
      raise UserError(f"--out {out_dir}: {folder} exists and is not a folder")
  if final.exists():
    raise UserError(f"{final} already exists; choose another output folder or delete it")
  return final


def _build(out_dir, name: str, make_builder: Callable, on_start: Callable | None = None
           ) -> tuple:
  """(version folder, builder): runs make_builder(data_dir)'s build in a hidden staging
  folder under out_dir, then renames the finished version folder into place. A build
  that fails or is interrupted leaves nothing: the staging folder goes, and so do the
  folders the build created (out_dir and its missing parents, out_dir/name)."""
  out_dir = pathlib.Path(out_dir)
  final = check_output(out_dir, name)
  if on_start is not None:
    on_start(final)
  created = [p for p in (final.parent, out_dir, *out_dir.parents) if not p.exists()]
  staging = None

  def undo():
    if staging is not None:
      shutil.rmtree(staging, ignore_errors=True)
    for folder in created:  # deepest first; only while empty
      with contextlib.suppress(OSError):
        folder.rmdir()

  with runtime.cleanup_on_exit(undo):
    try:
      out_dir.mkdir(parents=True, exist_ok=True)
      staging = pathlib.Path(tempfile.mkdtemp(prefix=".incomplete-", dir=out_dir))
      builder = make_builder(staging)
      tfds.disable_progress_bar()  # its bars name the staging folder; _progress is ours
      with _writer_memory(writer_memory_limit()):
        builder.download_and_prepare(download_dir=staging / "downloads",
                                     file_format=FILE_FORMAT)
      with runtime.shielded():  # the rename is the last step: let it happen
        final.parent.mkdir(exist_ok=True)
        os.rename(builder.data_dir, final)
    except BaseException:
      undo()
      raise
    shutil.rmtree(staging, ignore_errors=True)
  return final, builder


@contextlib.contextmanager
def _writer_memory(limit: int):
  """TFDS's in-memory writer buffer raised to `limit` bytes (module docstring)."""
  saved = tfds_shuffle.MAX_MEM_BUFFER_SIZE
  tfds_shuffle.MAX_MEM_BUFFER_SIZE = max(saved, limit)
  try:
    yield
  finally:
    tfds_shuffle.MAX_MEM_BUFFER_SIZE = saved


def find_dataset(path: str | pathlib.Path) -> pathlib.Path:
  """The version folder at or below `path` (a build's --out folder works); UserError if
  there is none (or only an interrupted build) or several."""
  path = pathlib.Path(path)
  if (path / "dataset_info.json").is_file():
    return path
  if not path.is_dir():
    raise UserError(f"dataset folder {path} does not exist")
  found = sorted(info.parent for depth in ("*/", "*/*/", "*/*/*/")
                 for info in path.glob(f"{depth}dataset_info.json")
                 if not any(part.startswith(".") for part in
                            info.relative_to(path).parts))
  if not found:
    raise UserError(f"no complete dataset in {path} (an interrupted build leaves only a "
                    f"hidden .incomplete-* folder)")
  if len(found) > 1:
    raise UserError(f"{path} holds {len(found)} datasets; pass one of: "
                    f"{', '.join(str(p) for p in found)}")
  return found[0]


def open_builder(path: str | pathlib.Path) -> tfds.core.DatasetBuilder:
  """The read-only TFDS builder of a built dataset (reads without TensorFlow)."""
  return tfds.builder_from_directory(find_dataset(path))
