"""The lumiere-pytorch peer's model rebuilt in Flax (benchmarks/peer/peer_unet.py): its
parameter count is the peer's, its analytic FLOPs equal the traced programs', and its
temporal layers start as the identity. The programs are only traced (jaxprs, nothing
compiled), which is what the FLOPs checks need."""

import importlib.util
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from lumiere_jax.bench import flops

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "peer" / "peer_unet.py"
_SPEC = importlib.util.spec_from_file_location("peer_unet", _PATH)
peer_unet = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(peer_unet)
SPEC = peer_unet.PeerSpec()


def test_the_script_runs_from_its_path():
  result = subprocess.run([sys.executable, str(_PATH), "--help"], capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and "--json" in result.stdout, result.stderr


def _abstract(tree):
  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def _programs():
  """The jitted peer-matched programs and abstract arguments: name -> (fn, args)."""
  optimizer = peer_unet.make_optimizer()
  rng = jax.eval_shape(lambda: jax.random.key(0))
  video = lambda b: jax.ShapeDtypeStruct(peer_unet.video_shape(SPEC, b), jnp.float32)
  programs = {}
  for name, trainable in (("train_step", ("base", "temporal")),
                          ("train_step_frozen", ("temporal",))):
    state = jax.eval_shape(lambda r, t=trainable: peer_unet.init_state(SPEC, t, r, optimizer),
                           rng)
    programs[name] = (peer_unet.jit_train_step(SPEC, optimizer),
                      (state, video(SPEC.batch), rng))
  params = _abstract(jax.eval_shape(lambda r: peer_unet.init_params(SPEC, r), rng))
  programs["sample_step"] = (peer_unet.jit_sample_step(SPEC),
                             (params, video(SPEC.sample_batch),
                              jax.ShapeDtypeStruct((SPEC.sample_batch,), jnp.float32)))
  return programs


@pytest.fixture(scope="module")
def programs():
  return _programs()


def _every_tap_flops(jaxpr) -> int:
  """Like flops.traced_flops, but a convolution counts every kernel tap at every output
  position, padding included (torch's FlopCounterMode convention); 0/1 selection matmuls
  (GroupNorm's group sums, repeat_rows' derivative) are data movement, as there."""
  total = 0
  for eqn in jaxpr.eqns:
    out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if eqn.primitive.name == "dot_general" and not flops._is_selection(eqn):
      (contracting, _), _ = eqn.params["dimension_numbers"]
      total += 2 * out * math.prod(eqn.invars[0].aval.shape[d] for d in contracting)
    elif eqn.primitive.name == "conv_general_dilated":
      rhs_spec = eqn.params["dimension_numbers"].rhs_spec
      kernel = eqn.invars[1].aval.shape
      total += 2 * out * kernel[rhs_spec[1]] * math.prod(kernel[d] for d in rhs_spec[2:])
    total += sum(_every_tap_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
  return total


def test_peer_matched_flops_equal_the_traced_programs(programs):
  valid, every = (peer_unet.flops_by_program(SPEC, taps) for taps in ("valid", "all"))
  for name, (fn, args) in programs.items():
    assert valid[name] == flops.traced_flops(fn, *args), name
    # Padding taps are work in the peer's count only.
    assert valid[name] < every[name]
  # The peer's convention on the forward program (the train steps' backward convolutions
  # of strided convs read dilation holes, which neither convention counts; the analytic
  # count applies the same per-op gradient rules to both conventions).
  fn, args = programs["sample_step"]
  assert every["sample_step"] == _every_tap_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def test_frozen_training_computes_fewer_flops_than_full(programs):
  full, frozen = (flops.traced_flops(programs[k][0], *programs[k][1])
                  for k in ("train_step", "train_step_frozen"))
  count = peer_unet.flop_count(SPEC, SPEC.batch)
  forward = count.forward
  # Full: ~3x the forward, plus the temporal kernel gradients' padding taps (one matmul
  # over every tap, models/temporal.py: time_conv) and the RMS-norm gains' [C, C] matmuls
  # (_scaled_rms_backward). Frozen: no weight gradients for the 2D base, and no
  # activation gradients before the first temporal layer, so between 1x and 3x.
  padding_taps = sum(op.extra_train_flops for op in count.ops if op.kind == "conv")
  gains = sum(op.extra_train_flops for op in count.ops if op.kind == "norm")
  assert 0 < padding_taps < forward // 50 and 0 < gains < forward // 25
  assert forward < frozen < full <= 3 * forward + padding_taps + gains
  ops = peer_unet.flop_count(SPEC, SPEC.batch, ("temporal",)).ops
  assert all(op.grad_operands <= 1 for op in ops if op.group == "base" and op.kind != "attention")


def test_peer_matched_model_has_the_peers_parameter_count():
  # The peer reports {'base_2d': 2436835, 'temporal': 901536} for its default config.
  counts = peer_unet.param_counts(SPEC)
  assert (counts["base"], counts["temporal"]) == (2436835, 901536)


def test_transposed_temporal_conv_is_torchs_conv_transpose():
  """ConvTranspose1d(k=3, stride 2, padding 1, output_padding 1): out[2i - 1 + k] +=
  x[i] @ W[k], written as the definition's loop."""
  keys = jax.random.split(jax.random.key(0), 3)
  video = jax.random.normal(keys[0], (2, 4, 3, 3, 5))
  kernel = jax.random.normal(keys[1], (3, 5, 6))
  bias = jax.random.normal(keys[2], (6,))
  x, w = np.asarray(video), np.asarray(kernel)
  expected = np.zeros((2, 8, 3, 3, 6)) + np.asarray(bias)
  for i in range(4):
    for k in range(3):
      if 0 <= 2 * i - 1 + k < 8:
        expected[:, 2 * i - 1 + k] += x[:, i] @ w[k]
  got = peer_unet.transposed_temporal_conv(video, kernel, bias)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_temporal_layers_start_as_identity_where_lumiere_pytorch_does():
  """The inflation blocks end in zero-initialised projections: at init they pass their
  input through unchanged."""
  frames = jax.random.normal(jax.random.key(1), (2 * 4, 8, 8, 16))
  for block in (peer_unet.ConvInflation(), peer_unet.AttentionInflation(4, 4)):
    variables = block.init(jax.random.key(2), frames, 2)
    np.testing.assert_array_equal(block.apply(variables, frames, 2), frames)


@pytest.mark.parametrize("shape, axis, silu", [((2, 6, 4, 4, 8), 1, True), ((6, 4, 5, 8), 2, True),
                                               ((12, 3, 8), -1, False)])
def test_scaled_rms_norm_gradient_is_autodiffs(shape, axis, silu):
  """peer_unet.scaled_rms_norm (its gradient written out) equals torch's F.normalize over
  `axis` times sqrt(C) gain, then SiLU, in value bit for bit and in both gradients."""
  x = jax.random.normal(jax.random.key(0), shape)
  gain = 1 + 0.1 * jax.random.normal(jax.random.key(1), shape[-1:])
  weights = jax.random.normal(jax.random.key(2), shape)

  def textbook(x, gain):
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    y = x / jnp.maximum(norm, 1e-12) * (math.sqrt(shape[-1]) * gain)
    return jax.nn.silu(y) if silu else y

  ours = lambda x, gain: peer_unet.scaled_rms_norm(x, gain, axis, silu)
  np.testing.assert_array_equal(jax.jit(ours)(x, gain), jax.jit(textbook)(x, gain))
  grad = lambda f: jax.grad(lambda x, g: jnp.sum(weights * f(x, g)), argnums=(0, 1))(x, gain)
  for a, b in zip(grad(ours), grad(textbook)):
    np.testing.assert_allclose(a, b, atol=1e-5 * float(jnp.abs(b).max()), rtol=0)


def test_bfloat16_mode_is_mixed_precision_of_the_same_model():
  """--dtype bfloat16 (the peer's torch.autocast row): the same float32 parameters, every
  convolution and projection of the forward in bfloat16, the same matmul FLOPs, and an
  output that differs from float32's by bfloat16 rounding only."""
  small = dict(frames=4, size=8, dim=16, heads=2, dim_head=8, groups=4)
  f32, bf16 = peer_unet.PeerSpec(**small), peer_unet.PeerSpec(dtype="bfloat16", **small)
  params = peer_unet.init_params(f32, jax.random.key(0))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
      peer_unet.init_params(bf16, jax.random.key(0)))
  # The zero-initialised projections would hide the temporal layers' rounding.
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree_util.tree_unflatten(
      tree, [a + 0.01 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  x = jax.random.normal(jax.random.key(2), peer_unet.video_shape(f32, 2))
  time = jnp.array([100.0, 700.0])
  outs, convs = {}, {}
  for spec in (f32, bf16):
    fn = peer_unet.jit_sample_step(spec)
    jaxpr = jax.make_jaxpr(fn)(params, x, time).jaxpr
    eqns = [e for e in _eqns(jaxpr) if e.primitive.name == "conv_general_dilated"]
    convs[spec.dtype] = {str(e.invars[0].aval.dtype) for e in eqns}
    assert flops.traced_flops(fn, params, x, time) == peer_unet.flop_count(spec, 2, ()).forward
    outs[spec.dtype] = np.asarray(fn(params, x, time))
    assert outs[spec.dtype].dtype == np.float32
  assert convs == {"float32": {"float32"}, "bfloat16": {"bfloat16"}}
  error = np.sqrt(np.mean((outs["bfloat16"] - outs["float32"]) ** 2)
                  / np.mean(outs["float32"] ** 2))
  # Rounded (so bfloat16 ran), by a few of bfloat16's 2^-9 relative steps over ~40 ops
  # (about 0.01-0.02 here), not by a wrong cast (float16-like overflow, a lost residual).
  assert 1e-3 < error < 0.05, error


def _eqns(jaxpr):
  for eqn in jaxpr.eqns:
    yield eqn
    for sub in jax_core.jaxprs_in_params(eqn.params):
      yield from _eqns(sub)
