"""The train step and state in one process on forced CPU devices: fsdp + tensor sharding
against a single device, restoring onto a smaller mesh, frozen weights absent from the
compiled program, non-finite steps, the schedule and the EMA rule.

The sharded-step and restore tests use a micro STUNet with two spatial levels and one
temporal down-sampling (4 -> 2 frames), and start from trained-looking temporal weights:
at init every inflation block is x + 0 and every resampler the identity, so neither a bug
inside them nor a wrong first update (zero during warm-up) could show."""

import collections
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import test_train_support as support
import trained_weights
from lumiere_jax.models import build
from lumiere_jax.parallel import sharding as sharding_lib
from lumiere_jax.parallel.mesh import make_mesh
from lumiere_jax.train import checkpoint
from lumiere_jax.train import optimizer as optimizer_lib
from lumiere_jax.train import state as state_lib
from lumiere_jax.train import step as step_lib
from lumiere_jax.train.loss import make_loss_fn

BATCH = 4
# Two spatial levels, so that a temporal down-sampling (and up-sampling) runs in the step.
TEMPORAL_DOWN = ("model.block_out_channels=(8, 8)", "model.cross_attention_levels=(False, False)",
                 "model.temporal.down_levels=(True,)")


def _setup(config, devices, loss_fn=None):
  mesh = make_mesh(config.mesh, devices)
  layout = state_lib.Layout(config, mesh, optimizer_lib.make_optimizer(config.train))
  jitted = step_lib.jit_train_step(config, mesh, loss_fn or make_loss_fn(config),
                                   layout.optimizer, layout.state_shardings)
  return layout, jitted


def _batch(config, size=BATCH) -> dict:
  rng = np.random.default_rng(0)
  r, t = config.data.resolution, config.data.num_frames
  return {"video": rng.integers(0, 256, (size, t, r, r, 3), dtype=np.uint8),
          "tokens": rng.integers(3, config.text.vocab_size, (size, config.text.max_length),
                                 dtype=np.int32)}


def _run_step(layout, jitted, state, batch):
  config, mesh = layout.config, layout.mesh
  batch = jax.device_put(batch, step_lib.batch_sharding(config, mesh))
  rng = jax.device_put(jax.random.key(1), jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  with sharding_lib.activation_sharding(mesh, config.logical_axis_rules):
    return jitted(state, batch, rng)


def _sharded_config(mesh_shape, *overrides):
  return support.micro_config("t2v", f"data.batch_size={BATCH}", f"mesh.shape={mesh_shape}",
                              *overrides)


WARMUP = 2
STEPS = 3
# Peak learning rate of the sharded-step comparison: each update (about the learning rate
# per weight, Adam) is then two orders of magnitude above the comparison's tolerance.
LEARNING_RATE = 1e-2


def _temporal_config(mesh_shape, *overrides):
  return _sharded_config(mesh_shape, *TEMPORAL_DOWN, f"train.warmup_steps={WARMUP}",
                         f"train.learning_rate={LEARNING_RATE}", *overrides)


def _trained_host_state(config):
  """A host state past warm-up (step WARMUP) whose temporal weights and EMA are two
  different trained-looking perturbations of the init."""
  layout, _ = _setup(config, jax.devices()[:1])
  state = jax.device_get(state_lib.init_state(layout, jax.random.key(0)))
  return state.replace(step=np.int32(WARMUP),
                       params=trained_weights.perturbed(state.params, seed=1),
                       ema=trained_weights.perturbed(state.params, seed=2))


def _run_steps(mesh_shape, devices, initial) -> tuple:
  """(host state after STEPS steps from `initial`, per-step metrics, layout)."""
  config = _temporal_config(mesh_shape)
  layout, jitted = _setup(config, devices)
  state = jax.device_put(initial, layout.state_shardings)
  batch = _batch(config)
  history = []
  for _ in range(STEPS):
    state, metrics = _run_step(layout, jitted, state, batch)
    history.append(jax.device_get(metrics))
  return state, history, layout


def test_sharded_steps_match_a_single_device():
  """Several steps after warm-up, temporal down-sampling on, trained-looking temporal
  weights: parameters, EMA, Adam moments and counters of the 8-device run equal the
  1-device run's, and the updates are far larger than the tolerance."""
  initial = _trained_host_state(_temporal_config((1, 1, 1)))
  state, history, layout = _run_steps((2, 2, 2), jax.devices(), initial)
  single, single_history, _ = _run_steps((1, 1, 1), jax.devices()[:1], initial)
  assert layout.mesh.shape == {"data": 2, "fsdp": 2, "tensor": 2}
  # The state really is split over 'fsdp' and 'tensor': a cross-attention key kernel and
  # the temporal down-sampling kernel (time taps whole, channels split).
  kernel = state.frozen["backbone"]["mid_block"]["attentions_0"]["transformer_blocks_0"][
      "attn2"]["to_k"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert len({s.device for s in kernel.addressable_shards}) == 8
  down = state.params["temporal"]["downsample_0"]["conv"]["kernel"]
  assert down.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  for metrics in history + single_history:
    assert metrics["finite"] and metrics["learning_rate"] > 0.5 * LEARNING_RATE
  # Equal up to float reassociation in the sharded reductions.
  np.testing.assert_allclose([m["loss"] for m in history],
                             [m["loss"] for m in single_history], rtol=1e-5)
  np.testing.assert_allclose([m["grad_norm"] for m in history],
                             [m["grad_norm"] for m in single_history], rtol=1e-4)
  state, single = jax.device_get(state), jax.device_get(single)
  assert int(state.step) == WARMUP + STEPS
  chex.assert_trees_all_close(state, single, rtol=1e-4, atol=1e-6)
  # Not equal by construction: every trainable tensor moved, and the EMA moved towards
  # the parameters, each by far more than the tolerance above (measured: at least 99
  # times it; the two runs differ by at most 0.08 times it).
  for name, now, before in (("params", state.params, initial.params),
                            ("ema", state.ema, initial.ema)):
    flat_now = jax.tree_util.tree_leaves_with_path(now)
    for (path, leaf), old in zip(flat_now, jax.tree_util.tree_leaves(before)):
      moved = np.abs(leaf - old).max()
      assert moved > 50 * (1e-6 + 1e-4 * np.abs(old).max()), (name, path, moved)


def test_restore_onto_four_devices_is_exact(tmp_path):
  """Every leaf random (the temporal down-sampling kernels included): nothing is
  restored into the wrong place or re-initialised."""
  config = _sharded_config((2, 2, 2), *TEMPORAL_DOWN)
  data_dir = support.build_dataset(tmp_path / "data")
  saved = support.save_random_checkpoint(config, tmp_path, 3, data_dir)
  assert "downsample_0" in saved.params["temporal"]
  small = _sharded_config((1, 2, 2), *TEMPORAL_DOWN)
  layout = state_lib.Layout(small, make_mesh(small.mesh, jax.devices()[:4]),
                            optimizer_lib.make_optimizer(small.train))
  manager = checkpoint.make_manager(tmp_path / checkpoint.CHECKPOINTS)
  restored = checkpoint.restore(manager, 3, small, layout.state_target())
  manager.close()
  for leaf, sharding in zip(jax.tree_util.tree_leaves(restored),
                            jax.tree_util.tree_leaves(layout.state_shardings)):
    assert leaf.sharding == sharding and leaf.sharding.mesh.devices.size == 4
  assert restored.frozen["backbone"]["conv_in"]["kernel"].sharding.spec == \
      jax.sharding.PartitionSpec(None, None, None, "tensor")
  chex.assert_trees_all_equal(jax.device_get(restored), saved)


def _matmul_output_shapes(hlo: str) -> collections.Counter:
  """Output shapes (as sorted dims) of every dot and convolution of an HLO module, but the
  0/1 selection matmuls (GroupNorm's group sums, repeat_rows' derivative), which move data
  and whose [B, C] outputs can have a kernel's shape."""
  from lumiere_jax.models import layers
  shapes = [m.group(1) for line in hlo.splitlines() if layers.SELECTION_SCOPE not in line
            for m in [re.search(r"= \w+\[([\d,]*)\]\S* (?:dot|convolution)\(", line)] if m]
  return collections.Counter(tuple(sorted(int(d) for d in s.split(",") if d)) for s in shapes)


def _compile_abstract(config, batch, rng):
  layout, jitted = _setup(config, jax.devices()[:1])
  compiled = step_lib.compile_train_step(config, layout.mesh, jitted, layout.state_target(),
                                         batch, rng)[1]
  return layout, compiled


@pytest.fixture
def uncached_compiles():
  """Compiles from scratch: the persistent compilation cache does not key on op names, so a
  cached executable's HLO text can carry the names of the version that compiled it (a
  renamed named scope would then go unseen)."""
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  yield
  jax.config.update("jax_enable_compilation_cache", before)


def test_compiled_t2v_step_computes_no_frozen_weight_gradients(uncached_compiles):
  config = _sharded_config((1, 1, 1))
  everything = _sharded_config((1, 1, 1), "train.trainable=('backbone','temporal','text')")
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in _batch(config).items()}
  rng = jax.random.key(0)
  layout, t2v = _compile_abstract(config, batch, rng)
  _, whole = _compile_abstract(everything, batch, rng)
  forward = jax.jit(make_loss_fn(config)).lower(layout.params_target(), batch, rng).compile()

  # Kernel shapes that only frozen parameters have: a dot or convolution producing one
  # of them beyond what the forward pass itself produces would be a weight gradient.
  def kernel_shapes(tree):
    return {tuple(sorted(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)
            if leaf.ndim >= 2}

  abstract = layout.abstract_state
  frozen_only = kernel_shapes(abstract.frozen) - kernel_shapes(abstract.params)
  assert frozen_only

  def count(compiled):
    shapes = _matmul_output_shapes(compiled.as_text())
    return sum(shapes[s] for s in frozen_only)

  assert count(t2v) == count(forward)
  assert count(whole) > count(forward)  # the check does see weight gradients
  assert t2v.cost_analysis()["flops"] < whole.cost_analysis()["flops"]


def test_non_finite_step_is_skipped_and_counted():
  def poisoned(params, batch, rng):
    loss, metrics = support.cheap_loss(params, batch, rng)
    return loss + jnp.sum(batch["poison"]), metrics

  layout, jitted = _setup(_sharded_config((1, 1, 1)), jax.devices()[:1], poisoned)
  state = jax.device_put(support.random_state(layout, step=0), layout.state_shardings)
  clean = {**_batch(layout.config), "poison": np.zeros((BATCH,), np.float32)}
  nan = {**clean, "poison": np.full((BATCH,), np.nan, np.float32)}

  state, _ = _run_step(layout, jitted, state, clean)
  before = jax.device_get(state)
  state, metrics = _run_step(layout, jitted, state, nan)
  after = jax.device_get(state)
  assert not metrics["finite"]
  chex.assert_trees_all_equal((after.params, after.opt_state, after.ema),
                              (before.params, before.opt_state, before.ema))
  assert (after.step, after.nonfinite_run, after.nonfinite_total) == (2, 1, 1)

  state, metrics = _run_step(layout, jitted, state, clean)
  later = jax.device_get(state)
  assert metrics["finite"] and (later.nonfinite_run, later.nonfinite_total) == (0, 1)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(later.params),
                                                      jax.tree_util.tree_leaves(after.params)))


def test_schedule_warms_up_then_decays_to_the_end_fraction():
  config = support.micro_config("t2i", "train.num_steps=1000", "train.warmup_steps=100",
                                "train.learning_rate=0.001",
                                "train.end_learning_rate_fraction=0.1")
  schedule = optimizer_lib.learning_rate_schedule(config.train)
  np.testing.assert_allclose([schedule(0), schedule(50), schedule(100), schedule(1000)],
                             [0.0, 5e-4, 1e-3, 1e-4], rtol=1e-5)
  assert schedule(500) < schedule(200)


def test_a_group_learning_rate_scale_multiplies_that_groups_updates_only():
  """train.learning_rate_scales=('temporal=20',): the temporal group's AdamW update is 20
  times the plain one (weight decay included), the other group's is the plain one, and
  without scales the optimizer state is the plain chain's."""
  plain_config = support.micro_config("t2v", "train.trainable=('backbone', 'temporal')")
  scaled_config = support.micro_config("t2v", "train.trainable=('backbone', 'temporal')",
                                       "train.learning_rate_scales=('temporal=20',)")
  params = {"backbone": {"w": jnp.ones((3, 2))}, "temporal": {"w": jnp.full((2, 2), 0.5)}}
  grads = jax.tree.map(lambda p: 0.01 * jnp.arange(p.size, dtype=jnp.float32).reshape(p.shape)
                       - 0.02, params)
  updates = {}
  for name, config in (("plain", plain_config), ("scaled", scaled_config)):
    optimizer = optimizer_lib.make_optimizer(config.train)
    state = optimizer.init(params)
    for _ in range(3):  # past the first (zero learning rate) step
      updates[name], state = optimizer.update(grads, state, params)
  np.testing.assert_allclose(updates["scaled"]["temporal"]["w"],
                             20 * updates["plain"]["temporal"]["w"], rtol=1e-6)
  np.testing.assert_array_equal(updates["scaled"]["backbone"]["w"],
                                updates["plain"]["backbone"]["w"])
  assert np.abs(updates["plain"]["temporal"]["w"]).max() > 0
  # Checkpoints of runs without scales keep their optimizer state's layout.
  chain = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
      optimizer_lib.learning_rate_schedule(plain_config.train),
      mask=lambda p: jax.tree.map(lambda _: True, p)))
  assert jax.tree_util.tree_structure(chain.init(params)) == jax.tree_util.tree_structure(
      optimizer_lib.make_optimizer(plain_config.train).init(params))


def test_ema_decay_warms_up_to_its_maximum():
  decays = [float(optimizer_lib.ema_decay(0.999, n)) for n in (0, 10, 10_000)]
  np.testing.assert_allclose(decays, [0.1, 11 / 20, 0.999], rtol=1e-6)


@pytest.mark.parametrize("updates_done,decay", [(5, 6 / 15), (100_000, 0.999)])
def test_step_moves_the_ema_of_the_trainable_parameters_towards_the_new_ones(updates_done,
                                                                            decay):
  """ema' = d ema + (1 - d) params', with params' the step's new parameters and
  d = min(0.999, (1 + n) / (10 + n)) after n applied updates (written out here); the
  frozen parameters have no EMA and do not change."""
  config = _sharded_config((1, 1, 1), "train.warmup_steps=0", "train.learning_rate=0.01",
                           "train.num_steps=1000000")  # updates of about 0.01 per weight
  layout, jitted = _setup(config, jax.devices()[:1], support.cheap_loss)
  before = support.random_state(layout, step=updates_done)
  state, metrics = _run_step(layout, jitted, jax.device_put(before, layout.state_shardings),
                             _batch(layout.config))
  after = jax.device_get(state)
  assert metrics["finite"]
  expected = jax.tree_util.tree_map(lambda e, p: decay * e + (1 - decay) * p, before.ema,
                                    after.params)
  chex.assert_trees_all_close(after.ema, expected, rtol=1e-6, atol=1e-7)
  # Not trivially so: the parameters moved, and the EMA is neither the old one nor them.
  for old, new, ema in zip(*(jax.tree_util.tree_leaves(t)
                             for t in (before.params, after.params, after.ema))):
    assert np.abs(new - old).max() > 1e-6
    assert np.abs(ema - new).max() > 1e-3
  chex.assert_trees_all_equal(after.frozen, before.frozen)


@pytest.mark.parametrize("stage", ["t2i", "t2v", "ssr", "cond", "style"])
def test_every_stage_has_a_loss(stage):
  """The loss of each stage traces on the batch its data pipeline makes (SSR: plus the
  low-resolution clip, 6 channels in; cond: plus the mask, 7 channels in)."""
  low_resolution = ["data.low_resolution=8"] if stage == "ssr" else []
  config = support.micro_config(stage, "data.resolution=16", *low_resolution)
  b, t, r = config.data.batch_size, config.data.num_frames, config.data.resolution
  pixels = (b, r, r, 3) if config.model.kind == "unet2d" else (b, t, r, r, 3)
  batch = {"image" if config.model.kind == "unet2d" else "video":
           jax.ShapeDtypeStruct(pixels, jnp.uint8),
           "tokens": jax.ShapeDtypeStruct((b, config.text.max_length), jnp.int32)}
  if stage == "ssr":
    batch["low_res_video"] = jax.ShapeDtypeStruct((b, t, r // 2, r // 2, 3), jnp.uint8)
  if stage == "cond":
    batch["mask"] = jax.ShapeDtypeStruct((b, t, r, r, 1), jnp.uint8)
  params = nn.meta.unbox(build.abstract_params(config))
  loss, metrics = jax.eval_shape(make_loss_fn(config), params, batch, jax.random.key(0))
  assert loss.shape == () and loss.dtype == jnp.float32 and "mse" in metrics
