"""Checkpoints: an orbax CheckpointManager in WORKDIR/checkpoints with three named items,
  state   the TrainState (params, frozen params, optimizer state, EMA, counters)
  config  the run's config as JSON (what the state was trained with)
  data    the grain iterator's position, one file per process
saved asynchronously (the step goes on while the arrays are written) and atomically
(orbax writes a temporary folder and renames it when complete, so a killed save leaves
no step folder behind), keeping the newest `train.keep_checkpoints`.

Every restored array gets the NamedSharding of its target on the current mesh, whatever
mesh it was saved from. Restores check shapes first and name the config fields that
differ, instead of failing deep inside orbax.

A numbered folder counts as a checkpoint only when it is complete (`is_complete`: the
files orbax writes before the rename that makes it appear). Anything else with a number
for a name (a folder a person made, a copy cut short) is named and refused in one line
before any model is built, by training (which would resume from it, or let orbax
delete or overwrite it) and by every reader.
"""

import contextlib
import errno
import json
import logging
import os
import pathlib
import re
from typing import Optional

import flax.linen as nn
import grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec

from lumiere_jax import runtime
from lumiere_jax.config.defaults import base_config
from lumiere_jax.data import pipeline
from lumiere_jax.errors import UserError
from lumiere_jax.models import build, widen

CHECKPOINTS = "checkpoints"
STATE, CONFIG, DATA = "state", "config", pipeline.DATA_ITEM
# What orbax has written in a step folder by the time it renames it into place.
COMPLETE_MARKERS = ("_CHECKPOINT_METADATA", f"{STATE}/_METADATA", f"{CONFIG}/metadata")
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
# Config fields that decide the state's structure and shapes (prefixes), and those among
# them that do not.
SHAPE_FIELDS = ("stage", "model.", "text.", "train.trainable")
NOT_SHAPE_FIELDS = ("model.dtype", "model.remat")
# Replicated arrays are written in slices by several replicas only where each slice is
# at least this big: slicing a small array costs a compiled program and a dispatch per
# slice and saves nothing.
MIN_REPLICA_SLICE_BYTES = 1 << 20
# What makes a pre-trained checkpoint's groups fit this model: the shared architecture,
# not what differs between stages by design.
ARCHITECTURE_FIELDS = ("model.", "text.")
STAGE_FIELDS = ("model.kind", "model.temporal.")


def make_manager(directory, train_config=None) -> ocp.CheckpointManager:
  """The manager of one checkpoints folder; without `train_config`, one that only reads
  (it is never asked to save)."""
  arrays = ocp.type_handlers.ArrayHandler(
      min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES)
  registry = ocp.type_handlers.create_type_handler_registry((jax.Array, arrays))
  handlers = {STATE: ocp.PyTreeCheckpointHandler(type_handler_registry=registry),
              CONFIG: ocp.JsonCheckpointHandler(),
              DATA: grain.checkpoint.CheckpointHandler()}
  if train_config is None:
    options = ocp.CheckpointManagerOptions(create=False)
  else:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=train_config.keep_checkpoints,
        save_interval_steps=train_config.checkpoint_every,
        enable_async_checkpointing=True, create=True,
        # Temporary folders of saves cut short by a kill are never a checkpoint.
        cleanup_tmp_directories=True)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), item_handlers=handlers,
                               options=options)


def save(manager, step: int, state, config, iterator, force: bool = False) -> bool:
  """Starts an asynchronous save of step `step`; returns whether one was started. (A
  Ctrl-C waits for the save to be under way: runtime.shielded.)"""
  args = ocp.args.Composite(**{
      STATE: ocp.args.PyTreeSave(state),
      CONFIG: ocp.args.JsonSave(config.to_dict()),
      DATA: pipeline.iterator_save_args(iterator)})
  with runtime.shielded(), disk_errors(manager):
    return manager.save(step, args=args, force=force)


def wait(manager) -> None:
  """Blocks until the pending save is committed."""
  with runtime.shielded(), disk_errors(manager):
    manager.wait_until_finished()


def close(manager) -> None:
  """Waits for the pending save, then stops orbax's background threads, also when the
  save failed (threads left running print tracebacks at interpreter exit)."""
  try:
    wait(manager)
  except BaseException:
    with contextlib.suppress(Exception):
      manager.close()
    raise
  with disk_errors(manager):
    manager.close()


@contextlib.contextmanager
def reading(directory):
  """A read-only manager of `directory`, closed on leaving."""
  manager = make_manager(directory)
  try:
    yield manager
  finally:
    manager.close()


@contextlib.contextmanager
def disk_errors(manager, what: str = "a checkpoint", where=None):
  """Turns a full or read-only disk while writing `what` (to `where`, default the
  checkpoints folder) into one line. Orbax never renames an incomplete save into place,
  so the newest committed checkpoint stays intact."""
  try:
    yield
  except UserError:
    raise  # already the line (from a save inside a wider block)
  except Exception as error:  # orbax wraps errors of its background threads
    code = _disk_errno(error)
    if code not in DISK_ERRNOS:
      raise
    steps = committed_steps(manager.directory)
    kept = (f"step {steps[-1]} is the newest intact checkpoint" if steps
            else "no earlier checkpoint exists")
    raise UserError(f"could not write {what} to {where or manager.directory}: "
                    f"{os.strerror(code)}; {kept}") from error


def _disk_errno(error) -> Optional[int]:
  """The errno behind `error`: an OSError's own, or the one tensorstore (which writes the
  arrays) puts in its message; either may be wrapped by orbax."""
  while error is not None:
    if isinstance(error, OSError) and error.errno is not None:
      return error.errno
    match = OS_ERROR_CODE.search(str(error))
    if match:
      return int(match.group(1))
    error = error.__cause__ or error.__context__
  return None


def is_complete(step_folder) -> bool:
  """Whether a numbered folder is a checkpoint orbax finished writing."""
  return all((pathlib.Path(step_folder) / marker).is_file() for marker in COMPLETE_MARKERS)


def numbered_entries(directory) -> list:
  """The steps of every numbered entry of `directory`, complete or not."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def committed_steps(directory) -> list:
  """The steps of the complete checkpoints in `directory`, oldest first."""
  directory = pathlib.Path(directory)
  return [s for s in numbered_entries(directory) if is_complete(directory / str(s))]


def set_aside_interrupted_saves(directory) -> list:
  """Renames each numbered folder that an interrupted save of ours left behind (it holds
  orbax's state or config item but not every COMPLETE_MARKERS file: a SIGKILL between
  orbax's rename and its metadata write) to `.interrupted-STEP`, which no step scan
  reads, so a resume starts from the newest complete checkpoint and nothing is deleted.
  Anything else numbered is left for check_checkpoints_folder to refuse. Returns the
  new paths."""
  directory = pathlib.Path(directory)
  moved = []
  for step in numbered_entries(directory):
    entry = directory / str(step)
    ours = entry.is_dir() and ((entry / STATE).is_dir() or (entry / CONFIG).is_dir())
    if is_complete(entry) or not ours:
      continue
    target = directory / f".interrupted-{step}"
    suffix = 0
    while target.exists():
      suffix += 1
      target = directory / f".interrupted-{step}-{suffix}"
    entry.rename(target)
    logging.getLogger(__name__).warning("checkpoint %s was not completed (an interrupted save); set aside as %s",
                    entry, target.name)
    moved.append(target)
  return moved


def check_checkpoints_folder(directory) -> None:
  """UserError naming the first numbered entry of `directory` that is not a complete
  checkpoint (orbax would take it for one)."""
  directory = pathlib.Path(directory)
  if directory.exists() and not directory.is_dir():
    raise UserError(f"{directory} is not a folder; a run keeps its checkpoints there")
  for step in numbered_entries(directory):
    entry = directory / str(step)
    if not is_complete(entry):
      missing = [m for m in COMPLETE_MARKERS if not (entry / m).is_file()]
      raise UserError(f"{entry} is not a complete checkpoint (it lacks {', '.join(missing)});"
                      f" move it out of {directory}")


# ---------------------------------------------------------------------------------------
# Resuming a run


def restore(manager, step: int, config, target, iterator=None):
  """The state of `step`, every leaf placed with `target`'s shardings; also moves
  `iterator`, when given, to the saved data position. Refuses a checkpoint whose shapes
  differ from `target`."""
  check_shapes(manager, step, config, target)
  items = {STATE: ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))}
  if iterator is not None:
    items[DATA] = pipeline.iterator_restore_args(iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))[STATE]


def saved_config(manager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]


def check_shapes(manager, step: int, config, target) -> None:
  """UserError naming the config fields behind any shape or structure difference between
  the checkpoint's state and `target`."""
  saved = saved_shapes(manager, step)
  wanted = _shapes(target)
  if saved == wanted:
    return
  raise UserError(f"the checkpoint {manager.directory}/{step} does not fit this config: "
                  f"{_explain(saved, wanted, saved_config(manager, step), config)}; "
                  f"use the checkpoint's values or a new --workdir")


def saved_shapes(manager, step: int) -> dict:
  metadata = manager.item_metadata(step)[STATE]
  return _shapes(metadata.tree)


def _shapes(tree) -> dict:
  """{'params/temporal/.../kernel': shape} for any state-like tree (arrays, abstract
  arrays, orbax metadata), so trees of different container types compare."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path(path): tuple(leaf.shape) for path, leaf in leaves}


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def _explain(saved: dict, wanted: dict, saved_cfg: dict, config,
             fields=SHAPE_FIELDS, ignored=NOT_SHAPE_FIELDS) -> str:
  fields = differing_fields(saved_cfg, config.to_dict(), fields, ignored)
  if fields:
    return "; ".join(f"{name}={there!r} in the checkpoint, {here!r} here"
                     for name, there, here in fields)
  for path in sorted(set(saved) | set(wanted)):
    if saved.get(path) != wanted.get(path):
      return f"{path} has shape {saved.get(path)} in the checkpoint, {wanted.get(path)} here"
  return "the state differs"


def differing_fields(saved_cfg: dict, current_cfg: dict, fields=SHAPE_FIELDS,
                     ignored=NOT_SHAPE_FIELDS) -> list:
  """[(dotted name, saved value, current value)] of the fields under the `fields`
  prefixes (minus the `ignored` ones) whose values differ."""
  saved, current = _flatten(saved_cfg), _flatten(current_cfg)
  names = sorted(n for n in set(saved) | set(current)
                 if n.startswith(fields) and not n.startswith(ignored)
                 and saved.get(n) != current.get(n))
  return [(n, saved.get(n), current.get(n)) for n in names]


def _flatten(tree, prefix="") -> dict:
  """Dotted keys -> JSON-normal values (tuples become lists, as after a JSON round trip)."""
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: json.loads(json.dumps(tree))}


# ---------------------------------------------------------------------------------------
# Loading parameters from another run (an earlier stage, or for generation)


def find_checkpoint(path) -> tuple:
  """(checkpoints folder, step) for a workdir, its checkpoints/ folder, or one step folder
  (the newest step unless a step folder is named). Only complete checkpoints count; a
  numbered entry that is not one is refused in one line (check_checkpoints_folder)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise UserError(f"checkpoint {path} does not exist")
  if not path.is_dir():
    raise UserError(f"checkpoint {path} is not a folder (give a training workdir)")
  if path.name.isdigit() and any((path / m).exists() for m in (STATE, CONFIG,
                                                               COMPLETE_MARKERS[0])):
    check_checkpoints_folder(path.parent)
    return path.parent, int(path.name)
  directory = path / CHECKPOINTS if (path / CHECKPOINTS).exists() else path
  check_checkpoints_folder(directory)
  steps = committed_steps(directory)
  if not steps:
    raise UserError(f"checkpoint {path} holds no complete checkpoint")
  return directory, steps[-1]


def load_run_config(path) -> ml_collections.ConfigDict:
  """The config a checkpoint was trained with (see config_from_saved)."""
  directory, step = find_checkpoint(path)
  with reading(directory) as manager:
    return config_from_saved(saved_config(manager, step))


def config_from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (JSON: lists back to tuples) on top of today's defaults: a run saved
  before a field existed reads it as its default; every saved value is kept."""
  config = base_config()
  _merge(config, _tuples(saved))
  return config


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      _merge(config[key], value)
    else:
      config[key] = value


def _tuples(tree):
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(v) for v in tree)
  return tree


def load_params(path, config, params_target: dict, use_ema: bool = True) -> dict:
  """The parameter groups a checkpoint holds that `config`'s model also has, e.g.
  {'backbone', 'text'} from a t2i run: frozen groups as saved, trainable ones from the
  EMA (or the raw weights). `params_target` is the full parameter tree as
  ShapeDtypeStructs with their shardings on the current mesh (Layout.params_target()).
  Any shape difference is an error naming the config fields."""
  directory, step = find_checkpoint(path)
  with reading(directory) as manager:
    return _load_params(manager, step, config, params_target, use_ema)


def _load_params(manager, step: int, config, params_target: dict, use_ema: bool) -> dict:
  directory = manager.directory
  saved = manager.item_metadata(step)[STATE].tree
  trained = "ema" if use_ema else "params"
  sources = {group: source for source in ("frozen", trained)
             for group in saved.get(source, {}) if group in params_target}
  if not sources:
    raise UserError(f"checkpoint {directory}/{step} holds none of the parameter groups "
                    f"{sorted(params_target)} this model has")
  target = {}
  for group, source in sources.items():
    target.setdefault(source, {})[group] = params_target[group]
  target, narrowed = _narrow_input_kernel(saved, target, sources)
  _check_groups(saved, target, manager, step, config, widening=narrowed is not None)
  restored = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.PyTreeRestore(
      target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
      partial_restore=True)}))[STATE]
  loaded = {group: restored[source][group] for group, source in sources.items()}
  if narrowed is not None:
    loaded = _widen_input_kernel(loaded, params_target, narrowed, directory, step)
  return loaded


def _narrow_input_kernel(saved, target, sources):
  """(target, channels): a base model loaded into a model with more input channels (the
  conditional model's <J, C, M>, models/widen.py) is restored with the checkpoint's
  narrower first-convolution kernel (replicated: it is small), which has `channels`
  inputs; (target, None) when nothing is to be widened. `target` is not changed."""
  source = sources.get(widen.INPUT_KERNEL[0])
  path = (source, *widen.INPUT_KERNEL)
  try:
    saved_kernel, wanted = _leaf(saved, path), _leaf(target, path)
  except (KeyError, TypeError):
    return target, None
  if not widen.can_widen(saved_kernel.shape, wanted.shape):
    return target, None
  placement = wanted.sharding
  if isinstance(placement, NamedSharding):
    placement = NamedSharding(placement.mesh, PartitionSpec())
  narrow = jax.ShapeDtypeStruct(tuple(saved_kernel.shape), wanted.dtype, sharding=placement)
  return _with_leaf(target, path, narrow), int(saved_kernel.shape[widen.INPUT_AXIS])


def _leaf(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _with_leaf(tree: dict, path, leaf) -> dict:
  """A copy of the nested dict `tree` with `leaf` at `path` (the dicts along the path
  are copied, the rest shared)."""
  if not path:
    return leaf
  return {**tree, path[0]: _with_leaf(tree[path[0]], path[1:], leaf)}


def _widen_input_kernel(loaded, params_target, saved_channels, directory, step):
  """The loaded groups with the first convolution widened to the target's input
  channels (zero weights for the new ones), placed with the target's sharding."""
  wanted = widen.input_kernel(params_target)
  channels = wanted.shape[widen.INPUT_AXIS]
  kernel = jax.jit(lambda k: widen.widen_kernel(k, channels),
                   out_shardings=wanted.sharding)(widen.input_kernel(loaded))
  logging.getLogger(__name__).info(
      "widened the first convolution of %s/%d from %d to %d input channels (the new "
      "weights are zero)", directory, step, saved_channels, channels)
  return widen.with_input_kernel(loaded, kernel)


def _check_groups(saved, target, manager, step, config, widening: bool = False) -> None:
  saved_part = {source: {g: saved[source][g] for g in groups} for source, groups in target.items()}
  there, here = _shapes(saved_part), _shapes(target)
  if there != here:
    ignored = NOT_SHAPE_FIELDS + STAGE_FIELDS + (("model.in_channels",) if widening else ())
    explanation = _explain(there, here, saved_config(manager, step), config,
                           ARCHITECTURE_FIELDS, ignored)
    raise UserError(f"checkpoint {manager.directory}/{step} has another architecture than "
                    f"this config: {explanation}")


def load_trained_params(path, config, shardings=None, use_ema: bool = True) -> dict:
  """The full parameter tree of a trained model, for generation and evaluation: the EMA
  (or raw) weights of the trained groups and the frozen groups as saved. `shardings`
  (a tree like the parameters) defaults to the first device."""
  abstract = nn.meta.unbox(build.abstract_params(config))
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree_util.tree_map(lambda _: device, abstract)
  target = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  params = load_params(path, config, target, use_ema)
  missing = sorted(set(abstract) - set(params))
  if missing:
    raise UserError(f"checkpoint {path} has no {missing} parameters")
  return params
