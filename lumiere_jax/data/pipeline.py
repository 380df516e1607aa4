"""grain input pipelines: global shuffle, repeat, per-process shards, batches, workers.

Order of operations, and why:
  source -> shuffle(seed) -> repeat -> [process_index::process_count] -> transform -> batch
Every process computes the same permutation of each epoch (the seed is shared and the
shuffle is reseeded per epoch), then keeps every process_count-th element of the endless
stream, so the processes' shards are disjoint, cover each epoch together, and change from
epoch to epoch. All steps are grain MapDataset steps, so element k of the stream is a pure
function of (seed, k): the iterator state is just a position, worker processes can be
added without changing the batches, and a restored iterator continues exactly.

Examples leave the pipeline as numpy: `video` uint8 [B, T, H, W, 3] (or `image` uint8
[B, H, W, 3]), `caption` str [B], `tokens` int32 [B, L], and when present `text_embedding`
[B, L, D] + `text_mask` [B, L], `mask` uint8 [B, T, H, W, 1] (1 = known pixel, see
masks.py; a cinemagraph example's clip is frozen outside its region, masks.training_clip)
and `low_res_video`. Videos stay uint8 until the device (a quarter of the host
to device bytes); `to_model_range` maps them to [-1, 1] inside the step.
"""

import dataclasses
import pathlib

import grain
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax.data import builders
from lumiere_jax.data import masks as mask_lib
from lumiere_jax.errors import UserError
from lumiere_jax.models import build, conditioning
from lumiere_jax.models.text import Tokenizer

DATA_ITEM = "data"  # the iterator's item name in the run's orbax CheckpointManager
DEFAULT_READ_THREADS = 2
DEFAULT_PREFETCH_BATCHES = 4


def open_split(path: str | pathlib.Path, split: str = "train"):
  """Random-access source of decoded examples (dicts of numpy) of one split."""
  builder = builders.open_builder(path)
  if split not in builder.info.splits:
    raise UserError(f"dataset {builder.data_dir} has no split {split!r}; it has "
                    f"{', '.join(builder.info.splits)}")
  return builder.as_data_source(split=split)


class FramesSource:
  """The images view (T2I stage): example j is frame j % T of clip j // T, with the
  clip's caption. Reads the whole clip for one frame, which is cheap at the sizes the
  T2I stage uses and avoids storing every frame twice."""

  def __init__(self, clips, frames_per_clip: int):
    self.clips = clips
    self.frames_per_clip = frames_per_clip

  def __len__(self) -> int:
    return len(self.clips) * self.frames_per_clip

  def __getitem__(self, index: int) -> dict:
    clip_index, frame = divmod(index, self.frames_per_clip)
    example = dict(self.clips[clip_index])
    example["image"] = example.pop("video")[frame]
    return example


@dataclasses.dataclass(frozen=True)
class ExampleTransform(grain.transforms.RandomMap):
  """Turns a decoded record into a training example; randomness comes from grain's
  per-element generator, so it is the same on every run and after a resume."""

  tokenizer: Tokenizer
  num_frames: int = 0            # videos: a random window of this many frames; 0 = all
  frame_stride: int = 1          # every k-th frame of a window of (num_frames - 1) k + 1
  mask_weights: dict | None = None
  low_resolution: int = 0        # > 0: add `low_res_video`, area-downsampled

  def random_map(self, record: dict, rng: np.random.Generator) -> dict:
    example = {"caption": _text(record["caption"])}
    example["tokens"] = self.tokenizer.encode([example["caption"]])[0]
    for name in ("text_embedding", "text_mask"):
      if name in record:
        example[name] = record[name]
    if "image" in record:
      example["image"] = record["image"]
      return example
    video = _frame_window(record["video"], self.num_frames, rng, self.frame_stride)
    if self.mask_weights is not None:
      kind, example["mask"] = mask_lib.sample_mask(rng, *video.shape[:3], self.mask_weights)
      video = mask_lib.training_clip(kind, video, example["mask"])
    example["video"] = video
    if self.low_resolution:
      example["low_res_video"] = area_downsample(video, self.low_resolution)
    return example


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def window_length(num_frames: int, stride: int) -> int:
  """Frames of a clip that `num_frames` frames `stride` apart span."""
  return (num_frames - 1) * stride + 1


def _frame_window(video: np.ndarray, num_frames: int, rng: np.random.Generator,
                  stride: int = 1) -> np.ndarray:
  """`num_frames` frames `stride` apart from a random start (all frames if 0)."""
  if not num_frames:
    return video
  span = window_length(num_frames, stride)
  if span == len(video) and stride == 1:
    return video
  start = rng.integers(0, len(video) - span + 1)
  return video[start:start + span:stride]


def area_downsample(video: np.ndarray, size: int) -> np.ndarray:
  """uint8 [..., R, R, C] -> [..., size, size, C] by averaging R/size blocks."""
  factor = video.shape[-2] // size
  blocks = video.reshape(*video.shape[:-3], size, factor, size, factor, video.shape[-1])
  return np.rint(blocks.mean(axis=(-4, -2))).astype(np.uint8)


def make_dataset(source, transform, *, batch_size: int, seed: int, shuffle: bool = True,
                 num_epochs: int | None = None, process_index: int | None = None,
                 process_count: int | None = None,
                 drop_remainder: bool = True) -> grain.MapDataset:
  """This process's batches (batch_size examples each) of the shuffled, repeated stream.

  process_index/process_count default to jax.process_index()/jax.process_count().
  num_epochs=None repeats forever.
  """
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  dataset = grain.MapDataset.source(source).seed(seed)
  if shuffle:
    dataset = dataset.shuffle()
  dataset = dataset.repeat(num_epochs)[process_index::process_count]
  return dataset.random_map(transform).batch(batch_size, drop_remainder=drop_remainder)


def make_iterator(dataset: grain.MapDataset, worker_count: int = 0,
                  read_threads: int = DEFAULT_READ_THREADS,
                  prefetch_batches: int = DEFAULT_PREFETCH_BATCHES) -> grain.DatasetIterator:
  """A checkpointable iterator; worker_count > 0 prepares batches in that many processes.

  Buffers are counted in batches and kept small: a few 80x128x128 batches are already
  hundreds of MB.
  """
  read_options = grain.ReadOptions(num_threads=read_threads,
                                   prefetch_buffer_size=prefetch_batches)
  iter_dataset = dataset.to_iter_dataset(read_options)
  if worker_count > 0:
    _use_default_absl_flags()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=prefetch_batches))
  return iter(iter_dataset)


def _use_default_absl_flags() -> None:
  """grain's worker processes read absl flags; a program that is not an absl app (the
  argparse CLI, tests, notebooks) has not parsed them, so take their defaults."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_train_iterator(config, data_dir: str | pathlib.Path, *, split: str = "train",
                        process_index: int | None = None, process_count: int | None = None,
                        worker_count: int | None = None) -> grain.DatasetIterator:
  """The training iterator a config asks for: per-process share of config.data.batch_size,
  images for a 2D model, conditioning masks for the 7-channel <J, C, M> model."""
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  data = config.data
  if data.batch_size % process_count:
    raise UserError(f"data.batch_size={data.batch_size} is not divisible by the "
                    f"{process_count} processes")
  source, transform = _source_and_transform(config, open_split(data_dir, split))
  dataset = make_dataset(source, transform, batch_size=data.batch_size // process_count,
                         seed=config.seed, process_index=process_index,
                         process_count=process_count)
  if worker_count is None:
    worker_count = data.worker_count
  return make_iterator(dataset, worker_count, data.read_threads, data.prefetch_batches)


def check_train_data(config, data_dir: str | pathlib.Path, split: str = "train") -> None:
  """UserError, before a run starts, if `data_dir` holds no dataset that fits `config`."""
  _source_and_transform(config, open_split(data_dir, split))


def _source_and_transform(config, clips) -> tuple:
  """Checks the dataset against the config; picks the view and the example transform."""
  data = config.data
  frames, height, width, _ = clips.dataset_info.features["video"].shape
  if height != data.resolution or width != data.resolution:
    raise UserError(f"the dataset has {height}x{width} clips but data.resolution="
                    f"{data.resolution}; build it with --resolution {data.resolution}")
  model = build.Model(config)
  if not model.is_video:
    return FramesSource(clips, frames), ExampleTransform(model.tokenizer)
  span = window_length(data.num_frames, data.frame_stride)
  if frames < span:
    raise UserError(f"the dataset has {frames}-frame clips but data.num_frames="
                    f"{data.num_frames} (data.frame_stride={data.frame_stride}) needs "
                    f"{span}; build it with --frames {span} or more")
  if data.low_resolution and data.resolution % data.low_resolution:
    raise UserError(f"data.low_resolution={data.low_resolution} must divide "
                    f"data.resolution={data.resolution}")
  weights = None
  if model.conditioning == conditioning.MASKED:
    weights = dict(data.mask_weights)
    try:
      mask_lib.check_weights(weights)
    except ValueError as e:
      raise UserError(f"data.mask_weights: {e}") from e
  return clips, ExampleTransform(model.tokenizer, data.num_frames, data.frame_stride,
                                 weights, data.low_resolution)


def iterator_save_args(iterator: grain.DatasetIterator):
  """orbax args that save the iterator's position, e.g.
  manager.save(step, args=ocp.args.Composite(state=..., data=iterator_save_args(it)))."""
  return grain.checkpoint.CheckpointSave(iterator)


def iterator_restore_args(iterator: grain.DatasetIterator):
  """orbax args that move a freshly made iterator to the saved position (in place)."""
  return grain.checkpoint.CheckpointRestore(iterator)


def make_global_batch(batch: dict, sharding: jax.sharding.Sharding) -> dict:
  """Per-process numpy batch -> global jax.Arrays split along the batch axis by `sharding`.

  Every process passes its own rows; the global batch is their concatenation in process
  order. Text fields (captions) stay on the host and are left out.
  """
  return {name: jax.make_array_from_process_local_data(sharding, value)
          for name, value in batch.items() if np.asarray(value).dtype.kind in "biuf"}


def to_model_range(pixels: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1], the models' convention."""
  return pixels.astype(jnp.float32) / 127.5 - 1.0
