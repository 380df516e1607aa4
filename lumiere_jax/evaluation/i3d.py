"""I3D, the feature network of the standard FVD, in Flax linen (channels last).

The Inflated 3D ConvNet (Carreira & Zisserman 2017, "Quo Vadis, Action Recognition?"):
Inception-V1 with every 2D k x k filter and pool inflated to 3D, trained on Kinetics-400.
FVD (Unterthiner et al. 2018) resizes each frame to 224 x 224 (bilinear), scales values
to [-1, 1], runs the RGB network and takes the 400 logits, averaged over time, as the
features of a clip. The extractor "i3d" gives those logits (the standard FVD);
"i3d_pool" gives the 1024-d average-pooled features under them.

Layers (every conv: no bias, batch norm without scale (eps 1e-3), ReLU; SAME padding):
  Conv3d_1a_7x7 64, stride 2 | max-pool 1x3x3 stride 1,2,2 | Conv3d_2b_1x1 64 |
  Conv3d_2c_3x3 192 | max-pool 1x3x3 stride 1,2,2 | Mixed_3b, 3c | max-pool 3x3x3
  stride 2 | Mixed_4b..4f | max-pool 2x2x2 stride 2 | Mixed_5b, 5c (1024 channels) |
  Logits: average pool 2x7x7 (VALID), 1x1x1 conv to 400 with bias, mean over time.
A Mixed block concatenates four branches (widths in MIXED): a 1x1x1 conv; 1x1x1 then
3x3x3; 1x1x1 then 3x3x3; a 3x3x3 max-pool (stride 1) then 1x1x1. Time is reduced 8x and
the final pool needs 2 steps of time, so a clip needs at least 9 frames. The final pool
here averages over all remaining spatial positions: at 224 x 224 that is the original's
7 x 7 window; smaller inputs (tests only) still run.

Weights are never downloaded: `extractor(path)` reads a local .npz (np.load with
allow_pickle=False) or .safetensors file of float32 arrays with flat '/'-joined keys:
  {block}/conv_3d/kernel               [kt, kh, kw, in, out]
  {block}/batch_norm/beta              [out]
  {block}/batch_norm/moving_mean       [out]
  {block}/batch_norm/moving_variance   [out]
  Logits/Conv3d_0c_1x1/conv_3d/kernel  [1, 1, 1, 1024, 400]
  Logits/Conv3d_0c_1x1/conv_3d/bias    [400]
where {block} is a stem conv (Conv3d_1a_7x7, Conv3d_2b_1x1, Conv3d_2c_3x3) or a
branch conv of a Mixed block (Mixed_3b/Branch_0/Conv3d_0a_1x1, .../Branch_1/Conv3d_0a_1x1,
.../Branch_1/Conv3d_0b_3x3, .../Branch_2/Conv3d_0a_1x1, .../Branch_2/Conv3d_0b_3x3,
.../Branch_3/Conv3d_0b_1x1): the variable scopes of DeepMind's kinetics-i3d checkpoint
(RGB/inception_i3d/...) with its prefix dropped, `w` written `kernel`, `b` `bias`, and
batch-norm vectors flattened to [C]. From a PyTorch port: transpose conv weights
[out, in, kt, kh, kw] -> [kt, kh, kw, in, out], and drop its batch-norm scale (all ones).
`expected_shapes()` lists every key; a file that differs is refused in one line.

Resizing is bilinear with half-pixel centres (jax.image.resize, no antialiasing); the
TF1 original (tf.image.resize_bilinear) samples without the half-pixel offset, so scores
differ slightly from published ones (ANCHORS.md: FVD implementations disagree on exactly
this). Scores record it in their `preprocess` setting.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import frechet

RESOLUTION = 224
MIN_FRAMES = 9
NUM_CLASSES = 400
POOL_DIM = 1024
BN_EPSILON = 1e-3
# Full float32 convolutions: on TPU the default would round to bfloat16, and FVD must
# not depend on the device.
PRECISION = jax.lax.Precision.HIGHEST
ONE, THREE = (1, 1, 1), (3, 3, 3)
# Mixed blocks: (branch 0, branch 1 reduce, branch 1, branch 2 reduce, branch 2, branch 3)
MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class FrozenBatchNorm(nn.Module):
  """Inference-time batch norm as in the original: moving statistics and an offset,
  no scale. I3D is only ever evaluated here, so the statistics are parameters."""

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    beta = self.param("beta", nn.initializers.zeros, (channels,))
    mean = self.param("moving_mean", nn.initializers.zeros, (channels,))
    variance = self.param("moving_variance", nn.initializers.ones, (channels,))
    return (x - mean) * jax.lax.rsqrt(variance + BN_EPSILON) + beta


class Unit3D(nn.Module):
  """Conv3D + batch norm + ReLU (or, for the logits, Conv3D with a bias alone)."""
  features: int
  kernel: tuple = ONE
  stride: tuple = ONE
  batch_norm: bool = True

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, self.kernel, self.stride, padding="SAME",
                use_bias=not self.batch_norm, precision=PRECISION, name="conv_3d")(x)
    return nn.relu(FrozenBatchNorm(name="batch_norm")(x)) if self.batch_norm else x


class Branch(nn.Module):
  """One branch of a Mixed block: an optional 3x3x3 max-pool, then named units."""
  units: tuple  # ((name, features, kernel), ...)
  pool_first: bool = False

  @nn.compact
  def __call__(self, x):
    if self.pool_first:
      x = nn.max_pool(x, THREE, ONE, padding="SAME")
    for name, features, kernel in self.units:
      x = Unit3D(features, kernel, name=name)(x)
    return x


class Mixed(nn.Module):
  """The inflated Inception block: four branches concatenated on channels."""
  widths: tuple

  @nn.compact
  def __call__(self, x):
    w0, w1_reduce, w1, w2_reduce, w2, w3 = self.widths
    branches = (
        Branch((("Conv3d_0a_1x1", w0, ONE),), name="Branch_0"),
        Branch((("Conv3d_0a_1x1", w1_reduce, ONE), ("Conv3d_0b_3x3", w1, THREE)),
               name="Branch_1"),
        Branch((("Conv3d_0a_1x1", w2_reduce, ONE), ("Conv3d_0b_3x3", w2, THREE)),
               name="Branch_2"),
        Branch((("Conv3d_0b_1x1", w3, ONE),), pool_first=True, name="Branch_3"),
    )
    return jnp.concatenate([branch(x) for branch in branches], axis=-1)


class Logits(nn.Module):
  """Average pool (2 frames, all positions), 1x1x1 conv to the classes, mean over time.
  Returns (logits [B, classes], pooled features [B, 1024]); the conv is linear, so the
  pooled features are the mean over time of what it sees."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    pooled = nn.avg_pool(x, (2, 1, 1), padding="VALID").mean(axis=(2, 3), keepdims=True)
    logits = Unit3D(self.num_classes, batch_norm=False, name="Conv3d_0c_1x1")(pooled)
    return logits.mean(axis=(1, 2, 3)), pooled.mean(axis=(1, 2, 3))


class I3D(nn.Module):
  """videos [B, T >= 9, H, W, 3] in [-1, 1] (224 x 224 for FVD) -> (logits, pooled)."""
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x):
    x = Unit3D(64, (7, 7, 7), (2, 2, 2), name="Conv3d_1a_7x7")(x)
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding="SAME")
    x = Unit3D(64, name="Conv3d_2b_1x1")(x)
    x = Unit3D(192, THREE, name="Conv3d_2c_3x3")(x)
    x = nn.max_pool(x, (1, 3, 3), (1, 2, 2), padding="SAME")
    for name in ("Mixed_3b", "Mixed_3c"):
      x = Mixed(MIXED[name], name=name)(x)
    x = nn.max_pool(x, THREE, (2, 2, 2), padding="SAME")
    for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
      x = Mixed(MIXED[name], name=name)(x)
    x = nn.max_pool(x, (2, 2, 2), (2, 2, 2), padding="SAME")
    for name in ("Mixed_5b", "Mixed_5c"):
      x = Mixed(MIXED[name], name=name)(x)
    return Logits(self.num_classes, name="Logits")(x)


def preprocess(videos, resolution: int = RESOLUTION):
  """float [B, T, H, W, 3] in [0, 1] -> bilinear-resized to resolution^2, in [-1, 1]."""
  b, t, _, _, c = videos.shape
  resized = jax.image.resize(videos, (b, t, resolution, resolution, c), "bilinear",
                             antialias=False)
  return resized * 2.0 - 1.0


@functools.partial(jax.jit, static_argnames=("resolution",))
def forward(params, videos, resolution: int = RESOLUTION):
  """(logits [B, 400], pooled [B, 1024]) of videos in [0, 1]."""
  return I3D().apply({"params": params}, preprocess(videos, resolution))


def init_params(seed: int = 0) -> dict:
  """Random parameters (for tests; features from them mean nothing): kernels normal
  with variance 2 / fan-in (He), so activations keep their scale through the ReLUs;
  batch norm the identity; biases zero. Drawn in numpy: initialising through Flax
  compiles the whole network's initialisers (minutes on a small CPU)."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in expected_shapes().items():
    leaf = key.rsplit("/", 1)[1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      flat[key] = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
    else:
      fill = 1.0 if leaf == "moving_variance" else 0.0
      flat[key] = np.full(shape, fill, np.float32)
  return frechet.unflatten({k: jnp.asarray(v) for k, v in flat.items()})


def expected_shapes() -> dict:
  """{flat key: shape} of every parameter a weights file must hold."""
  return dict(_expected_shapes())


@functools.cache
def _expected_shapes() -> tuple:  # tracing the network takes seconds: once is enough
  dummy = jax.ShapeDtypeStruct((1, MIN_FRAMES, 32, 32, 3), jnp.float32)
  abstract = jax.eval_shape(I3D().init, jax.random.PRNGKey(0), dummy)["params"]
  return tuple((k, tuple(v.shape)) for k, v in frechet.flatten(abstract).items())


def load_params(path) -> dict:
  """The parameters in a local weights file (format in the module docstring)."""
  flat = frechet.read_weights(path, expected_shapes(), "i3d")
  return frechet.unflatten({k: jnp.asarray(v) for k, v in flat.items()})


def make_extractor(params, weights: str = "", output: str = "logits",
                   resolution: int = RESOLUTION) -> frechet.FeatureExtractor:
  """The extractor of `params`; `output` "logits" (the standard FVD) or "pool"."""
  index, name, dim = {"logits": (0, "i3d", NUM_CLASSES),
                      "pool": (1, "i3d_pool", POOL_DIM)}[output]

  def apply(videos):
    return forward(params, jnp.asarray(videos), resolution)[index]

  return frechet.FeatureExtractor(
      name=name, apply=apply, feature_dim=dim, min_frames=MIN_FRAMES, max_frames=None,
      preprocess=f"bilinear (half-pixel) to {resolution}x{resolution}, values [-1, 1]",
      weights=weights)


def extractor(weights=None, output: str = "logits") -> frechet.FeatureExtractor:
  """The registered "i3d" extractor: Kinetics-400 logits of the weights at `weights`."""
  if weights is None:
    raise UserError("the i3d feature extractor needs a local weights file (.npz or "
                    ".safetensors, keys as in lumiere_jax/evaluation/i3d.py); nothing is "
                    "downloaded")
  return make_extractor(load_params(weights), frechet.file_digest(weights), output)


def pool_extractor(weights=None) -> frechet.FeatureExtractor:
  """The registered "i3d_pool" extractor: the 1024-d pooled features under the logits."""
  return extractor(weights, output="pool")


def save_params(path, params) -> None:
  """Writes params in the format `load_params` reads (.npz or .safetensors)."""
  frechet.write_weights(path, params)

