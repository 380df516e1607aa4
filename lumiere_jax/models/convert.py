"""Import diffusers UNet2DConditionModel weights into the T2I backbone (models/unet2d.py).

The backbone mirrors diffusers' module tree, so the conversion is mechanical:
  - names: `down_blocks.0.resnets.1.conv1.weight` <-> `down_blocks_0/resnets_1/conv1/kernel`
    (a ModuleList index joins its list's name with `_`; `weight` is `kernel` for convs and
    linears, `scale` for norms);
  - layouts: conv weights OIHW -> HWIO, linear weights [out, in] -> [in, out].
    Transformer `proj_in`/`proj_out` are 1x1 convs here; files saved with
    `use_linear_projection=True` hold them as linears, which is the same map, so both load.

What the tensors cannot show (head counts, norm epsilons, the time-embedding flavour) is
checked against the model's `config.json` when one sits beside the weights; see
`check_diffusers_config`. `diffusers_unet_kwargs` says which diffusers configs are importable.

Nothing here unpickles: torch files go through `torch.load(weights_only=True)` only.
"""

import json
import pathlib
import re
from typing import Any, Mapping, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
import flax.linen as nn

from lumiere_jax.errors import UserError
from lumiere_jax.models.unet2d import heads_per_level

PathLike = Union[str, pathlib.Path]

# diffusers ModuleList attributes inside UNet2DConditionModel: `name.k` there, `name_k` here.
_MODULE_LISTS = ("down_blocks", "up_blocks", "resnets", "attentions", "downsamplers",
                 "upsamplers", "transformer_blocks", "to_out", "net")
_LIST_SEGMENT = re.compile(rf"^({'|'.join(_MODULE_LISTS)})_(\d+)$")
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin")
_SHOW = 3  # mismatching keys named per category in an error line


# ---------------------------------------------------------------------------------------
# The diffusers configuration equivalent to ours


def diffusers_unet_kwargs(model_config, sample_size: Optional[int] = None) -> dict:
  """UNet2DConditionModel(**kwargs) with the same structure and numerics as our backbone.

  A diffusers UNet whose config matches these values (up to `use_linear_projection`,
  `upcast_attention`, `dropout` and `sample_size`, which do not change the weights'
  meaning at inference) converts exactly. Note diffusers' naming quirk: its
  `attention_head_dim` is the number of heads per level (`num_attention_heads` may not be
  passed), which is what our `model.num_attention_heads` means.
  """
  cross = tuple(bool(c) for c in model_config.cross_attention_levels)
  down = tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in cross)
  up = tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(cross))
  heads = tuple(heads_per_level(model_config))
  return dict(
      sample_size=sample_size,
      in_channels=model_config.in_channels,
      out_channels=model_config.out_channels,
      center_input_sample=False,
      flip_sin_to_cos=bool(model_config.flip_sin_to_cos),
      freq_shift=model_config.freq_shift,
      down_block_types=down,
      mid_block_type="UNetMidBlock2DCrossAttn",
      up_block_types=up,
      only_cross_attention=False,
      block_out_channels=tuple(model_config.block_out_channels),
      layers_per_block=model_config.layers_per_block,
      downsample_padding=1,
      mid_block_scale_factor=1,
      act_fn="silu",
      norm_num_groups=model_config.norm_num_groups,
      norm_eps=model_config.norm_eps,
      cross_attention_dim=model_config.cross_attention_dim,
      transformer_layers_per_block=model_config.transformer_layers_per_block,
      attention_head_dim=heads[0] if len(set(heads)) == 1 else heads,
      dual_cross_attention=False,
      use_linear_projection=False,
      class_embed_type=None,
      addition_embed_type=None,
      upcast_attention=False,
      resnet_time_scale_shift="default",
      resnet_skip_time_act=False,
      resnet_out_scale_factor=1.0,
      time_embedding_type="positional",
      time_embedding_dim=None,
      time_embedding_act_fn=None,
      timestep_post_act=None,
      time_cond_proj_dim=None,
      conv_in_kernel=3,
      conv_out_kernel=3,
      attention_type="default",
      cross_attention_norm=None,
      encoder_hid_dim=None,
  )


# Fields that may differ without changing what the weights compute in our backbone.
_IGNORED_FIELDS = {"sample_size", "use_linear_projection", "upcast_attention", "dropout",
                   "num_attention_heads", "reverse_transformer_layers_per_block",
                   "mid_block_only_cross_attention", "addition_embed_type_num_heads",
                   "class_embeddings_concat", "num_class_embeds", "encoder_hid_dim_type",
                   "addition_time_embed_dim", "projection_class_embeddings_input_dim"}
# Fields that are per level in diffusers when given as a list; an int means every level.
_PER_LEVEL_FIELDS = ("layers_per_block", "transformer_layers_per_block", "attention_head_dim",
                     "cross_attention_dim", "only_cross_attention")


def check_diffusers_config(diffusers_config: Mapping[str, Any], model_config,
                           source: str = "config.json") -> None:
  """Raises UserError if a diffusers UNet config.json describes a different network.

  Shapes alone miss head counts, norm epsilons and timestep-embedding settings; a wrong
  value there loads cleanly and computes something else, so the config is compared too.
  Keys absent from the file are not checked (diffusers writes every init argument).
  """
  want = diffusers_unet_kwargs(model_config)
  levels = len(want["block_out_channels"])
  differ = []
  for key, expected in want.items():
    if key in _IGNORED_FIELDS or key not in diffusers_config:
      continue
    got = diffusers_config[key]
    if key == "attention_head_dim" and diffusers_config.get("num_attention_heads"):
      got = diffusers_config["num_attention_heads"]
    if not _same_setting(key, got, expected, levels):
      differ.append(f"{key}={_show(got)} (ours: {_show(expected)})")
  if differ:
    raise UserError(f"{source} describes a UNet this model config cannot import: "
                    f"{'; '.join(differ[:4])}{'; ...' if len(differ) > 4 else ''}")


def _same_setting(key: str, got, expected, levels: int) -> bool:
  if key in _PER_LEVEL_FIELDS:
    return _per_level(got, levels) == _per_level(expected, levels)
  if isinstance(expected, tuple) and isinstance(got, (list, tuple)):
    return tuple(got) == expected
  if isinstance(expected, float) or isinstance(got, float):
    return isinstance(got, (int, float)) and np.isclose(got, expected, rtol=1e-6, atol=0)
  return got == expected


def _per_level(value, levels: int) -> tuple:
  if isinstance(value, (list, tuple)):
    return tuple(tuple(v) if isinstance(v, (list, tuple)) else v for v in value)
  return (value,) * levels


def _show(value) -> str:
  return str(list(value)) if isinstance(value, tuple) else repr(value)


# ---------------------------------------------------------------------------------------
# The parameter tree we expect


def unbox(tree):
  """Strips flax's LogicallyPartitioned boxes (what `init` returns) to plain leaves."""
  return nn.meta.unbox(tree)


def expected_param_shapes(model_config) -> dict:
  """The backbone's param tree for this config as ShapeDtypeStructs (no allocation)."""
  from lumiere_jax.models.unet2d import UNet2D, UNetSpec
  module = UNet2D(UNetSpec.from_config(model_config))
  side = 2 ** (len(model_config.block_out_channels) - 1)
  args = (jnp.zeros((1, side, side, model_config.in_channels), jnp.float32),
          jnp.zeros((1,), jnp.float32),
          jnp.zeros((1, 1, model_config.cross_attention_dim), jnp.float32),
          jnp.ones((1, 1), bool))
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *args))
  return unbox(variables["params"])


def diffusers_name(path: tuple) -> str:
  """Our param path -> diffusers state-dict key (`resnets_1` -> `resnets.1`, kernel ->
  weight). Only ModuleList names are split, so `time_embedding.linear_1` stays whole."""
  segments = [_LIST_SEGMENT.sub(r"\1.\2", s) for s in path[:-1]]
  leaf = {"kernel": "weight", "scale": "weight"}.get(path[-1], path[-1])
  return ".".join(segments + [leaf])


def _torch_shape(path: tuple, shape: tuple) -> tuple:
  """The shape a diffusers tensor has for our param of `shape` (OIHW, [out, in])."""
  if path[-1] == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if path[-1] == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


# ---------------------------------------------------------------------------------------
# Conversion


def convert_state_dict(state_dict: Mapping[str, Any], model_config,
                       source: str = "the state dict") -> dict:
  """diffusers UNet2DConditionModel state dict (name -> array) -> our backbone params.

  Returns a nested dict of float32 numpy arrays with exactly the structure of
  `unbox(init(...)["params"])`. Raises UserError naming the first missing, unexpected and
  wrongly shaped keys if the file and the config disagree.
  """
  expected = {diffusers_name(path): (path, _torch_shape(path, leaf.shape))
              for path, leaf in traverse_util.flatten_dict(
                  expected_param_shapes(model_config)).items()}
  given = {name: np.shape(value) for name, value in state_dict.items()}
  _validate(given, expected, source)
  flat = {}
  for name, (path, torch_shape) in expected.items():
    flat[path] = _to_ours(_as_float32(state_dict[name]), torch_shape)
  return traverse_util.unflatten_dict(flat)


def _validate(given: Mapping[str, tuple], expected: Mapping[str, tuple], source: str):
  missing = sorted((n for n in expected if n not in given), key=_natural)
  unexpected = sorted((n for n in given if n not in expected), key=_natural)
  wrong = sorted((n for n in given if n in expected
                  and not _shape_fits(given[n], expected[n][1])), key=_natural)
  if not (missing or unexpected or wrong):
    return
  shape = lambda s: "[" + ", ".join(map(str, s)) + "]"
  parts = []
  if missing:
    parts.append(_listing(len(missing), "missing",
                          [f"{n} {shape(expected[n][1])}" for n in missing]))
  if unexpected:
    parts.append(_listing(len(unexpected), "unexpected",
                          [f"{n} {shape(given[n])}" for n in unexpected]))
  if wrong:
    parts.append(_listing(len(wrong), "with the wrong shape",
                          [f"{n} {shape(given[n])} != {shape(expected[n][1])}"
                           for n in wrong]))
  raise UserError(f"weights in {source} do not match the model config "
                  f"(diffusers layout; see convert.diffusers_unet_kwargs): "
                  f"{'; '.join(parts)}")


def _listing(count: int, what: str, items: list) -> str:
  more = f", ... {count - _SHOW} more" if count > _SHOW else ""
  return f"{count} {what}: {', '.join(items[:_SHOW])}{more}"


def _natural(name: str):
  """Sort key that puts `resnets.2` before `resnets.10`."""
  return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _shape_fits(given: tuple, torch_shape: tuple) -> bool:
  """Exact match, or a linear [out, in] standing for a 1x1 conv (linear proj_in/out)."""
  given = tuple(given)
  return given == torch_shape or (len(torch_shape) == 4 and torch_shape[2:] == (1, 1)
                                  and given == torch_shape[:2])


def _to_ours(value: np.ndarray, torch_shape: tuple) -> np.ndarray:
  value = value.reshape(torch_shape)
  if value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 2:
    value = value.T
  return np.ascontiguousarray(value)


def _as_float32(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor handed in directly
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, dtype=np.float32)


# ---------------------------------------------------------------------------------------
# Files


def load_state_dict(path: PathLike) -> dict:
  """Reads a diffusers state dict from .safetensors (numpy, no torch) or a torch
  .bin/.pt/.pth file (`torch.load(weights_only=True)`, never arbitrary unpickling)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"weight file not found: {path}")
  if path.suffix == ".safetensors":
    return _load_safetensors(path)
  if path.suffix in (".bin", ".pt", ".pth"):
    return _load_torch(path)
  raise UserError(f"unsupported weight file {path}: expected .safetensors, .bin, .pt or .pth")


def _load_safetensors(path: pathlib.Path) -> dict:
  import safetensors.numpy
  try:
    return dict(safetensors.numpy.load_file(str(path)))
  except TypeError:  # numpy has no bfloat16; safetensors.numpy cannot return it
    return _load_safetensors_raw(path)
  except Exception as e:  # a corrupt or truncated file is the user's input
    raise UserError(f"cannot read {path} as safetensors: {e}") from e


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": jnp.bfloat16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _load_safetensors_raw(path: pathlib.Path) -> dict:
  """Reads the safetensors layout directly (8-byte header length, JSON header, raw
  little-endian data) for dtypes numpy lacks, via ml_dtypes (jnp.bfloat16)."""
  data = np.memmap(path, dtype=np.uint8, mode="r")
  header_len = int(np.frombuffer(data[:8].tobytes(), "<u8")[0])
  header = json.loads(data[8:8 + header_len].tobytes())
  start = 8 + header_len
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in _SAFETENSORS_DTYPES:
      raise UserError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    raw = data[start + begin:start + end].tobytes()
    out[name] = np.frombuffer(raw, _SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
  return out


def _load_torch(path: pathlib.Path) -> dict:
  try:
    import torch
  except ImportError as e:
    raise UserError(f"reading {path} needs torch (pip install torch), or convert it to "
                    f".safetensors") from e
  try:
    state = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # includes files that need unsafe unpickling
    raise UserError(f"cannot load {path} with torch.load(weights_only=True): "
                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
  if not isinstance(state, Mapping) or not all(
      isinstance(v, torch.Tensor) for v in state.values()):
    raise UserError(f"{path} does not hold a flat state dict of tensors")
  return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}


def _resolve_weights(path: pathlib.Path) -> pathlib.Path:
  """A weight file, a diffusers model folder (unet/ inside a pipeline folder too)."""
  if path.is_file():
    return path
  if not path.exists():
    raise UserError(f"weight file or folder not found: {path}")
  for folder in (path, path / "unet"):
    for name in _WEIGHT_FILES:
      if (folder / name).is_file():
        return folder / name
  raise UserError(f"no weight file in {path}: expected one of {', '.join(_WEIGHT_FILES)} "
                  f"(or in {path / 'unet'})")


def load_diffusers_unet(path: PathLike, model_config) -> dict:
  """A local diffusers UNet2DConditionModel (file or folder) -> backbone params.

  The config.json beside the weights, if any, is checked first (heads, eps and time
  embedding settings that the shapes cannot reveal), then names and shapes.
  """
  weights = _resolve_weights(pathlib.Path(path))
  config_file = weights.parent / "config.json"
  if config_file.is_file():
    try:
      diffusers_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
      raise UserError(f"cannot read {config_file}: {e}") from e
    check_diffusers_config(diffusers_config, model_config, source=str(config_file))
  return convert_state_dict(load_state_dict(weights), model_config, source=str(weights))
