"""The Fréchet distance between Gaussians of video features (FVD when the features are
I3D's), with pluggable feature extractors and scores that carry their settings.

  FD = |mu1 - mu2|^2 + Tr(C1 + C2 - 2 (C1 C2)^{1/2})

(Heusel et al. 2017 for images; Unterthiner et al. 2018 for videos with I3D features).

Tr (C1 C2)^{1/2} is computed without a general matrix square root. C1 C2 = S (S C2)
with S = C1^{1/2}, and AB has the eigenvalues of BA, so C1 C2 has the eigenvalues of
M = S C2 S, which is symmetric positive semi-definite. Hence Tr (C1 C2)^{1/2} =
sum_i sqrt(lambda_i(M)): two symmetric eigen-decompositions (`eigh`, float64), tiny
negative eigenvalues from rounding clipped to 0. Unlike scipy's `sqrtm` of the
non-symmetric C1 C2 this never returns complex parts and needs no `eps * I` offset when
a covariance is singular (fewer clips than features).

An FVD is comparable with another only when both used the same extractor (and weights),
preprocessing, frames, resolution, sample counts and reference set (ANCHORS.md,
Evaluation): `FrechetScore` stores them, `check_comparable` refuses a comparison across
any of them in one line.

Extractors are looked up by name (`EXTRACTORS`, "module:function" so nothing heavy is
imported before it is needed) or by any "package.module:function" a user writes; the
function takes the path of a local weights file (or None for its default) and returns a
`FeatureExtractor`. Nothing is ever downloaded.
"""

import dataclasses
import hashlib
import importlib
import io
import json
import pathlib
from collections.abc import Mapping
from typing import Callable, Optional

import numpy as np

from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic

EXTRACTORS = {
    "i3d": "lumiere_jax.evaluation.i3d:extractor",
    "i3d_pool": "lumiere_jax.evaluation.i3d:pool_extractor",
    "shapes": "lumiere_jax.evaluation.shapes_features:extractor",
}
RANGE_TOLERANCE = 1e-3  # videos may overshoot [0, 1] by this much (rounding)


class SampleError(UserError, ValueError):
  """Too few samples for the statistics asked of them."""


# The distance ---------------------------------------------------------------------------

def gaussian_stats(features) -> tuple:
  """features [N, D] -> (mean [D], covariance [D, D]), float64, unbiased (N - 1)."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {features.shape}")
  if len(features) < 2:
    raise SampleError(f"a covariance needs at least 2 samples, got {len(features)}")
  return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(
      features.shape[1], features.shape[1])


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric PSD matrix (negative rounding clipped)."""
  values, vectors = np.linalg.eigh(_symmetric(matrix))
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
  """Tr (C1 C2)^{1/2} = sum sqrt(eig(S C2 S)), S = C1^{1/2} (module docstring)."""
  root = psd_sqrt(cov1)
  values = np.linalg.eigvalsh(_symmetric(root @ cov2 @ root))
  return float(np.sqrt(np.clip(values, 0.0, None)).sum())


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
  """The Fréchet distance between N(mu1, cov1) and N(mu2, cov2), float64."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
    raise ValueError(f"means and covariances disagree: {mu1.shape}, {cov1.shape}, "
                     f"{mu2.shape}, {cov2.shape}")
  diff = mu1 - mu2
  value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * trace_sqrt_product(cov1, cov2)
  return float(max(value, 0.0))  # >= 0 exactly; rounding can leave -1e-12


def _symmetric(matrix: np.ndarray) -> np.ndarray:
  return (matrix + matrix.T) / 2


# Scores and their settings --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FrechetScore:
  """A Fréchet distance and everything it depends on besides the two video sets.

  `label` says what the generated set is (a pipeline, a checkpoint) and is free to
  differ between scores that are compared; every other field but `value` must match.
  """
  value: float
  extractor: str        # registry name of the feature extractor
  weights: str          # digest of the extractor's weights file ("" if it has none)
  preprocess: str       # how videos reach the network (resize, value range)
  feature_dim: int
  frames: int           # frames per clip of the videos scored
  resolution: tuple     # (H, W) of the videos scored
  num_real: int
  num_fake: int
  reference: str = ""   # what the real set is (e.g. "shapes held-out ground truth, seed 0")
  label: str = ""

  def settings(self) -> dict:
    """The fields that must be equal for two scores to be compared."""
    return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("value", "label")}

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

  @classmethod
  def from_json(cls, text: str, source: str = "score") -> "FrechetScore":
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{source} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
      raise UserError(f"{source} is not a Fréchet score: it holds a {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
    missing, extra = sorted(required - set(data)), sorted(set(data) - fields)
    if missing or extra:
      raise UserError(f"{source} is not a Fréchet score: missing {missing}, unexpected "
                      f"{extra}")
    return cls(**{**data, "resolution": tuple(data["resolution"])})


def write_score(path, score: FrechetScore) -> pathlib.Path:
  atomic.write_text(path, score.to_json())
  return pathlib.Path(path)


def read_score(path) -> FrechetScore:
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"score file {path} does not exist")
  return FrechetScore.from_json(path.read_text(), f"score file {path}")


def check_comparable(a: FrechetScore, b: FrechetScore) -> None:
  """Raises a one-line UserError naming the first setting in which a and b differ."""
  settings_a, settings_b = a.settings(), b.settings()
  for key in settings_a:
    if settings_a[key] != settings_b[key]:
      raise UserError(f"Fréchet scores are not comparable: {key} differs "
                      f"({settings_a[key]!r} vs {settings_b[key]!r})")


def compare(a: FrechetScore, b: FrechetScore) -> float:
  """a.value - b.value, for scores with the same settings (refused otherwise)."""
  check_comparable(a, b)
  return a.value - b.value


# Feature extractors -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
  """videos float32 [B, T, H, W, 3] in [0, 1] -> features [B, feature_dim].

  `apply` does the work (resizing included); calling the extractor checks the videos
  first, so that a wrong range or too few frames is one clear line, not a quiet score.
  """
  name: str
  apply: Callable
  feature_dim: int
  min_frames: int
  max_frames: Optional[int]  # None: any number from min_frames up
  preprocess: str
  weights: str

  def check(self, videos: np.ndarray) -> None:
    if videos.ndim != 5 or videos.shape[-1] != 3:
      raise UserError(f"{self.name} features take videos [B, T, H, W, 3], got "
                      f"{videos.shape}")
    frames = videos.shape[1]
    if frames < self.min_frames or (self.max_frames is not None and frames > self.max_frames):
      allowed = (f"{self.min_frames}" if self.max_frames == self.min_frames else
                 f"at least {self.min_frames}" if self.max_frames is None else
                 f"{self.min_frames} to {self.max_frames}")
      raise UserError(f"{self.name} features need {allowed} frames per clip, got {frames}")
    low, high = float(videos.min()), float(videos.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
      raise UserError(f"{self.name} features take values in [0, 1], got [{low:.3g}, "
                      f"{high:.3g}] (uint8 videos: divide by 255)")

  def __call__(self, videos) -> np.ndarray:
    videos = np.asarray(videos, np.float32)
    self.check(videos)
    return np.asarray(self.apply(np.clip(videos, 0.0, 1.0)), np.float64)


def get_extractor(name: str, weights=None) -> FeatureExtractor:
  """The extractor registered as `name` (or at "package.module:function"), with the
  weights at `weights` (None: the extractor's default)."""
  spec = EXTRACTORS.get(name, name)
  module_name, _, function = spec.partition(":")
  if not function:
    raise UserError(f"no feature extractor named {name!r}; known: {sorted(EXTRACTORS)} "
                    f"(or give package.module:function)")
  try:
    factory = getattr(importlib.import_module(module_name), function)
  except (ImportError, AttributeError) as e:
    raise UserError(f"feature extractor {name!r} cannot be loaded: {e}") from None
  return factory(weights)


def as_videos(videos) -> np.ndarray:
  """uint8 videos -> float32 in [0, 1]; float videos pass (the extractor checks them)."""
  videos = np.asarray(videos)
  if videos.dtype == np.uint8:
    return videos.astype(np.float32) / 255.0
  return videos.astype(np.float32)


def extract(videos, extractor: FeatureExtractor, batch: int = 16) -> np.ndarray:
  """Features [N, D] of videos [N, T, H, W, 3], `batch` clips at a time (the last batch
  padded to the same size, so a jitted extractor compiles once)."""
  videos = as_videos(videos)
  if not len(videos):
    raise SampleError(f"no clips to extract {extractor.name} features from")
  extractor.check(videos)
  batch = min(batch, len(videos))
  chunks = []
  for start in range(0, len(videos), batch):
    chunk = videos[start:start + batch]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
    chunks.append(extractor(padded)[:len(chunk)])
  return np.concatenate(chunks).reshape(len(videos), extractor.feature_dim)


def score_features(real: np.ndarray, fake: np.ndarray, extractor: FeatureExtractor,
                   frames: int, resolution: tuple, reference: str = "", label: str = "",
                   allow_singular: bool = False) -> FrechetScore:
  """The score of two feature sets [N, D] (e.g. ground-truth features computed once and
  scored against several pipelines). Fewer samples than features + 1 make a singular
  covariance (a strongly biased distance): refused unless `allow_singular`."""
  for name, features in (("real", real), ("generated", fake)):
    if not allow_singular and len(features) <= extractor.feature_dim:
      raise SampleError(f"{len(features)} {name} clips give a singular covariance of "
                        f"{extractor.feature_dim} {extractor.name} features; use at least "
                        f"{extractor.feature_dim + 1}")
  value = frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
  return FrechetScore(value=value, extractor=extractor.name, weights=extractor.weights,
                      preprocess=extractor.preprocess, feature_dim=extractor.feature_dim,
                      frames=int(frames), resolution=tuple(int(r) for r in resolution),
                      num_real=len(real), num_fake=len(fake), reference=reference,
                      label=label)


def fvd(real_videos, fake_videos, extractor: FeatureExtractor, batch: int = 16,
        reference: str = "", label: str = "", allow_singular: bool = False) -> FrechetScore:
  """The Fréchet distance between the extractor's features of two video sets, each
  [N, T, H, W, 3] (float in [0, 1] or uint8) with the same T, H and W."""
  real_videos, fake_videos = as_videos(real_videos), as_videos(fake_videos)
  if real_videos.shape[1:] != fake_videos.shape[1:]:
    raise UserError(f"real and generated clips differ in size: {real_videos.shape[1:]} vs "
                    f"{fake_videos.shape[1:]} ([T, H, W, 3])")
  real = extract(real_videos, extractor, batch)
  fake = extract(fake_videos, extractor, batch)
  return score_features(real, fake, extractor, real_videos.shape[1], real_videos.shape[2:4],
                        reference, label, allow_singular)


# Feature-extractor weights: flat {"a/b/kernel": array} files -------------------------------

def flatten(params) -> dict:
  """A nested parameter dict -> {"a/b/kernel": leaf}."""
  flat = {}
  for key, value in params.items():
    if isinstance(value, Mapping):
      flat.update({f"{key}/{k}": v for k, v in flatten(value).items()})
    else:
      flat[key] = value
  return flat


def unflatten(flat: dict) -> dict:
  tree = {}
  for key, value in flat.items():
    *parents, leaf = key.split("/")
    node = tree
    for parent in parents:
      node = node.setdefault(parent, {})
    node[leaf] = value
  return tree


def file_digest(path) -> str:
  """The first 16 hex digits of the SHA-256 of a file: which weights a score used."""
  return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()[:16]


def write_weights(path, params, metadata: Optional[dict] = None) -> pathlib.Path:
  """Writes params (nested or flat) as float32 .safetensors (with string `metadata`) or
  .npz, by the path's suffix, atomically."""
  path = pathlib.Path(path)
  flat = {k: np.ascontiguousarray(v, np.float32) for k, v in flatten(params).items()}
  if path.suffix == ".safetensors":
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
    data = safetensors.numpy.save(flat, metadata={k: str(v) for k, v in
                                                  (metadata or {}).items()})
  elif path.suffix == ".npz":
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    data = buffer.getvalue()
  else:
    raise UserError(f"weights file {path} must end in .safetensors or .npz")
  atomic.write_bytes(path, data)
  return path


def read_weights(path, expected: dict, what: str) -> dict:
  """The flat arrays of a .safetensors or .npz file (no pickles), checked against
  `expected` {key: shape}; float32. Missing or unexpected keys, a wrong shape or an
  unreadable file: one line naming `what` and the file."""
  flat = _read_flat(pathlib.Path(path), what)
  missing, extra = sorted(set(expected) - set(flat)), sorted(set(flat) - set(expected))
  if missing or extra:
    raise UserError(f"{what} weights {path} do not match the network: {len(missing)} "
                    f"missing {missing[:3]}, {len(extra)} unexpected {extra[:3]}")
  wrong = [f"{k} is {tuple(flat[k].shape)}, expected {tuple(expected[k])}"
           for k in sorted(expected) if tuple(flat[k].shape) != tuple(expected[k])]
  if wrong:
    raise UserError(f"{what} weights {path}: {wrong[0]} ({len(wrong)} arrays differ)")
  return {k: v.astype(np.float32) for k, v in flat.items()}


def _read_flat(path: pathlib.Path, what: str) -> dict:
  if not path.is_file():
    raise UserError(f"{what} weights {path} do not exist (nothing is downloaded: give a "
                    f"local .safetensors or .npz file)")
  try:
    if path.suffix == ".npz":
      with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
    if path.suffix == ".safetensors":
      import safetensors.numpy  # pylint: disable=g-import-not-at-top
      return safetensors.numpy.load_file(str(path))
  except Exception as e:  # zip, pickle-refused and safetensors errors all mean "unreadable"
    raise UserError(f"{what} weights {path} are unreadable: {e}") from None
  raise UserError(f"{what} weights {path} must be a .safetensors or .npz file")

