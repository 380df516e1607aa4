"""Config loading, overrides and validation: every invalid shape is refused with an error
naming the field and the allowed values, before anything is traced or compiled."""

import functools
import json
import math
import pathlib
import re

import flax
import jax
import pytest
from jax.sharding import PartitionSpec

from lumiere_jax.config import (finalize, load_config, parse_overrides, resolve_mesh_shape,
                                shipped_names)
from lumiere_jax.errors import ConfigError, UserError
from lumiere_jax.models import build

INVALID = [
    # (override, field named in the error, words of the allowed values)
    ("data.num_frames=10", "data.num_frames", "multiple of the temporal factor 4"),
    ("data.num_frames=0", "data.num_frames", "positive multiple"),
    ("data.resolution=30", "data.resolution", "multiple of the spatial factor 4"),
    ("model.block_out_channels=(32, 60, 64)", "model.block_out_channels[1]",
     "multiple of model.norm_num_groups=8"),
    ("model.norm_num_groups=7", "model.block_out_channels[0]",
     "multiple of model.norm_num_groups=7"),
    ("model.num_attention_heads=5", "model.num_attention_heads[0]",
     "divisor of model.block_out_channels[0]=32"),
    ("model.cross_attention_levels=(False, True)", "model.cross_attention_levels",
     "one bool per level (3 levels"),
    ("model.temporal.down_levels=(True, True, True)", "model.temporal.down_levels",
     "one bool per spatial down-sampling (2)"),
    ("model.temporal.num_heads=5", "model.temporal.num_heads", "divisor of the coarsest"),
    ("model.temporal.kernel_size=4", "model.temporal.kernel_size", "odd integer"),
    ("model.temporal.caption_drop_words=('circle', 'hexagon')",
     "model.temporal.caption_drop_words", "words of text.vocabulary"),
    ("model.temporal.caption_parts=1", "model.temporal.caption_parts", "integer >= 2"),
    ("model.temporal.caption_parts=2;model.temporal.caption_split_word='with'",
     "model.temporal.caption_split_word", "a word of text.vocabulary"),
    ("model.in_channels=4", "model.in_channels", "7 (conditional"),
    ("model.cross_attention_dim=32", "model.cross_attention_dim", "text.width=64"),
    ("text.num_heads=5", "text.num_heads", "divisor of text.width=64"),
    ("model.kind='unet3d'", "model.kind", "one of ('unet2d', 'stunet')"),
    ("model.dtype='float8'", "model.dtype", "one of"),
    ("mesh.shape=(-1, -1, 1)", "mesh.shape", "at most one -1"),
    ("mesh.shape=(2, 2)", "mesh.shape", "one size per axis"),
    ("diffusion.ssr_residual_scale=4.0", "diffusion.ssr_residual_scale",
     "not an SSR model"),
]


@pytest.mark.parametrize("override,field,allowed", INVALID)
def test_invalid_shapes_name_the_field_before_any_compile(override, field, allowed):
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with pytest.raises(ConfigError) as error:
      load_config("shapes_tiny:t2v", override.split(";"))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  message = str(error.value)
  assert message.startswith(f"{field}=") and allowed in message, message
  assert "\n" not in message
  assert not [e for e in compiles if "compile" in e], compiles


def test_all_shipped_configs_validate():
  for spec in ["shapes_tiny:t2i", "shapes_tiny:t2v", "shapes_tiny:ssr", "shapes_tiny:cond",
               "shapes_tiny:style", "lumiere_base:t2i", "lumiere_base:t2v"]:
    assert load_config(spec).is_locked


def test_unknown_override_key_gets_a_suggestion():
  with pytest.raises(UserError, match=r"unknown config key 'data.num_frame'; did you mean "
                                      r"'data.num_frames'\?"):
    load_config("shapes_tiny:t2v", ["data.num_frame=8"])


def test_override_type_is_checked():
  with pytest.raises(UserError, match="expects int"):
    load_config("shapes_tiny:t2v", ["data.num_frames='many'"])


def test_unknown_variant_and_missing_file():
  with pytest.raises(UserError, match="unknown variant 'video'"):
    load_config("shapes_tiny:video")
  with pytest.raises(UserError, match="config file not found"):
    load_config("configs/nope.py")


def test_an_unknown_config_name_lists_the_shipped_ones():
  assert {"shapes_tiny", "lumiere_base"} <= set(shipped_names())
  with pytest.raises(UserError) as error:
    load_config("shapes_tny:t2v")
  message = str(error.value)
  assert message.startswith("unknown config 'shapes_tny'; the shipped configs are ")
  assert all(name in message for name in shipped_names()) and "\n" not in message


def test_a_name_and_a_path_load_the_same_config(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # a name does not depend on the working directory
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "shapes_tiny.py"
  assert load_config("shapes_tiny:t2i").to_dict() == load_config(f"{path}:t2i").to_dict()


def test_override_values_follow_the_field_type():
  config = load_config("shapes_tiny:t2v", ["train.data_dir=123", "train.progress_bar=true",
                                           "train.learning_rate=1", "seed=7"])
  assert config.train.data_dir == "123" and config.train.progress_bar is True
  assert config.train.learning_rate == 1.0 and isinstance(config.train.learning_rate, float)
  with pytest.raises(UserError, match="expects int, got 1.5"):
    load_config("shapes_tiny:t2v", ["seed=1.5"])


def test_override_flags_are_one_syntax():
  assert parse_overrides(["--config.a.b=1", "--config.c=(1, 2)"]) == ["a.b=1", "c=(1, 2)"]
  with pytest.raises(UserError, match="--config.a.b given more than once"):
    parse_overrides(["--config.a.b=1", "--config.a.b=2"])
  with pytest.raises(UserError, match="write a config override as --config.a.b=VALUE"):
    parse_overrides(["--config.a.b"])


def test_mesh_shape_rest_of_devices():
  assert resolve_mesh_shape((-1, 2, 1), 8) == (4, 2, 1)
  with pytest.raises(ConfigError, match="does not divide 8 devices"):
    resolve_mesh_shape((-1, 3, 1), 8)
  with pytest.raises(ConfigError, match="needs 4 devices, have 8"):
    resolve_mesh_shape((2, 2, 1), 8)


def test_a_batch_the_mesh_cannot_split_is_refused_unless_its_frames_can_be():
  """Issue 18: every device of the batch's mesh axes gets its own work. One 80-frame
  clip on 8 fsdp devices is split by frames (the 16 GiB layout); a batch of images, or
  of clips whose frames do not divide either, that the devices do not divide is refused."""
  from lumiere_jax.parallel.mesh import check_batch_fits
  from lumiere_jax.parallel.sharding import logical_to_spec
  one_clip = load_config("lumiere_base:t2v", ["data.batch_size=1"])
  assert check_batch_fits(one_clip, 8) == (1, 8, 1)
  # With a data axis, one clip per data index: the frames, else the rows, take fsdp.
  rules, sizes = one_clip.logical_axis_rules, {"data": 4, "fsdp": 8, "tensor": 1}
  video = ("batch", "time", "height", "width", "embed")
  assert logical_to_spec(video, (4, 80, 128, 128, 128), rules, sizes) == \
      PartitionSpec("data", "fsdp")
  assert logical_to_spec(video, (4, 20, 32, 32, 512), rules, sizes) == \
      PartitionSpec("data", None, "fsdp")
  assert check_batch_fits(load_config("lumiere_base:t2v", ["data.batch_size=4",
                                                           "mesh.shape=(-1, 8, 1)"]), 32)
  assert check_batch_fits(load_config("lumiere_base:t2v", ["data.batch_size=16"]), 8)
  assert check_batch_fits(load_config("shapes_tiny:t2v", ["data.batch_size=3"]), 1)
  with pytest.raises(ConfigError, match=r"data.batch_size=3 \(images\) cannot be split over "
                     r"the 8 devices of mesh axes data=8 \(mesh.shape=\(8, 1, 1\)\)"):
    check_batch_fits(load_config("shapes_tiny:t2i", ["data.batch_size=3"]), 8)
  assert check_batch_fits(load_config("shapes_tiny:t2v", ["data.batch_size=3",
                                                          "mesh.shape=(1,-1,1)"]), 8)
  with pytest.raises(ConfigError, match=r"\(clips of 12 frames\) cannot be split over the "
                     r"8 devices of mesh axes fsdp=8"):
    check_batch_fits(load_config("shapes_tiny:t2v", ["data.batch_size=3",
                                                     "data.num_frames=12",
                                                     "mesh.shape=(1,-1,1)"]), 8)


README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@functools.lru_cache(maxsize=None)
def _abstract_params(spec: str):
  return flax.linen.meta.unbox(build.abstract_params(load_config(spec)))


def test_paper_scale_init_is_abstract():
  """The paper-scale model's parameters are only shapes: nothing is allocated."""
  abstract = _abstract_params("lumiere_base:t2v")
  leaves = jax.tree_util.tree_leaves(abstract)
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
  counts = build.params_by_component(abstract)
  assert counts["backbone"] > 500e6 and counts["temporal"] > 100e6, counts


def test_a_run_saved_before_a_field_existed_reads_it_as_its_default():
  from lumiere_jax.train.checkpoint import config_from_saved
  config = load_config("shapes_tiny:t2v", ["train.learning_rate=0.003"])
  saved = json.loads(json.dumps(config.to_dict()))  # as orbax stores it: tuples -> lists
  del saved["train"]["frozen_at_init"]
  restored = finalize(config_from_saved(saved), [])
  assert restored.train.frozen_at_init == ()
  assert restored.to_dict() == config.to_dict()


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def _component_counts(spec: str) -> dict:
  """The README table's rows, counted here from the parameter tree (temporal module names:
  blocks_{down|up}_{level}_{j}, mid_{n}, {down|up}sample_{i})."""
  params = _abstract_params(spec)
  coarsest = len(load_config(spec).model.block_out_channels) - 1
  temporal = params["temporal"]
  resampling = {k: v for k, v in temporal.items() if k.startswith(("downsample_", "upsample_"))}
  attention = {k: v for k, v in temporal.items()
               if k.startswith("mid_") or (k.startswith("blocks_")
                                           and k.split("_")[2] == str(coarsest))}
  conv = {k: v for k, v in temporal.items() if k not in resampling and k not in attention}
  assert conv and attention and resampling
  return {"backbone (T2I U-Net, frozen in t2v)": _count(params["backbone"]),
          "temporal layers (trained in t2v)": _count(temporal),
          "conv inflation blocks": _count(conv),
          "attention inflation blocks (coarsest level)": _count(attention),
          "temporal down/up-sampling": _count(resampling),
          "text encoder": _count(params["text"]),
          "total": _count(params)}


def _readme_parameter_table() -> dict:
  """README "Parameter counts": {row: (lumiere_base:t2v, shapes_tiny:t2v) as written}."""
  section = README.read_text().split("### Parameter counts", 1)[1].split("\n### ", 1)[0]
  rows = {}
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 3 and all(re.fullmatch(r"[\d,]+\.\d\dM", c) for c in cells[1:]):
      rows[cells[0]] = tuple(cells[1:])
  return rows


def _millions(n: int) -> str:
  return f"{n / 1e6:,.2f}M"


def test_readme_parameter_counts_are_the_models():
  """Every count in the README's table, and its per-block backbone line, is what the
  configs build now (jax.eval_shape: nothing allocated)."""
  table = _readme_parameter_table()
  counted = {spec: _component_counts(spec) for spec in ("lumiere_base:t2v", "shapes_tiny:t2v")}
  assert set(table) == set(counted["lumiere_base:t2v"]), sorted(table)
  for row, written in table.items():
    assert written == tuple(_millions(counted[spec][row]) for spec in counted), row
  line = re.search(r"Backbone per block \(M\): down ([\d. /]+), mid ([\d.]+),\s+up ([\d. /]+)\.",
                   README.read_text())
  assert line, "the README's per-block backbone line"
  written = [float(v) for group in line.groups() for v in group.split("/")]
  backbone = _abstract_params("lumiere_base:t2v")["backbone"]
  levels = len(load_config("lumiere_base:t2v").model.block_out_channels)
  names = ([f"down_blocks_{i}" for i in range(levels)] + ["mid_block"]
           + [f"up_blocks_{i}" for i in range(levels)])
  assert written == [round(_count(backbone[name]) / 1e6, 2) for name in names]
