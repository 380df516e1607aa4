"""`lumiere bench` end to end on a micro config, and the peer-matched model's FLOPs.

The end-to-end run is the real CLI (parse, compile the real train step and a sampling
step, time them, write the JSON); the config is shapes_tiny:t2i shrunk to two levels at
8x8, so the test takes under a minute even with a cold compilation cache (50 s on a busy
2-core machine, most of it compiling). The peer-matched programs are only traced (jaxprs,
nothing compiled), which is what the FLOPs checks need.
"""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core

from lumiere_jax import cli
from lumiere_jax.bench import flops
from lumiere_jax.bench import peer_unet

MICRO = ["--override", "model.block_out_channels=(8,16)",
         "--override", "model.cross_attention_levels=(False,True)",
         "--override", "model.num_attention_heads=2",
         "--override", "text.num_layers=1",
         "--override", "data.resolution=8"]
SPEC = peer_unet.PeerSpec()


def test_tiny_bench_writes_every_field(tmp_path, capsys):
  out = tmp_path / "bench.json"
  code = cli.main(["bench", "tiny-t2i", "--steps", "2", "--warmup", "1", "--batch", "2",
                   *MICRO, "--json", str(out)])
  assert code == 0
  result = json.loads(out.read_text())
  assert "| train_step |" in capsys.readouterr().out
  for key in ("train_step", "sample_step"):
    row = result["rows"][key]
    assert result[f"{key}_s"] == row["seconds"] > 0
    assert math.isclose(row["seconds"], np.median(row["times_s"]))
    assert len(row["times_s"]) == 2
    assert result["flops"][key] == row["flops"] > 0
    assert math.isclose(result["achieved_flops_per_s"][key], row["flops"] / row["seconds"])
    assert math.isclose(result["mfu"][key],
                        row["achieved_flops_per_s"] / result["peak"]["flops_per_s"])
    assert result["compile_s"][key] > 0
    memory = row["memory"]
    assert result["peak_memory_bytes"][key] == memory["peak_bytes"] > 0
    assert memory["peak_bytes"] == (memory["argument_bytes"] + memory["output_bytes"]
                                    - memory["alias_bytes"] + memory["temp_bytes"])
  # Training costs more than one forward on the same batch; the donated state is aliased.
  assert result["flops"]["train_step"] > result["flops"]["sample_step"]
  assert result["rows"]["train_step"]["memory"]["alias_bytes"] > 0
  assert result["peak"]["flops_per_s"] > 0 and "jnp.dot" in result["peak"]["source"]
  assert result["settings"]["batch"] == result["settings"]["sample_batch"] == 2
  assert 0 < result["params"]["trainable"] <= result["params"]["total"]
  assert math.isfinite(result["loss"])
  assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("argv,message", [
    (["bench", "tiny-t3v"], "unknown preset 'tiny-t3v'"),
    (["bench", "tiny-t2v", "--steps", "0"], "--steps must be >= 1"),
    (["bench", "peer-matched", "--batch", "4"], "--batch applies to the tiny-* presets"),
    (["bench", "tiny-t2v", "--override", "model.no_such_field=1"], "no_such_field"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err and err.startswith("lumiere bench: error:")


def test_unwritable_json_path_is_refused_before_anything_runs(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  targets = [tmp_path, blocker / "out.json"]
  if pathlib.Path("/proc/self").is_dir():  # a filesystem nobody can create files in
    targets.append(pathlib.Path("/proc/bench.json"))
  for target in targets:
    assert cli.main(["bench", "tiny-t2v", "--json", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--json" in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


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
  position, padding included (torch's FlopCounterMode convention)."""
  total = 0
  for eqn in jaxpr.eqns:
    out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if eqn.primitive.name == "dot_general":
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
  forward = peer_unet.flop_count(SPEC, SPEC.batch, ()).forward
  # Full: ~3x the forward. Frozen: no weight gradients for the 2D base, and no activation
  # gradients before the first temporal layer, so between 1x and 3x.
  assert forward < frozen < full <= 3 * forward
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
