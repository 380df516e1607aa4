"""Temporal MultiDiffusion (LUMIERE.md): windows planned over a clip, and their fusion.

A clip of T frames is covered by windows of W frames that overlap by O: a window starts
every W - O frames and the last one ends at frame T (it may overlap its neighbour by more
than O), so every frame is covered for any T. With T <= W there is one window of T frames.
At every denoising step each window is denoised on its own and every frame takes the
average of the predictions of the windows that cover it: the least-squares solution
  argmin_J sum_i ||w_i (J[window i] - prediction_i)||^2,  J[f] = sum_i w_i[f] p_i[f] / sum_i w_i[f],
with uniform weights (the paper's) or weights that ramp up over the overlaps ('ramp').
The sampler then updates the whole clip with the fused prediction; since every sampler
step is linear in the prediction with coefficients shared by all frames, fusing the
network's output is the same as fusing the windows' next states.

Optionally (not in the paper) the steps take turns over plans whose windows are shifted
(plan_windows(rotate=True); windows that reach past the clip see it reflected and give
those frames no weight), so that no frame pair is a window edge at every step.

Windows are a batch axis: the denoiser sees [N * B, W, ...] (window-major). A plan can be
padded to a multiple of the device count with windows of weight 0, so that
parallel/windows.py can shard them evenly; they cost compute, never change the result.

Pure and model-agnostic: a denoiser is any fn(x [B, T, ...], t [B], cond) (guidance.py);
per-frame conditioning (e.g. the SSR model's low-resolution clip) is split into windows
with x when its name is in `frame_fields`.
"""

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax.diffusion.guidance import Denoiser
from lumiere_jax.errors import UserError

WEIGHTINGS = ("uniform", "ramp")
# The starting noise of a long clip: every frame its own ('independent', the paper's), or
# the first window's noise repeated over the clip ('repeat', see repeated_noise_frames).
NOISE_MODES = ("independent", "repeat")
DEFAULT_OVERLAP = 2


def check_windows(window: int, overlap: int) -> None:
  """A window must hold more frames than it shares with its neighbour."""
  for name, value in (("window", window), ("overlap", overlap)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise UserError(f"{name} must be an integer, got {value!r}")
  if overlap < 0:
    raise UserError(f"overlap must be >= 0 frames, got {overlap}")
  if window <= overlap:
    raise UserError(f"the window ({window} frames) must be larger than the overlap "
                    f"({overlap} frames)")


def check_weighting(weighting: str) -> None:
  if weighting not in WEIGHTINGS:
    raise UserError(f"window weighting {weighting!r} is invalid; allowed: one of "
                    f"{WEIGHTINGS}")


def window_starts(num_frames: int, window: int, overlap: int) -> tuple:
  """First frame of each window: 0, W - O, 2 (W - O), ..., and T - W for the last."""
  check_windows(window, overlap)
  if num_frames < 1:
    raise UserError(f"a clip needs at least one frame, got {num_frames}")
  if num_frames <= window:
    return (0,)
  stride = window - overlap
  count = -(-(num_frames - window) // stride) + 1
  return tuple(min(k * stride, num_frames - window) for k in range(count))


def shifted_window_starts(num_frames: int, window: int, overlap: int, shift: int) -> tuple:
  """Shift 0: window_starts, the paper's plan. Shift 0 < s < W - O: windows every W - O
  frames from s - (W - O) until one ends at or after T, so that no edge of the paper's
  plan stays an edge, not even those of the clip's first and last windows; a window that
  reaches outside the clip sees it reflected at its ends (WindowPlan.indices) and gives
  those frames no weight (WindowPlan.weights)."""
  check_windows(window, overlap)
  stride = window - overlap
  if not 0 <= shift < stride:
    raise ValueError(f"shift must be in [0, {stride}), got {shift}")
  if num_frames <= window or shift == 0:
    return window_starts(num_frames, window, overlap)
  starts = [shift - stride]
  while starts[-1] + window < num_frames:
    starts.append(starts[-1] + stride)
  return tuple(starts)


def check_noise_mode(mode: str) -> None:
  if mode not in NOISE_MODES:
    raise UserError(f"window noise {mode!r} is invalid; allowed: one of {NOISE_MODES}")


def repeated_noise_frames(num_frames: int, window: int, overlap: int,
                          seed: int = 0) -> np.ndarray:
  """[num_frames] int: the frame of the first window whose starting noise each frame
  takes (FreeNoise's noise rescheduling, Qiu et al. 2023; not in the paper). The first
  W frames keep their own; after them, each block of W - O frames takes the sources of
  the block one window earlier, shuffled within the block (a fixed shuffle of `seed`), so
  every window starts from (nearly) the same noise as its neighbours, reordered, and
  windows fused at every step agree on what the clip shows instead of each placing its
  own objects. With num_frames <= W, the identity."""
  check_windows(window, overlap)
  stride = window - overlap
  rng = np.random.default_rng(seed)
  sources = list(range(min(window, num_frames)))
  for start in range(window, num_frames, stride):
    block = sources[start - window:start - window + stride]
    sources.extend(rng.permutation(block)[:num_frames - start].tolist())
  return np.asarray(sources[:num_frames], np.int32)


def frame_weights(window: int, overlap: int, weighting: str = "uniform") -> np.ndarray:
  """Weights [W] of a window's frames: all 1 ('uniform'), or rising as 1/(O+1), 2/(O+1),
  ... over the first O frames and falling likewise over the last O ('ramp'), so a
  window's edge counts less than its neighbour's interior. Positive everywhere: a frame
  that only one window covers (the clip's ends) keeps that window's prediction."""
  check_weighting(weighting)
  if weighting == "uniform":
    return np.ones(window)
  k = np.arange(window)
  return np.minimum(1.0, np.minimum(k + 1, window - k) / (overlap + 1))


@dataclasses.dataclass(frozen=True)
class WindowPlan:
  """Windows over a clip of `num_frames` frames; hashable, so it can shape a compiled
  program. `count` >= len(starts): the extra windows are padding with weight 0."""

  num_frames: int
  window: int  # frames per window: min(W, T)
  overlap: int
  starts: tuple
  count: int
  weighting: str = "uniform"
  # With several: the starts of each denoising step's windows (plan_windows(rotate=True));
  # `starts` is the first of them, the paper's plan.
  step_starts: tuple = ()

  def step_plans(self) -> tuple:
    """The plans that denoising steps use in turn, each with this plan's count: this
    plan alone, or one per shift of the windows (plan_windows(rotate=True))."""
    if len(self.step_starts) < 2:
      return (self,)
    return tuple(dataclasses.replace(self, starts=starts, step_starts=())
                 for starts in self.step_starts)

  def _frames(self) -> np.ndarray:
    """[count, window]: each window's frame numbers, outside [0, T) where a rotating
    plan's window reaches past the clip (padding repeats window 0)."""
    starts = np.array(self.starts + (self.starts[0],) * (self.count - len(self.starts)))
    return starts[:, None] + np.arange(self.window)

  @property
  def indices(self) -> np.ndarray:
    """[count, window] int32: the frames of each window, reflected at the clip's ends
    (frame -j is frame j, frame T - 1 + j is frame T - 1 - j)."""
    frames, last = self._frames(), self.num_frames - 1
    frames = np.abs(frames)
    return np.where(frames > last, 2 * last - frames, frames).astype(np.int32)

  @property
  def weights(self) -> np.ndarray:
    """[count, window] float64 weights before normalisation; 0 for padding windows and
    for the reflected frames outside the clip."""
    weights = np.zeros((self.count, self.window))
    weights[:len(self.starts)] = frame_weights(self.window, self.overlap, self.weighting)
    frames = self._frames()
    return np.where((frames >= 0) & (frames < self.num_frames), weights, 0.0)

  def coverage(self) -> np.ndarray:
    """[num_frames]: the total weight on each frame (> 0 for every frame)."""
    total = np.zeros(self.num_frames)
    np.add.at(total, self.indices, self.weights)
    return total

  def fusion_weights(self) -> np.ndarray:
    """[count, window] float32: each window-frame's share of its frame's average. A frame
    covered by one window gets exactly 1 there, so it keeps that prediction bit for bit."""
    return (self.weights / self.coverage()[self.indices]).astype(np.float32)


def edge_share(plan: WindowPlan) -> np.ndarray:
  """[T - 1]: the share of the plan's step plans in which the step from frame f to f + 1
  crosses a window edge (a window starts or ends at f + 1), where independent windows
  would show a jump: 0 or 1 for a fixed plan, between for rotating windows."""
  counts = np.zeros(max(plan.num_frames - 1, 0), int)
  steps = plan.step_plans()
  for step in steps:
    edges = {e for s in step.starts for e in (s, s + step.window) if 0 < e < plan.num_frames}
    counts[[e - 1 for e in sorted(edges)]] += 1
  return counts / len(steps)


def seam_transitions(plan: WindowPlan) -> np.ndarray:
  """[T - 1] bool: whether the step from frame f to f + 1 crosses a window edge in any of
  the plan's step plans. The frame-to-frame change there, against the change inside
  windows, measures the seams."""
  return edge_share(plan) > 0


def plan_windows(num_frames: int, window: int, overlap: int = DEFAULT_OVERLAP,
                 weighting: str = "uniform", multiple_of: int = 1,
                 rotate: bool = False) -> WindowPlan:
  """The windows covering `num_frames` frames, padded to a multiple of `multiple_of`
  (the devices that share them). With `rotate`, denoising steps take turns over the
  plans of every shift of the windows (shifted_window_starts; StreamingT2V redraws its
  cut inside the overlap every step likewise), so no frame pair is a window edge at
  every step; not in the paper. Each step is still the least-squares fusion of its
  windows."""
  starts = window_starts(num_frames, window, overlap)
  check_weighting(weighting)
  if multiple_of < 1:
    raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
  step_starts = ()
  if rotate and num_frames > window:
    step_starts = tuple(dict.fromkeys(
        shifted_window_starts(num_frames, window, overlap, shift)
        for shift in range(window - overlap)))
  most = max([len(starts)] + [len(s) for s in step_starts])
  count = -(-most // multiple_of) * multiple_of
  return WindowPlan(num_frames, min(window, num_frames), overlap, starts, count, weighting,
                    step_starts if len(step_starts) > 1 else ())


def gather_windows(x, indices) -> jax.Array:
  """x [B, T, ...] -> the windows [n * B, W, ...], window-major."""
  windows = jnp.moveaxis(x[:, indices], 1, 0)  # [n, B, W, ...]
  return windows.reshape((-1,) + windows.shape[2:])


def repeat_per_window(tree, count: int):
  """Per-example leaves [B, ...] -> [count * B, ...], window-major like gather_windows."""
  return jax.tree_util.tree_map(
      lambda a: jnp.broadcast_to(a[None], (count,) + a.shape).reshape((-1,) + a.shape[1:]),
      tree)


def evaluate_windows(denoiser: Denoiser, x, t, cond, indices,
                     frame_fields: Sequence[str] = ()) -> jax.Array:
  """Each window's prediction, [n, B, W, ...]: one denoiser call on the n windows of every
  example as a batch. `cond` entries named in `frame_fields` have a frame axis (axis 1)
  and are cut into windows with x; the others are repeated per window."""
  count = indices.shape[0]
  windows = gather_windows(x, indices)
  cond = dict(cond) if frame_fields else cond
  per_frame = {name: gather_windows(cond.pop(name), indices) for name in frame_fields}
  cond = repeat_per_window(cond, count)
  if frame_fields:
    cond.update(per_frame)
  out = denoiser(windows, repeat_per_window(t, count), cond)
  return out.reshape((count, x.shape[0]) + out.shape[1:])


def fuse(predictions, indices, weights, num_frames: int) -> jax.Array:
  """Window predictions [n, B, W, ...] -> sum over windows of weight x prediction, placed
  at their frames: [B, T, ...]. With the plan's fusion weights and all windows this is
  the per-frame average; on a share of the windows it is that share's part of the sum."""
  w = jnp.asarray(weights, predictions.dtype)
  w = w.reshape(w.shape[:1] + (1,) + w.shape[1:] + (1,) * (predictions.ndim - 3))
  weighted = jnp.moveaxis(jnp.where(w > 0, w * predictions, 0.0), 0, 1)  # [B, n, W, ...]
  b = predictions.shape[1]
  total = jnp.zeros((b, num_frames) + predictions.shape[3:], predictions.dtype)
  return total.at[:, indices].add(weighted)


def step_index(t, count: int):
  """Which of `count` step plans the denoising step at time t [B] uses: floor(t count)
  mod count, so the steps of a uniform time grid spread evenly over the plans (t = 1
  takes the first, the paper's plan) and every call at one time (a guided pair) fuses
  alike, for any sampler."""
  if count == 1:
    return 0
  t0 = jnp.asarray(t, jnp.float32).reshape(-1)[0]
  return jnp.floor(t0 * count).astype(jnp.int32) % count


def plan_tables(plan: WindowPlan):
  """A function of t [B] -> (indices, fusion weights) of that step's windows: the plan's
  own constants, or with rotating windows a row of their stacked tables."""
  steps = plan.step_plans()
  if len(steps) == 1:
    return lambda t: (plan.indices, plan.fusion_weights())
  indices = np.stack([p.indices for p in steps])
  weights = np.stack([p.fusion_weights() for p in steps])

  def tables(t):
    i = step_index(t, len(steps))
    return jnp.asarray(indices)[i], jnp.asarray(weights)[i]

  return tables


def windowed_denoiser(denoiser: Denoiser, plan: WindowPlan,
                      frame_fields: Sequence[str] = ()) -> Denoiser:
  """A denoiser of whole clips [B, T, ...] that runs `denoiser` on the plan's windows (one
  batch on one device) and returns the fused prediction."""
  tables = plan_tables(plan)

  def fused(x, t, cond):
    indices, weights = tables(t)
    predictions = evaluate_windows(denoiser, x, t, cond, indices, frame_fields)
    return fuse(predictions, indices, weights, plan.num_frames)

  return fused
