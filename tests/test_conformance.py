"""Conformance of the T2I backbone with diffusers' UNet2DConditionModel (torch, CPU, fp32).

A small diffusers UNet with every parameter randomised (diffusers zero-initialises some
output layers and norms start at identity, which would hide layout or naming bugs) is
saved the way users have it on disk, converted by models/convert.py, and run on the same
inputs as our backbone; outputs must agree to 1e-4.
"""

import json
import math

import jax
import ml_collections
from flax import traverse_util
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from lumiere_jax.config import load_config  # noqa: E402
from lumiere_jax.errors import UserError  # noqa: E402
from lumiere_jax.models import convert  # noqa: E402
from lumiere_jax.models.unet2d import UNet2D, UNetSpec  # noqa: E402

pytestmark = pytest.mark.conformance

TOLERANCE = 1e-4
RESOLUTION = 16
CONTEXT_LENGTH = 7


def _model_config(overrides=(), **fields):
  """shapes_tiny:t2i's model config; `fields` set values the CLI overrides cannot express
  (per-level tuples where the config holds an int)."""
  model = load_config("shapes_tiny:t2i", overrides).model
  if not fields:
    return model
  model = ml_collections.ConfigDict(model.to_dict(), type_safe=False)
  for key, value in fields.items():
    model[key] = value
  return model


def _random_diffusers_unet(model_config, seed: int, **diffusers_overrides):
  kwargs = convert.diffusers_unet_kwargs(model_config, sample_size=RESOLUTION)
  kwargs.update(diffusers_overrides)
  torch.manual_seed(seed)
  unet = diffusers.UNet2DConditionModel(**kwargs).eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in unet.named_parameters():
      noise = torch.randn(p.shape, generator=gen)
      if p.ndim == 1 and name.endswith("weight"):  # norm scales
        p.copy_(1.0 + 0.3 * noise)
      elif p.ndim == 1:  # biases
        p.copy_(0.3 * noise)
      else:  # conv / linear weights, variance-preserving
        p.copy_(noise / math.sqrt(p[0].numel()))
  return unet


def _random_inputs(model_config, seed: int):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((2, RESOLUTION, RESOLUTION, model_config.in_channels), np.float32)
  timesteps = np.array([3.0, 741.5], np.float32)
  context = rng.standard_normal((2, CONTEXT_LENGTH, model_config.cross_attention_dim),
                                np.float32)
  mask = np.ones((2, CONTEXT_LENGTH), bool)
  mask[0, 5:] = False  # trailing padding
  mask[1, [1, 4, 6]] = False  # holes
  return x, timesteps, context, mask


def _torch_forward(unet, x, timesteps, context, mask):
  with torch.no_grad():
    out = unet(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(timesteps),
               encoder_hidden_states=torch.from_numpy(context),
               encoder_attention_mask=torch.from_numpy(mask)).sample
  return out.permute(0, 2, 3, 1).numpy()


def _our_forward(model_config, params, x, timesteps, context, mask):
  module = UNet2D(UNetSpec.from_config(model_config))
  return np.asarray(jax.jit(module.apply)({"params": params}, x, timesteps, context, mask))


def _assert_close(model_config, params, unet, seed):
  inputs = _random_inputs(model_config, seed)
  ours = _our_forward(model_config, params, *inputs)
  theirs = _torch_forward(unet, *inputs)
  err = float(np.max(np.abs(ours - theirs)))
  print(f"max abs error {err:.3g} (output max abs {np.max(np.abs(theirs)):.3g})")
  assert ours.shape == theirs.shape
  assert err <= TOLERANCE
  return err


def _assert_same_tree(params, model_config):
  expected = convert.expected_param_shapes(model_config)
  assert jax.tree.structure(params) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
    assert got.shape == want.shape and got.dtype == np.float32


@pytest.fixture(scope="module")
def tiny():
  """The shapes_tiny:t2i backbone as a randomised diffusers UNet."""
  model_config = _model_config()
  unet = _random_diffusers_unet(model_config, seed=0)
  return model_config, unet


def test_conformance_tiny_from_safetensors(tiny, tmp_path):
  model_config, unet = tiny
  import safetensors.torch
  path = tmp_path / "unet.safetensors"
  safetensors.torch.save_file(unet.state_dict(), str(path))
  params = convert.load_diffusers_unet(path, model_config)
  _assert_same_tree(params, model_config)
  _assert_close(model_config, params, unet, seed=1)


def test_conformance_deeper_mixed_levels_linear_projection(tmp_path):
  """Two resnets and two transformer layers per block, attention at the finest and the
  coarsest level only, per-level head counts, the other timestep-embedding flavour, and
  `use_linear_projection=True` (linear proj_in/proj_out), loaded from a saved folder."""
  model_config = _model_config(
      ["model.layers_per_block=2", "model.transformer_layers_per_block=2",
       "model.flip_sin_to_cos=False", "model.freq_shift=1"],
      cross_attention_levels=(True, False, True), num_attention_heads=(2, 4, 8))
  unet = _random_diffusers_unet(model_config, seed=2, use_linear_projection=True)
  unet.save_pretrained(tmp_path / "unet")  # config.json + diffusion_pytorch_model.safetensors
  params = convert.load_diffusers_unet(tmp_path, model_config)  # finds unet/ itself
  _assert_same_tree(params, model_config)
  _assert_close(model_config, params, unet, seed=3)


def test_conformance_torch_bin_weights_only(tiny, tmp_path):
  model_config, unet = tiny
  path = tmp_path / "diffusion_pytorch_model.bin"
  torch.save(unet.state_dict(), path)
  from_bin = convert.load_diffusers_unet(path, model_config)
  from_memory = convert.convert_state_dict(unet.state_dict(), model_config)
  for a, b in zip(jax.tree.leaves(from_bin), jax.tree.leaves(from_memory)):
    np.testing.assert_array_equal(a, b)


class _NotATensor:
  pass


def test_conformance_torch_file_needing_unpickling_is_refused(tiny, tmp_path):
  model_config, _ = tiny
  path = tmp_path / "evil.bin"
  torch.save({"conv_in.weight": _NotATensor()}, path)
  with pytest.raises(UserError, match="weights_only=True"):
    convert.load_diffusers_unet(path, model_config)


def test_conformance_bfloat16_safetensors(tiny, tmp_path):
  """numpy has no bfloat16; the converter reads such files itself and upcasts."""
  model_config, unet = tiny
  import safetensors.torch
  state = {k: v.to(torch.bfloat16) for k, v in unet.state_dict().items()}
  path = tmp_path / "unet_bf16.safetensors"
  safetensors.torch.save_file(state, str(path))
  params = convert.load_diffusers_unet(path, model_config)
  want = state["down_blocks.1.attentions.0.proj_in.weight"].float().numpy()
  got = params["down_blocks_1"]["attentions_0"]["proj_in"]["kernel"]
  np.testing.assert_array_equal(got, want.transpose(2, 3, 1, 0))


def test_conformance_wrong_width_names_first_mismatching_keys(tiny):
  _, unet = tiny
  wider = _model_config(["model.block_out_channels=(32, 64, 128)"])
  with pytest.raises(UserError) as info:
    convert.convert_state_dict(unet.state_dict(), wider, source="unet.safetensors")
  message = str(info.value)
  assert "\n" not in message
  assert "weights in unet.safetensors do not match the model config" in message
  # the first mismatches in natural order, with the file's and the config's shapes
  assert "2 missing: down_blocks.2.resnets.0.conv_shortcut.bias [128]," in message
  assert ("162 with the wrong shape: down_blocks.2.attentions.0.norm.bias [64] != [128], "
          "down_blocks.2.attentions.0.norm.weight [64] != [128]") in message
  assert "... 159 more" in message


def test_conformance_missing_and_unexpected_keys(tiny):
  model_config, unet = tiny
  state = dict(unet.state_dict())
  del state["conv_in.bias"]
  state["class_embedding.linear_1.weight"] = torch.zeros(128, 32)
  with pytest.raises(UserError) as info:
    convert.convert_state_dict(state, model_config)
  message = str(info.value)
  assert "1 missing: conv_in.bias [32]" in message
  assert "1 unexpected: class_embedding.linear_1.weight [128, 32]" in message


def test_conformance_config_json_with_other_head_count_is_refused(tiny, tmp_path):
  """Head counts do not show in the shapes; the config.json beside the weights does."""
  model_config, unet = tiny
  unet.save_pretrained(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config["attention_head_dim"] = 2
  config["norm_eps"] = 1e-6
  (tmp_path / "config.json").write_text(json.dumps(config))
  expected = r"norm_eps=1e-06 \(ours: 1e-05\); attention_head_dim=2 \(ours: 4\)"
  with pytest.raises(UserError, match=expected):
    convert.load_diffusers_unet(tmp_path, model_config)


def test_conformance_param_names_round_trip(tiny):
  """Every diffusers key maps onto exactly one of our params and back."""
  model_config, unet = tiny
  expected = traverse_util.flatten_dict(convert.expected_param_shapes(model_config))
  ours = {convert.diffusers_name(path) for path in expected}
  assert ours == set(unet.state_dict())
