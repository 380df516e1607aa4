"""Temporal MultiDiffusion (diffusion/windows.py, parallel/windows.py): window planning,
fusion as least squares, the identity property, W >= T equal to plain sampling, and the
window-sharded fusion on 8 forced CPU devices equal to the one-device batch."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lumiere_jax.diffusion import samplers, schedules
from lumiere_jax.diffusion import windows
from lumiere_jax.errors import UserError
from lumiere_jax.parallel import windows as parallel_windows
from lumiere_jax.parallel.mesh import make_mesh

NUM_DEVICES = 8
WINDOW_OVERLAPS = [(1, 0), (2, 1), (3, 0), (4, 2), (5, 2), (8, 2), (8, 5), (16, 2)]


def test_paper_plan_80_frames_in_16_frame_windows():
  assert windows.window_starts(80, 16, 2) == (0, 14, 28, 42, 56, 64)
  assert windows.window_starts(16, 16, 2) == (0,)
  plan = windows.plan_windows(10, 16, 2)
  assert plan.starts == (0,) and plan.window == 10 and plan.count == 1


@pytest.mark.parametrize("window,overlap", WINDOW_OVERLAPS)
def test_windows_cover_every_frame_and_the_last_ends_at_t(window, overlap):
  for frames in range(1, 41):
    plan = windows.plan_windows(frames, window, overlap, multiple_of=3)
    starts = np.array(plan.starts)
    assert starts[0] == 0 and starts[-1] + plan.window == frames
    assert plan.window == min(window, frames)
    # neighbours overlap by at least O frames: no gap, and each seam is O frames wide
    assert np.all(np.diff(starts) > 0) and np.all(np.diff(starts) <= window - overlap)
    assert len(starts) == 1 or np.all(starts[:-2] + window - starts[1:-1] == overlap)
    assert plan.count % 3 == 0 and plan.count - len(starts) < 3
    assert np.all(plan.weights[len(starts):] == 0)
    np.testing.assert_array_less(0, plan.coverage())


@pytest.mark.parametrize("weighting", windows.WEIGHTINGS)
def test_fusion_is_the_least_squares_solution(weighting):
  """argmin_J sum_i ||sqrt(w_i) (J[frames_i] - P_i)||^2, solved by numpy, on random
  predictions of windows that overlap by more than O in places (the last window)."""
  plan = windows.plan_windows(23, 8, 3, weighting, multiple_of=4)
  rng = np.random.default_rng(0)
  predictions = rng.standard_normal((plan.count, 2, plan.window, 3)).astype(np.float32)
  fused = np.asarray(windows.fuse(jnp.asarray(predictions), plan.indices,
                                  plan.fusion_weights(), plan.num_frames))
  rows = np.zeros((plan.count * plan.window, plan.num_frames))
  rows[np.arange(rows.shape[0]), plan.indices.ravel()] = 1.0
  root = np.sqrt(plan.weights.ravel())[:, None]
  targets = np.moveaxis(predictions, 1, 2).reshape(plan.count * plan.window, -1)
  solution, *_ = np.linalg.lstsq(root * rows, root * targets, rcond=None)
  expected = np.moveaxis(solution.reshape(plan.num_frames, 2, 3), 0, 1)
  np.testing.assert_allclose(fused, expected, rtol=1e-5, atol=1e-6)


@functools.partial(jax.jit, static_argnums=3)
def _fuse(predictions, indices, weights, num_frames):
  return windows.fuse(predictions, indices, weights, num_frames)


@pytest.mark.parametrize("weighting", windows.WEIGHTINGS)
def test_identical_predictions_come_back_unchanged(weighting):
  """Every window predicts the same clip: fusion returns it, for every T in 1..40, each
  (W, O) and weighting, with the plan padded to 40 windows (zero-weight padding included).
  Plans are padded to one shape so that a (W, O) compiles once for every T."""
  rng = np.random.default_rng(1)
  clip = rng.uniform(-1, 1, (2, 40, 3)).astype(np.float32)
  for window, overlap in WINDOW_OVERLAPS:
    for frames in range(1, 41):
      plan = windows.plan_windows(frames, window, overlap, weighting, multiple_of=40)
      predictions = np.moveaxis(clip[:, plan.indices], 1, 0)  # [N, B, W, C]
      fused = np.asarray(_fuse(predictions, plan.indices, plan.fusion_weights(), 40))
      np.testing.assert_allclose(fused[:, :frames], clip[:, :frames], rtol=2e-6, atol=1e-7,
                                 err_msg=f"T={frames} W={window} O={overlap}")
      assert not fused[:, frames:].any()


@pytest.mark.parametrize("window,overlap", WINDOW_OVERLAPS)
def test_every_rotating_step_plan_covers_the_clip_and_fuses_identity(window, overlap):
  """Rotating windows (plan_windows(rotate=True)), every T in 1..40: shift 0 is the
  paper's plan; every other step plan tiles windows W - O apart from at or before frame
  0 to at or after T, reads only frames of the clip (reflected at its ends), gives the
  reflected frames no weight, covers every frame, and returns identical predictions
  unchanged."""
  rng = np.random.default_rng(2)
  clip = rng.uniform(-1, 1, (1, 40, 3)).astype(np.float32)
  for frames in range(1, 41):
    plan = windows.plan_windows(frames, window, overlap, "ramp", multiple_of=40, rotate=True)
    steps = plan.step_plans()
    assert steps[0].starts == windows.window_starts(frames, window, overlap)
    assert len(steps) == (1 if frames <= window else window - overlap)
    for step in steps[1:]:
      starts = np.array(step.starts)
      assert starts[0] <= 0 < starts[0] + window and starts[-1] + window >= frames
      assert np.all(np.diff(starts) == window - overlap)
      outside = (step.indices != np.array(step.starts + (step.starts[0],) * (
          step.count - len(step.starts)))[:, None] + np.arange(window))
      assert np.all(step.weights[outside] == 0)
    for step in steps:
      assert step.count == plan.count
      assert step.indices.min() >= 0 and step.indices.max() < frames
      np.testing.assert_array_less(0, step.coverage())
      predictions = np.moveaxis(clip[:, step.indices], 1, 0)
      fused = np.asarray(_fuse(predictions, step.indices, step.fusion_weights(), 40))
      np.testing.assert_allclose(fused[:, :frames], clip[:, :frames], rtol=2e-6, atol=1e-7,
                                 err_msg=f"T={frames} W={window} O={overlap} {step.starts}")


def test_rotating_windows_leave_no_transition_an_edge_at_every_step():
  """T = 20, W = 8, O = 2: the paper's plan, then shifts 1..5 with the first window
  reaching before the clip (reflected): every transition is an edge at some steps, none
  at more than a third of them (the paper's plan alone: four at every step)."""
  plan = windows.plan_windows(20, 8, 2, rotate=True)
  assert [p.starts for p in plan.step_plans()] == [
      (0, 6, 12), (-5, 1, 7, 13), (-4, 2, 8, 14), (-3, 3, 9, 15), (-2, 4, 10, 16),
      (-1, 5, 11, 17)]
  assert plan.count == 4 and plan.starts == (0, 6, 12)
  np.testing.assert_array_equal(plan.step_plans()[1].indices[0], [5, 4, 3, 2, 1, 0, 1, 2])
  np.testing.assert_array_equal(plan.step_plans()[1].indices[-1],
                                [13, 14, 15, 16, 17, 18, 19, 18])
  share = windows.edge_share(plan)
  assert np.all(share > 0) and share.max() == pytest.approx(1 / 3)
  fixed = windows.plan_windows(20, 8, 2)
  np.testing.assert_array_equal(windows.edge_share(fixed), windows.seam_transitions(fixed))
  assert np.flatnonzero(windows.edge_share(fixed) == 1).tolist() == [5, 7, 11, 13]


def test_steps_of_a_uniform_grid_take_turns_over_the_plans():
  """floor(t P) mod P: t = 1 takes the paper's plan; 12 steps over 6 plans use each
  twice; a guided pair at one time uses one plan."""
  times = np.linspace(1.0, 0.0, 13, dtype=np.float32)[:-1]
  used = [int(windows.step_index(jnp.full((2,), t), 6)) for t in times]
  assert used[0] == 0 and sorted(used) == sorted(list(range(6)) * 2)
  assert windows.step_index(jnp.ones(3), 1) == 0


def test_a_rotating_denoiser_fuses_each_step_over_that_steps_plan():
  x, _, cond = _inputs(frames=20)
  plan = windows.plan_windows(20, 8, 2, "ramp", rotate=True)
  rotating = jax.jit(windows.windowed_denoiser(_denoiser, plan, ("extra",)))
  outputs = []
  for t in (1.0, 0.5, 0.34, 0.05):
    tb = jnp.full((2,), t, jnp.float32)
    step = plan.step_plans()[int(windows.step_index(tb, 6))]
    fixed = windows.windowed_denoiser(_denoiser, step, ("extra",))
    np.testing.assert_allclose(rotating(x, tb, cond), fixed(x, tb, cond), rtol=1e-6,
                               atol=1e-6)
    outputs.append(np.asarray(rotating(x, tb, cond)))
  # not one plan in disguise: the same input fused over two step plans differs
  tb = jnp.full((2,), 0.5, jnp.float32)
  other = windows.windowed_denoiser(_denoiser, plan.step_plans()[0], ("extra",))
  assert not np.allclose(rotating(x, tb, cond), other(x, tb, cond), atol=1e-3)


def test_frames_covered_by_one_window_keep_its_prediction_exactly():
  plan = windows.plan_windows(30, 8, 2, "ramp")
  predictions = jax.random.normal(jax.random.key(0), (plan.count, 1, 8, 2))
  fused = windows.fuse(predictions, plan.indices, plan.fusion_weights(), 30)
  counts = np.zeros(30, int)
  np.add.at(counts, plan.indices, 1)
  for i, start in enumerate(plan.starts):
    for k in range(8):
      if counts[start + k] == 1:
        np.testing.assert_array_equal(fused[0, start + k], predictions[i, 0, k])


@pytest.mark.parametrize("frames,window,overlap", [(48, 16, 8), (48, 16, 2), (80, 16, 4),
                                                  (23, 8, 3), (9, 4, 1), (12, 16, 2)])
def test_repeated_noise_gives_each_window_the_first_windows_noise(frames, window, overlap):
  """FreeNoise's rescheduling: the first window keeps its noise; each later block of
  W - O frames is a shuffle of the sources one window earlier; so every window that
  starts at a multiple of W - O holds each of the first window's noises exactly once."""
  sources = windows.repeated_noise_frames(frames, window, overlap)
  first = min(window, frames)
  assert sources.shape == (frames,)
  np.testing.assert_array_equal(sources[:first], np.arange(first))
  stride = window - overlap
  for start in range(window, frames, stride):
    block = sources[start:start + stride]
    earlier = sources[start - window:start - window + stride]
    if len(block) == stride:
      assert sorted(block) == sorted(earlier)
    else:  # the clip's last, cut block: a part of the shuffle
      assert set(block) <= set(earlier) and len(set(block)) == len(block)
  for start in range(0, frames - window + 1, stride):
    assert sorted(sources[start:start + window]) == list(range(window))
  if frames > window:  # shuffled, not a plain tiling
    assert not np.array_equal(sources[window:2 * window], np.arange(window)[:len(sources[window:2 * window])])


def test_bad_window_noise_is_refused():
  with pytest.raises(UserError, match="window noise 'shared' is invalid"):
    windows.check_noise_mode("shared")


def test_seams_are_the_window_edges():
  plan = windows.plan_windows(20, 8, 2)  # windows [0, 8), [6, 14), [12, 20)
  assert np.flatnonzero(windows.seam_transitions(plan)).tolist() == [5, 7, 11, 13]
  assert not windows.seam_transitions(windows.plan_windows(8, 8, 2)).any()


def test_ramp_weights_favour_window_interiors():
  np.testing.assert_allclose(windows.frame_weights(8, 2, "ramp"),
                             [1 / 3, 2 / 3, 1, 1, 1, 1, 2 / 3, 1 / 3])
  np.testing.assert_array_equal(windows.frame_weights(8, 2), np.ones(8))


@pytest.mark.parametrize("window,overlap,match", [
    (2, 2, "must be larger than the overlap"), (4, -1, "overlap must be >= 0"),
    (0, 0, "must be larger than the overlap"), (4.5, 2, "window must be an integer")])
def test_bad_windows_are_refused(window, overlap, match):
  with pytest.raises(UserError, match=match):
    windows.plan_windows(16, window, overlap)


def _denoiser(x, t, cond):
  """Per example, nonlinear, mixes the frames of its input (so windows differ from the
  whole clip), reads the text and a per-frame conditioning entry."""
  h = x + jnp.roll(x, 1, axis=1) * 0.5 + cond["extra"]
  emb = jnp.sum(cond["emb"], axis=(1, 2))
  return jnp.tanh(h * (1.0 + t[:, None, None, None, None]) + emb[:, None, None, None, None])


def _inputs(batch=2, frames=12, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(keys[0], (batch, frames, 4, 4, 3))
  cond = {"emb": jax.random.normal(keys[1], (batch, 3, 5)),
          "extra": jax.random.normal(keys[2], (batch, frames, 4, 4, 3))}
  return x, jax.random.uniform(keys[3], (batch,)), cond


def test_per_frame_conditioning_is_windowed_with_the_clip():
  """A denoiser that returns its per-frame input: every window's prediction is that of
  the whole clip, so the fused prediction is the whole clip's."""
  x, t, cond = _inputs()
  plain = lambda x, t, cond: x + cond["extra"]
  plan = windows.plan_windows(12, 4, 2)
  fused = windows.windowed_denoiser(plain, plan, frame_fields=("extra",))(x, t, cond)
  np.testing.assert_allclose(fused, x + cond["extra"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["dpmpp", "ddpm"])
@pytest.mark.parametrize("window,rotate", [(12, False), (16, False), (12, True)])
def test_window_at_least_the_clip_equals_plain_sampling_exactly(method, window, rotate):
  x, _, cond = _inputs()
  keys = jax.random.split(jax.random.key(5), 2)
  settings = samplers.SamplerSettings(method, steps=4)
  schedule = schedules.cosine_schedule()
  plan = windows.plan_windows(12, window, 2, rotate=rotate)
  windowed = windows.windowed_denoiser(_denoiser, plan, frame_fields=("extra",))
  run = jax.jit(lambda d: samplers.sample(d, x, cond, keys, schedule, settings),
                static_argnums=0)
  np.testing.assert_array_equal(run(windowed), run(_denoiser))


def test_windows_change_the_result_when_the_clip_is_longer():
  """The property above is not vacuous: with W < T the model sees windows, whose
  predictions differ from a whole-clip call for a frame-mixing denoiser."""
  x, t, cond = _inputs()
  windowed = windows.windowed_denoiser(_denoiser, windows.plan_windows(12, 4, 2),
                                       frame_fields=("extra",))
  assert not np.allclose(windowed(x, t, cond), _denoiser(x, t, cond), atol=1e-3)


@pytest.mark.parametrize("frames,window,overlap", [(12, 4, 2), (20, 4, 2), (40, 6, 2),
                                                  (23, 8, 3), (5, 8, 2)])
def test_window_sharded_fusion_equals_one_device(frames, window, overlap):
  """Window counts 5, 9, 10, 4 and 1 on 8 devices (padded to 8 or 16 windows)."""
  assert jax.device_count() == NUM_DEVICES  # tests/conftest.py
  mesh = make_mesh(_mesh_config())
  axes = parallel_windows.window_mesh_axes(mesh, ())
  assert axes == ("data",) and parallel_windows.window_devices(mesh, axes) == NUM_DEVICES
  x, t, cond = _inputs(frames=frames)
  local = windows.windowed_denoiser(
      _denoiser, windows.plan_windows(frames, window, overlap), ("extra",))
  plan = windows.plan_windows(frames, window, overlap, multiple_of=NUM_DEVICES)
  sharded = parallel_windows.make_windowed_denoiser(_denoiser, plan, mesh, axes, ("extra",))
  compiled = jax.jit(sharded).lower(x, t, cond).compile()
  assert compiled.as_text().count("all-reduce(") == 1  # the one psum of the shares
  np.testing.assert_allclose(compiled(x, t, cond), jax.jit(local)(x, t, cond), rtol=1e-6,
                             atol=1e-6)


@pytest.mark.parametrize("rotate", [False, True])
def test_window_sharded_sampling_equals_one_device(rotate):
  """With rotating windows too: 6 step plans of up to 4 windows, padded to 8."""
  mesh = make_mesh(_mesh_config())
  x, _, cond = _inputs(frames=20)
  keys = jax.random.split(jax.random.key(7), 2)
  settings = samplers.SamplerSettings("ddpm", steps=6 if rotate else 3)
  schedule = schedules.cosine_schedule()
  sharded = parallel_windows.make_windowed_denoiser(
      _denoiser, windows.plan_windows(20, 8, 2, multiple_of=NUM_DEVICES, rotate=rotate),
      mesh, ("data",), ("extra",))
  local = windows.windowed_denoiser(
      _denoiser, windows.plan_windows(20, 8, 2, rotate=rotate), ("extra",))
  run = jax.jit(lambda d: samplers.sample(d, x, cond, keys, schedule, settings),
                static_argnums=0)
  np.testing.assert_allclose(run(sharded), run(local), rtol=1e-5, atol=1e-5)


def test_sharding_refuses_a_plan_not_padded_for_the_devices():
  mesh = make_mesh(_mesh_config())
  with pytest.raises(ValueError, match="multiple_of=8"):
    parallel_windows.sharded_windowed_denoiser(_denoiser, windows.plan_windows(20, 8, 2),
                                               mesh, ("data",))


def test_window_axes_follow_the_rules():
  mesh = make_mesh(_mesh_config((2, 4, 1)))
  assert parallel_windows.window_mesh_axes(mesh, (("window", ("data", "fsdp")),)) == \
      ("data", "fsdp")
  assert parallel_windows.window_mesh_axes(mesh, (("window", "fsdp"),)) == ("fsdp",)
  assert parallel_windows.window_mesh_axes(mesh, (("window", None),)) == ()
  assert parallel_windows.window_mesh_axes(mesh, ()) == ("data", "fsdp")  # no rule: all


def _mesh_config(shape=(-1, 1, 1)):
  return ml_collections.ConfigDict({"axes": ("data", "fsdp", "tensor"), "shape": shape})
