"""Config defaults, loading (`configs/NAME.py[:VARIANT]`), overrides and validation.

Every shape constraint is checked here, in Python, before anything is traced or compiled,
and each failure names the field and the values it allows.
"""

import ast
import difflib
import importlib.util
import math
import pathlib
from typing import Iterable, Sequence

import ml_collections

from lumiere_jax.data.masks import DEFAULT_MASK_WEIGHTS
from lumiere_jax.diffusion.config import default_diffusion_config, validate_diffusion_config
from lumiere_jax.models import text as text_lib
from lumiere_jax.errors import ConfigError, UserError
from lumiere_jax.train.config import default_train_config, validate_train_config

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
MODEL_KINDS = ("unet2d", "stunet")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "block")

# Logical axis name -> mesh axes, tried in order; a rule whose mesh axes are already used
# in the same spec, or that does not divide the dimension, falls through to the next.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    ("time", None),
    ("height", None),
    ("width", None),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("conv_t", None),
    ("conv_h", None),
    ("conv_w", None),
    ("norm", None),
)


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every config file; config files override what they change."""
  config = ml_collections.ConfigDict()
  config.stage = "t2v"
  config.seed = 0

  config.model = model = ml_collections.ConfigDict()
  model.kind = "stunet"
  model.in_channels = 3
  model.out_channels = 3
  model.block_out_channels = (32, 64, 64)
  model.layers_per_block = 1
  model.cross_attention_levels = (False, True, True)
  model.num_attention_heads = 4
  model.transformer_layers_per_block = 1
  model.norm_num_groups = 8
  model.norm_eps = 1e-5
  model.cross_attention_dim = 64
  model.flip_sin_to_cos = True
  model.freq_shift = 0
  model.dtype = "float32"
  model.remat = "none"
  model.temporal = temporal = ml_collections.ConfigDict()
  temporal.down_levels = (True, True)
  temporal.kernel_size = 3
  temporal.attention_blocks = 1
  temporal.num_heads = 4
  # Temporal attention blocks cross-attend to the text. In the t2v stage the backbone is
  # frozen and its cross-attention was trained on still images, so the temporal layers are
  # the only trainable place where motion words ("moving left") can steer motion.
  temporal.text_conditioning = True
  # Conv inflation blocks (every level but the coarsest) FiLM-modulated by the pooled
  # caption. Not in the paper, whose conv blocks see no text: per-pixel temporal attention
  # at the coarsest level cannot see where an object is, so "moving left" has no cheap way
  # to steer the (2+1)D convolutions that move it (docs/learning_record.md).
  temporal.conv_text_conditioning = False
  # The attention inflation blocks (coarsest level and mid block) attend over every
  # (frame, row, column) token with frame, row and column embeddings instead of over frames
  # at each pixel. Not in the paper: per-pixel attention cannot see where an object is,
  # while "moving left" is a function of position and frame (shared/notes/MOTION.md).
  temporal.spacetime_attention = False

  config.text = text = ml_collections.ConfigDict()
  # A built-in word vocabulary by name ("shapes") or a word list file, one word per line;
  # text.vocab_size (the embedding table) must hold it and its special tokens.
  text.vocabulary = "shapes"
  text.vocab_size = 64
  text.max_length = 24
  text.width = 64
  text.num_layers = 2
  text.num_heads = 4
  text.mlp_ratio = 4

  config.data = data = ml_collections.ConfigDict()
  data.resolution = 32
  data.low_resolution = 0
  data.num_frames = 16
  data.batch_size = 8  # global batch, split evenly over processes
  data.eval_split = "heldout"
  data.worker_count = 0  # grain worker processes (0: read in the main process)
  data.read_threads = 2
  data.prefetch_batches = 4
  # Conditional (7-channel) stage: how often each mask kind is drawn.
  data.mask_weights = ml_collections.ConfigDict(dict(DEFAULT_MASK_WEIGHTS))

  config.train = default_train_config()
  config.diffusion = default_diffusion_config()

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.axes = ("data", "fsdp", "tensor")
  mesh.shape = (-1, 1, 1)
  config.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES
  return config


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:variant]` (or a bare name under configs/), applies
  `a.b=value` overrides, validates, and returns the locked config."""
  path_str, _, variant = spec.partition(":")
  path = pathlib.Path(path_str)
  if not path.suffix:
    path = CONFIG_DIR / f"{path_str}.py"
  if not path.is_file():
    raise UserError(f"config file not found: {path}")
  module_spec = importlib.util.spec_from_file_location(f"lumiere_config_{path.stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # a broken config file is the user's input
    raise UserError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise UserError(f"config file {path} defines no get_config(arg)")
  try:
    config = module.get_config(variant) if variant else module.get_config()
  except ValueError as e:
    raise UserError(f"{path}: {e}") from e
  return finalize(config, overrides)


def finalize(config: ml_collections.ConfigDict,
             overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Applies `a.b=value` overrides, validates, locks; returns the config."""
  apply_overrides(config, overrides)
  validate(config)
  config.lock()
  return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str]) -> None:
  """Applies `a.b=value` strings; values parse as Python literals, else as strings."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise UserError(f"override {item!r} is not of the form key=value")
    set_field(config, key.strip(), _parse_value(raw.strip()))


def set_field(config: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets a dotted field that must already exist; an unknown key gets a suggestion."""
  parts = key.split(".")
  node = config
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      options = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      prefix = ".".join(parts[:depth])
      close = difflib.get_close_matches(part, options, n=1)
      hint = f"; did you mean {'.'.join(filter(None, [prefix, close[0]]))!r}?" if close else ""
      raise UserError(f"unknown config key {key!r}{hint}")
    if depth < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if old is not None and not _compatible(old, value):
    raise UserError(f"config key {key!r} expects {type(old).__name__}, got {value!r}")
  with node.unlocked() if node.is_locked else _nullcontext():
    node[parts[-1]] = value


def _compatible(old, value) -> bool:
  if isinstance(old, bool) or isinstance(value, bool):
    return isinstance(old, bool) and isinstance(value, bool)
  if isinstance(old, (int, float)):
    return isinstance(value, (int, float))
  return isinstance(value, type(old))


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def _parse_value(raw: str):
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


# ---------------------------------------------------------------------------------------
# Validation


def temporal_factor(model: ml_collections.ConfigDict) -> int:
  """Total temporal down-sampling factor N of a STUNet (1 for a 2D model)."""
  if model.kind != "stunet":
    return 1
  return 2 ** sum(bool(d) for d in model.temporal.down_levels)


def spatial_factor(model: ml_collections.ConfigDict) -> int:
  return 2 ** (len(model.block_out_channels) - 1)


def heads_per_level(model: ml_collections.ConfigDict) -> Sequence[int]:
  heads = model.num_attention_heads
  if isinstance(heads, int):
    return (heads,) * len(model.block_out_channels)
  return tuple(heads)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first field whose value the model cannot use."""
  model, data, text = config.model, config.data, config.text
  _check(model.kind in MODEL_KINDS, "model.kind", model.kind, f"one of {MODEL_KINDS}")
  _check(model.dtype in DTYPES, "model.dtype", model.dtype, f"one of {DTYPES}")
  _check(model.remat in REMAT_POLICIES, "model.remat", model.remat,
         f"one of {REMAT_POLICIES}")
  channels = tuple(model.block_out_channels)
  levels = len(channels)
  _check(levels >= 1, "model.block_out_channels", channels, "at least one level")
  _check(model.layers_per_block >= 1, "model.layers_per_block", model.layers_per_block,
         "an integer >= 1")
  groups = model.norm_num_groups
  _check(groups >= 1, "model.norm_num_groups", groups, "an integer >= 1")
  for i, c in enumerate(channels):
    _check(c > 0 and c % groups == 0, f"model.block_out_channels[{i}]", c,
           f"a positive multiple of model.norm_num_groups={groups}")
  _check(len(model.cross_attention_levels) == levels, "model.cross_attention_levels",
         tuple(model.cross_attention_levels),
         f"one bool per level ({levels} levels in model.block_out_channels)")
  heads = heads_per_level(model)
  _check(len(heads) == levels, "model.num_attention_heads", model.num_attention_heads,
         f"an int or one int per level ({levels})")
  for i, (c, h) in enumerate(zip(channels, heads)):
    _check(h >= 1 and c % h == 0, f"model.num_attention_heads[{i}]", h,
           f"a divisor of model.block_out_channels[{i}]={c}")
  _check(model.in_channels in (3, 6, 7), "model.in_channels", model.in_channels,
         "3 (video), 6 (SSR: noisy + low-res) or 7 (conditional <J, C, M>)")
  _check(model.out_channels == 3, "model.out_channels", model.out_channels, "3")
  _check(model.cross_attention_dim == text.width, "model.cross_attention_dim",
         model.cross_attention_dim, f"text.width={text.width}")
  _check(text.width % text.num_heads == 0, "text.num_heads", text.num_heads,
         f"a divisor of text.width={text.width}")
  _check(text.max_length >= 2, "text.max_length", text.max_length, "an integer >= 2")
  try:
    words = text_lib.vocabulary_words(text.vocabulary)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  needed = text_lib.NUM_SPECIAL + len(words)
  _check(text.vocab_size >= needed, "text.vocab_size", text.vocab_size,
         f"an integer >= {needed} (text.vocabulary has {len(words)} words + "
         f"{text_lib.NUM_SPECIAL} special tokens)")

  if model.kind == "stunet":
    temporal = model.temporal
    _check(len(temporal.down_levels) == levels - 1, "model.temporal.down_levels",
           tuple(temporal.down_levels),
           f"one bool per spatial down-sampling ({levels - 1})")
    _check(temporal.kernel_size % 2 == 1 and temporal.kernel_size >= 1,
           "model.temporal.kernel_size", temporal.kernel_size, "an odd integer >= 1")
    _check(temporal.attention_blocks >= 0, "model.temporal.attention_blocks",
           temporal.attention_blocks, "an integer >= 0")
    _check(channels[-1] % temporal.num_heads == 0, "model.temporal.num_heads",
           temporal.num_heads, f"a divisor of the coarsest width {channels[-1]}")
    factor = temporal_factor(model)
    _check(data.num_frames >= 1 and data.num_frames % factor == 0, "data.num_frames",
           data.num_frames, f"a positive multiple of the temporal factor {factor} "
           f"(2 ** number of True in model.temporal.down_levels)")
  else:
    _check(data.num_frames >= 1, "data.num_frames", data.num_frames, "an integer >= 1")
  factor = spatial_factor(model)
  _check(data.resolution >= factor and data.resolution % factor == 0, "data.resolution",
         data.resolution, f"a positive multiple of the spatial factor {factor} "
         f"(2 ** (levels - 1))")
  _check(data.batch_size >= 1, "data.batch_size", data.batch_size, "an integer >= 1")
  _validate_mesh(config.mesh)
  validate_diffusion_config(config.diffusion)
  validate_train_config(config)


def _validate_mesh(mesh: ml_collections.ConfigDict) -> None:
  _check(len(mesh.axes) == len(mesh.shape), "mesh.shape", tuple(mesh.shape),
         f"one size per axis of mesh.axes={tuple(mesh.axes)}")
  _check(sum(s == -1 for s in mesh.shape) <= 1, "mesh.shape", tuple(mesh.shape),
         "positive sizes with at most one -1 (the rest of the devices)")
  _check(all(s == -1 or s >= 1 for s in mesh.shape), "mesh.shape", tuple(mesh.shape),
         "positive sizes or -1")


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple:
  """Replaces -1 by the rest of the devices; refuses shapes that don't use them all."""
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ConfigError(f"mesh.shape={tuple(shape)} does not divide {num_devices} devices")
    shape = tuple(num_devices // known if s == -1 else s for s in shape)
  if math.prod(shape) != num_devices:
    raise ConfigError(f"mesh.shape={tuple(shape)} needs {math.prod(shape)} devices, "
                      f"have {num_devices}")
  return tuple(shape)


def _check(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    raise ConfigError(f"{field}={value!r} is invalid; allowed: {allowed}")
