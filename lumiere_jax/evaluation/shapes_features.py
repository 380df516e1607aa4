"""The built-in feature extractor of the shapes domain ("shapes"): a small video
classifier trained here on ground-truth shapes clips, whose penultimate layer is the
feature of a clip.

Why not I3D: it was trained on Kinetics at 224 x 224, and on 32 x 32 clips of coloured
shapes on black its features say little. A network trained on the domain sees what its
captions are about: colour, shape and motion.

Labels. Two objects of a clip always have different colours (data/shapes.py), so each
palette colour names at most one object, while "the first object" of a two-object clip
is not visible in the pixels (nothing marks drawing order). So the heads are per colour:
  colour  [7]     is an object of this colour there (sigmoid)
  shape   [7, 3]  its shape, for the colours that are there
  motion  [7, 8]  its motion, likewise
Held-out accuracy (`accuracy`): colour = share of clips whose set of colours is exactly
right; shape and motion = share of objects whose shape / motion is right.

Network: videos [B, 16, 32, 32, 3] in [0, 1], scaled to [-1, 1] -> three (2+1)D
blocks (a 3x3 conv per frame, then a 3-tap conv along time, each with ReLU; 16 channels
at space stride 2; 32 and 64 at stride 2 in time and space) -> [B, 4, 4, 4, 64] ->
mean and max over space, kept apart for each of the 4 time steps (what is there anywhere
in the frame, and in which order things happen), [B, 512] -> dense FEATURE_DIM: the
features, taken before their ReLU (so none is stuck at zero and their covariance keeps
full rank) -> ReLU -> the three heads. Videos of 64 or 128 pixels are area-downsampled
to 32 first; 16 frames are required.

Training (`train`): ADAM on a fixed pool of clips rendered on the fly by
data/shapes.py (seeds (seed, 0, i)), batches drawn from the pool by a generator seeded
with `seed`: the same seed gives the same weights on the same machine. Held-out clips
use seeds (seed, 1, i). The weights file is written with its training settings and
held-out accuracy in its safetensors metadata:

  python -m lumiere_jax.evaluation.shapes_features --out PATH.safetensors \\
      [--steps 4000 --batch 32 --clips 8192 --seed 0 --learning-rate 1e-3]

The registered extractor reads DEFAULT_WEIGHTS unless given another file.
"""

import argparse
import functools
import json
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lumiere_jax.data import shapes
from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import frechet
from lumiere_jax.io import atomic

NAME = "shapes"
FRAMES = 16
RESOLUTION = 32
FEATURE_DIM = 64
# (2+1)D blocks: (channels, time stride, space stride)
BLOCKS = ((16, 1, 2), (32, 2, 2), (64, 2, 2))
DEFAULT_WEIGHTS = (pathlib.Path(__file__).resolve().parent.parent / "assets" / "features"
                   / "shapes_classifier.safetensors")
NUM_COLOURS, NUM_SHAPES, NUM_MOTIONS = len(shapes.COLOURS), len(shapes.SHAPES), len(
    shapes.MOTIONS)


class Conv2Plus1D(nn.Module):
  """A 3x3 conv on every frame, then a 3-tap conv along time at every pixel (each with
  ReLU): a (2+1)D block. Written as 2D and 1D convolutions, because XLA's CPU backend
  is many times slower on 3D convolutions and, above all, their gradients."""
  channels: int
  time_stride: int
  space_stride: int

  @nn.compact
  def __call__(self, x):
    b, t, h, w, c = x.shape
    x = nn.Conv(self.channels, (3, 3), self.space_stride, padding="SAME", name="spatial")(
        x.reshape(b * t, h, w, c))
    _, h, w, c = x.shape
    x = x.reshape(b, t, h, w, c).transpose(0, 2, 3, 1, 4).reshape(b * h * w, t, c)
    x = nn.Conv(self.channels, (3,), self.time_stride, padding="SAME", name="temporal")(
        nn.relu(x))
    t = x.shape[1]
    return nn.relu(x.reshape(b, h, w, t, c).transpose(0, 3, 1, 2, 4))


class ShapesClassifier(nn.Module):
  """videos [B, 16, 32, 32, 3] in [0, 1] -> {features, colour, shape, motion} logits."""
  feature_dim: int = FEATURE_DIM

  @nn.compact
  def __call__(self, videos):
    x = videos * 2.0 - 1.0
    for i, (channels, time_stride, space_stride) in enumerate(BLOCKS):
      x = Conv2Plus1D(channels, time_stride, space_stride, name=f"block_{i}")(x)
    pooled = jnp.concatenate([x.mean(axis=(2, 3)), x.max(axis=(2, 3))], axis=-1)
    features = nn.Dense(self.feature_dim, name="features")(pooled.reshape(len(x), -1))
    hidden = nn.relu(features)
    return {
        "features": features,
        "colour": nn.Dense(NUM_COLOURS, name="colour")(hidden),
        "shape": nn.Dense(NUM_COLOURS * NUM_SHAPES, name="shape")(hidden).reshape(
            -1, NUM_COLOURS, NUM_SHAPES),
        "motion": nn.Dense(NUM_COLOURS * NUM_MOTIONS, name="motion")(hidden).reshape(
            -1, NUM_COLOURS, NUM_MOTIONS),
    }


# Data -------------------------------------------------------------------------------------

def labels(tracks) -> tuple:
  """A clip's tracks -> (present [7] float32, shape [7] int32, motion [7] int32), -1 for
  the colours that are not there."""
  present = np.zeros(NUM_COLOURS, np.float32)
  shape, motion = np.full(NUM_COLOURS, -1, np.int32), np.full(NUM_COLOURS, -1, np.int32)
  for track in tracks:
    k = shapes.COLOUR_NAMES.index(track.colour)
    present[k] = 1.0
    shape[k], motion[k] = shapes.SHAPES.index(track.shape), shapes.MOTIONS.index(track.motion)
  return present, shape, motion


def render(seed: int, split: int, num_clips: int) -> dict:
  """`num_clips` ground-truth clips (uint8 videos) and their labels; split 0 trains,
  split 1 is held out."""
  clips = [shapes.render_clip((seed, split, i), RESOLUTION, FRAMES) for i in range(num_clips)]
  present, shape, motion = map(np.stack, zip(*(labels(c.tracks) for c in clips)))
  return {"videos": np.stack([c.video for c in clips]), "present": present,
          "shape": shape, "motion": motion}


def batch_at(data: dict, index: np.ndarray) -> dict:
  """The clips at `index`, videos as float32 in [0, 1]."""
  batch = {k: v[index] for k, v in data.items()}
  batch["videos"] = batch["videos"].astype(np.float32) / 255.0
  return batch


# Training ---------------------------------------------------------------------------------

def loss_fn(params, batch: dict):
  """Colour presence (binary cross-entropy) + shape and motion (cross-entropy over the
  colours that are there)."""
  out = ShapesClassifier().apply({"params": params}, batch["videos"])
  present = batch["present"]
  colour = optax.sigmoid_binary_cross_entropy(out["colour"], present).mean()

  def masked_ce(logits, target):
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(target, 0))
    return (ce * present).sum() / jnp.maximum(present.sum(), 1.0)

  shape, motion = masked_ce(out["shape"], batch["shape"]), masked_ce(out["motion"],
                                                                     batch["motion"])
  return colour + shape + motion, {"colour": colour, "shape": shape, "motion": motion}


def init_params(seed: int = 0) -> dict:
  dummy = jnp.zeros((1, FRAMES, RESOLUTION, RESOLUTION, 3), jnp.float32)
  return ShapesClassifier().init(jax.random.PRNGKey(seed), dummy)["params"]


@functools.partial(jax.jit, static_argnames=("optimizer",))
def train_step(params, opt_state, batch: dict, optimizer):
  (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, {"loss": loss, **parts}


def train(steps: int = 4000, batch: int = 32, num_clips: int = 8192, seed: int = 0,
          learning_rate: float = 1e-3, log_every: int = 100, log=print) -> tuple:
  """Trains the classifier -> (params, [(step, loss, seconds per step), ...])."""
  data = render(seed, 0, num_clips)
  params = init_params(seed)
  optimizer = optax.adam(learning_rate)
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(seed)
  history, start = [], time.perf_counter()
  for step in range(1, steps + 1):
    index = rng.choice(num_clips, batch, replace=False)
    params, opt_state, metrics = train_step(params, opt_state, batch_at(data, index),
                                            optimizer)
    if step % log_every == 0 or step == steps:
      loss = float(metrics["loss"])
      elapsed = (time.perf_counter() - start) / (step - (history[-1][0] if history else 0))
      history.append((step, loss, elapsed))
      start = time.perf_counter()
      if log:
        log(f"step {step}: loss {loss:.4f} ({elapsed * 1e3:.0f} ms/step)")
  return params, history


# Evaluation and features ------------------------------------------------------------------

@jax.jit
def _predict(params, videos):
  return ShapesClassifier().apply({"params": params}, videos)


def accuracy(params, num_clips: int = 512, seed: int = 0, batch: int = 64) -> dict:
  """Held-out accuracy per head on fresh ground-truth clips (module docstring)."""
  data = render(seed, 1, num_clips)
  colour, shape, motion = [], [], []
  for start in range(0, num_clips, batch):
    part = batch_at(data, np.arange(start, min(start + batch, num_clips)))
    out = jax.device_get(_predict(params, part["videos"]))
    present = part["present"] > 0
    colour += list(((out["colour"] > 0) == present).all(axis=1))
    shape += list(out["shape"].argmax(-1)[present] == part["shape"][present])
    motion += list(out["motion"].argmax(-1)[present] == part["motion"][present])
  return {"colour": float(np.mean(colour)), "shape": float(np.mean(shape)),
          "motion": float(np.mean(motion)), "clips": num_clips}


@jax.jit
def features(params, videos):
  """videos [B, 16, 32, 32, 3] in [0, 1] -> features [B, FEATURE_DIM]."""
  return ShapesClassifier().apply({"params": params}, videos)["features"]


def downsample(videos: np.ndarray) -> np.ndarray:
  """Area-downsamples square frames of a multiple of 32 pixels to 32 x 32."""
  b, t, h, w, c = videos.shape
  if h != w or h % RESOLUTION:
    raise UserError(f"shapes features need square frames of a multiple of {RESOLUTION} "
                    f"pixels, got {h}x{w}")
  f = h // RESOLUTION
  return videos.reshape(b, t, RESOLUTION, f, RESOLUTION, f, c).mean(axis=(3, 5))


def make_extractor(params, weights: str = "") -> frechet.FeatureExtractor:
  return frechet.FeatureExtractor(
      name=NAME, apply=lambda videos: features(params, downsample(videos)),
      feature_dim=FEATURE_DIM, min_frames=FRAMES, max_frames=FRAMES,
      preprocess=f"area-downsample to {RESOLUTION}x{RESOLUTION}, values [-1, 1]",
      weights=weights)


def extractor(weights=None) -> frechet.FeatureExtractor:
  """The registered "shapes" extractor, with the weights at `weights` (default
  DEFAULT_WEIGHTS)."""
  path = pathlib.Path(weights) if weights is not None else DEFAULT_WEIGHTS
  if weights is None and not path.is_file():
    raise UserError(f"the shapes feature extractor has no trained weights at {path}; "
                    f"train them with: python -m lumiere_jax.evaluation.shapes_features "
                    f"--out {path}")
  return make_extractor(load_params(path), frechet.file_digest(path))


# Weights ------------------------------------------------------------------------------

def expected_shapes() -> dict:
  dummy = jax.ShapeDtypeStruct((1, FRAMES, RESOLUTION, RESOLUTION, 3), jnp.float32)
  abstract = jax.eval_shape(ShapesClassifier().init, jax.random.PRNGKey(0), dummy)
  return {k: tuple(v.shape) for k, v in frechet.flatten(abstract["params"]).items()}


def load_params(path) -> dict:
  flat = frechet.read_weights(path, expected_shapes(), "shapes classifier")
  return frechet.unflatten({k: jnp.asarray(v) for k, v in flat.items()})


def save_params(path, params, metadata: dict | None = None) -> pathlib.Path:
  """Writes float32 safetensors (or .npz) that `load_params` reads."""
  return frechet.write_weights(path, params, metadata)


# Command line -----------------------------------------------------------------------------

def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m lumiere_jax.evaluation.shapes_features",
      description="Train the shapes feature classifier and write its weights.")
  parser.add_argument("--out", required=True, help="weights file (.safetensors)")
  parser.add_argument("--steps", type=int, default=4000)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--clips", type=int, default=8192, help="training clips rendered")
  parser.add_argument("--held-out", type=int, default=512, help="clips for accuracy")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--learning-rate", type=float, default=1e-3)
  args = parser.parse_args(argv)
  try:
    train_and_save(args)
  except UserError as e:
    parser.error(str(e))


def train_and_save(args) -> None:
  out = atomic.check_output_file(args.out, "--out")
  if out.suffix != ".safetensors":
    raise UserError(f"--out must end in .safetensors, got {out}")
  start = time.perf_counter()
  params, history = train(args.steps, args.batch, args.clips, args.seed, args.learning_rate)
  scores = accuracy(params, args.held_out, args.seed)
  hours = (time.perf_counter() - start) / 3600
  print(f"held-out accuracy: {json.dumps(scores)}; {hours:.3f} h")
  metadata = {"steps": args.steps, "batch": args.batch, "clips": args.clips,
              "seed": args.seed, "learning_rate": args.learning_rate,
              "final_loss": history[-1][1], "accuracy": json.dumps(scores),
              "feature_dim": FEATURE_DIM, "hours": f"{hours:.3f}"}
  print(f"wrote {save_params(out, params, metadata)}")


if __name__ == "__main__":
  main()
