"""The shapes evaluator: held-out prompts, the model's videos and rendered ground truth,
judged alike (evaluation/tracker.py), side by side.

Prompts come from a held-out caption split: every prompt holds one of HELD_OUT, the
(colour, shape, motion) combinations that the shipped models' training data leaves out
(launch/shapes_recipe.sh), so the model must compose words it saw only apart. Prompt i
gets motion MOTIONS[i % 8]; a quarter of them add a second object (a different colour,
any combination that is not held out), and which motions get the second object rotates
from one round of 8 prompts to the next, so over 32 prompts every held-out combination
appears both alone and with company. The ground-truth clip of prompt i is rendered by
the data builder with the same caption, at the model's resolution and frame count.
"""

import dataclasses
import json
import math
from typing import Callable, Sequence

import numpy as np

from lumiere_jax.data import masks, shapes
from lumiere_jax.evaluation import tracker
from lumiere_jax.io import atomic

HELD_OUT = (
    ("red", "triangle", "moving left"),
    ("green", "circle", "moving right"),
    ("blue", "square", "moving up"),
    ("yellow", "triangle", "moving down"),
    ("magenta", "circle", "bouncing around"),
    ("cyan", "square", "growing"),
    ("white", "circle", "shrinking"),
    ("red", "square", "standing still"),
)
# The motion each motion is contrasted with by `contrast_prompt`.
OPPOSITE = {"moving left": "moving right", "moving right": "moving left",
            "moving up": "moving down", "moving down": "moving up",
            "growing": "shrinking", "shrinking": "growing",
            "bouncing around": "standing still", "standing still": "bouncing around"}
TWO_OBJECT_EVERY = 4  # one prompt in 4 has two objects (see two_objects)
# The objects of one-object and of two-object prompts, judged apart: a model can follow
# single prompts and fail at two (binding each motion to its object).
BY_COUNT = (("one object", 1), ("two objects", 2))
FIGURES = ("area_stability", "centroid_jitter", "max_step", "flicker")


@dataclasses.dataclass(frozen=True)
class EvalItem:
  caption: str
  ground_truth: np.ndarray  # uint8 [T, H, W, 3]


def contrast_prompt(caption: str) -> str:
  """`caption` with every motion replaced by its OPPOSITE: the negative prompt of
  contrastive guidance, n + w (c - n), which pushes a sample away from the motion it
  should not have (the direction word decides little of a sample's high-noise
  prediction; ../shared/notes/MOTION.md)."""
  phrases = caption.split(" and ")
  for i, phrase in enumerate(phrases):
    motion = next((m for m in OPPOSITE if phrase.endswith(" " + m)), None)
    if motion is not None:
      phrases[i] = phrase[:-len(motion)] + OPPOSITE[motion]
  return " and ".join(phrases)


def two_objects(index: int) -> bool:
  """Whether prompt `index` names a second object: one in TWO_OBJECT_EVERY, shifted by
  one each round of len(MOTIONS) prompts (a fixed i % 4 == 3 would give the second object
  to the same two motions forever)."""
  shift = index // len(shapes.MOTIONS)
  return (index + shift) % TWO_OBJECT_EVERY == TWO_OBJECT_EVERY - 1


COMBINATIONS = ("held-out", "seen")


def seen_twin(triple: tuple) -> tuple:
  """A held-out (colour, shape, motion) with its colour moved to the next palette colour:
  the same shape and motion in a combination the training data holds."""
  colours = list(shapes.COLOURS)
  return (colours[(colours.index(triple[0]) + 1) % len(colours)],) + tuple(triple[1:])


def held_out_items(num: int, seed: int, resolution: int, num_frames: int,
                   combinations: str = "held-out") -> list:
  """`num` prompts with their ground-truth clips; deterministic in `seed`. Each prompt's
  first object is a held-out combination ("held-out") or its `seen_twin` ("seen": the
  same prompts' layout with combinations seen in training, which tells a failure to
  compose from a failure to draw)."""
  if combinations not in COMBINATIONS:
    raise ValueError(f"combinations {combinations!r}: one of {COMBINATIONS}")
  by_motion = {motion: triple for triple in HELD_OUT for motion in [triple[2]]}
  items = []
  for i in range(num):
    required = by_motion[shapes.MOTIONS[i % len(shapes.MOTIONS)]]
    if combinations == "seen":
      required = seen_twin(required)
    clip = shapes.render_clip((seed, i), resolution, num_frames,
                              two_object_fraction=1.0 if two_objects(i) else 0.0,
                              excluded=frozenset(HELD_OUT), required=required)
    items.append(EvalItem(clip.caption, clip.video))
  return items


def segment_steps(videos: Sequence[np.ndarray]) -> dict:
  """Mean absolute frame-to-frame difference (0-255 units, all pixels) of the frame
  pairs that touch a quarter-rate keyframe (data/masks.py `keyframe_positions`, the
  frames a keyframes + TSR cascade fixes: 0, 5, 10, 15 of 16) and of those inside the
  segments between them; `across / inside` is about 1 where motion is smooth and grows
  where the in-between frames bunch up against their keyframes. The same positions are
  measured for every pipeline."""
  videos = np.asarray(videos, np.float32)
  frames = videos.shape[1]
  keys = set(masks.keyframe_positions(frames, max(1, frames // masks.KEYFRAME_RATE)).tolist())
  steps = np.abs(np.diff(videos, axis=1)).mean(axis=(0, 2, 3, 4))  # [T - 1]
  touches = np.array([i in keys or i + 1 in keys for i in range(frames - 1)])
  across = float(steps[touches].mean()) if touches.any() else math.nan
  inside = float(steps[~touches].mean()) if (~touches).any() else math.nan
  return {"across": across, "inside": inside, "across_over_inside": across / inside
          if inside > 0 else math.nan}


def score(videos: Sequence[np.ndarray], captions: Sequence[str]) -> dict:
  """Judges every named object: accuracy per motion and overall, the mean
  temporal-consistency figures, the share of objects lost midway (tracker.halves), the
  frame steps of `segment_steps`, and every object's judgement (`rows`, one list per
  caption)."""
  judged = [tracker.judge_video(np.asarray(video), caption)
            for video, caption in zip(videos, captions)]
  objects = [r for results in judged for r in results]
  per_motion = {}
  for motion in shapes.MOTIONS:
    rows = [r for r in objects if r["name"] == motion]
    per_motion[motion] = {"n": len(rows),
                          "accuracy": _mean([r["motion"] for r in rows])}
  overall = _accuracies(objects)
  by_count = {}
  for label, count in BY_COUNT:
    rows = [r for results in judged if len(results) == count for r in results]
    by_count[label] = {"n": len(rows), **_accuracies(rows), **_figures(rows)}
  lost = {"all": _mean([r["lost_midway"] for r in objects]),
          **{label: _mean([r["lost_midway"] for results in judged if len(results) == count
                           for r in results]) for label, count in BY_COUNT}}
  return {"objects": len(objects), "accuracy": overall, "per_motion": per_motion,
          "by_count": by_count, "consistency": _figures(objects), "lost_midway": lost,
          "segments": segment_steps(videos), "rows": [_row_record(r) for r in judged]}


def _row_record(results: list) -> list:
  """One caption's judged objects, as plain JSON values."""
  return [{key: (round(v, 4) if isinstance(v, float) else v) for key, v in r.items()}
          for r in results]


def _figures(rows: list) -> dict:
  """The mean temporal-consistency figures of judged objects (NaN where none has one)."""
  return {key: _nanmean([r.get(key, np.nan) for r in rows]) for key in FIGURES}


def _accuracies(rows: list) -> dict:
  return {key: _mean([r[key] for r in rows]) for key in ("motion", "colour", "shape")}


def _mean(values) -> float:
  return float(np.mean(values)) if len(values) else math.nan


def _nanmean(values) -> float:
  values = np.asarray(values, np.float64)
  return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan


def ratio(model: float, truth: float) -> float:
  """model / truth; 1 when both are 0 (ground truth has no background flicker at all,
  and a model without any matches it); NaN when undefined."""
  if math.isnan(model) or math.isnan(truth):
    return math.nan
  if truth == 0:
    return 1.0 if model == 0 else math.nan
  return model / truth


def ratios(model: dict, truth: dict) -> dict:
  """model / ground truth for every accuracy and figure."""
  return {"accuracy": {k: ratio(v, truth["accuracy"][k]) for k, v in model["accuracy"].items()},
          "per_motion": {m: ratio(v["accuracy"], truth["per_motion"][m]["accuracy"])
                         for m, v in model["per_motion"].items()},
          "by_count": {c: {k: ratio(v[k], truth["by_count"][c][k]) for k in v if k != "n"}
                       for c, v in model["by_count"].items()},
          "consistency": {k: ratio(v, truth["consistency"][k])
                          for k, v in model["consistency"].items()},
          "segments": {k: ratio(v, truth["segments"][k])
                       for k, v in model["segments"].items()}}


def batches(count: int, batch: int) -> list:
  """[(start, size)] covering `count` prompts in calls of the same size: the last call is
  padded up to `batch` (and its extra videos dropped), so a compiled sampler is traced
  once, not again for a smaller remainder. Video i always uses seed + i."""
  batch = min(batch, count)
  return [(start, batch) for start in range(0, count, batch)]


def seeds_used(count: int, batch: int) -> int:
  """How many consecutive seeds `evaluate` draws, padding included."""
  return sum(size for _, size in batches(count, batch))


def evaluate(sample: Callable[[list, int], np.ndarray], items: Sequence[EvalItem],
             seed: int, batch: int, progress=None) -> tuple:
  """(report, videos): `sample(captions, seed)` -> uint8 [N, T, H, W, 3] is called in
  batches (see `batches`; video i uses seed + i); the report holds the model's scores,
  ground truth's and their ratio."""
  captions = [item.caption for item in items]
  videos = []
  for start, size in batches(len(items), batch):
    chunk = captions[start:start + size]
    padded = chunk + [chunk[-1]] * (size - len(chunk))
    videos.extend(np.asarray(sample(padded, seed + start))[:len(chunk)])
    if progress is not None:
      progress(start + len(chunk))
  model = score(videos, captions)
  truth = score([item.ground_truth for item in items], captions)
  return {"model": model, "ground_truth": truth, "ratio": ratios(model, truth),
          "captions": captions}, np.stack(videos)


def from_truth(sample: Callable, items: Sequence[EvalItem], seed: int,
               strength: float) -> Callable[[list, int], np.ndarray]:
  """`sample(captions, seed, init_video=, strength=)` as `evaluate` calls it, each video
  an SDEdit of its item's ground truth from noise level `strength`: the consistency a
  model's steps at t <= strength alone cost a right clip. `evaluate` calls with
  seed + start for the items from `start` on (padding repeats the last)."""
  truth = np.stack([item.ground_truth for item in items])

  def edit(captions, call_seed):
    start = call_seed - seed
    init = truth[start:start + len(captions)]
    init = np.concatenate([init, np.repeat(init[-1:], len(captions) - len(init), axis=0)])
    return sample(captions, call_seed, init_video=init, strength=strength)

  return edit


def table(report: dict) -> str:
  """The per-motion accuracy table and the overall figures, as text."""
  m, g, r = report["model"], report["ground_truth"], report["ratio"]
  lines = [f"{'':22s}{'n':>4s}{'model':>8s}{'truth':>8s}{'ratio':>8s}"]
  for motion in shapes.MOTIONS:
    lines.append(f"{motion:22s}{m['per_motion'][motion]['n']:4d}"
                 f"{m['per_motion'][motion]['accuracy']:8.2f}"
                 f"{g['per_motion'][motion]['accuracy']:8.2f}{r['per_motion'][motion]:8.2f}")
  for key in ("motion", "colour", "shape"):
    lines.append(f"{key + ' (all objects)':22s}{m['objects']:4d}{m['accuracy'][key]:8.2f}"
                 f"{g['accuracy'][key]:8.2f}{r['accuracy'][key]:8.2f}")
  for label, _ in BY_COUNT:
    row = m["by_count"][label]
    for key in ("motion", "colour", "shape"):
      lines.append(f"{key + ', ' + label:22s}{row['n']:4d}{row[key]:8.2f}"
                   f"{g['by_count'][label][key]:8.2f}{r['by_count'][label][key]:8.2f}")
  for key in FIGURES:
    lines.append(f"{key:22s}{'':4s}{m['consistency'][key]:8.2f}"
                 f"{g['consistency'][key]:8.2f}{r['consistency'][key]:8.2f}")
  lines.append(f"{'lost midway':22s}{'':4s}{m['lost_midway']['all']:8.2f}"
               f"{g['lost_midway']['all']:8.2f}")
  for key in ("across", "inside"):
    lines.append(f"{'frame step ' + key:22s}{'':4s}{m['segments'][key]:8.2f}"
                 f"{g['segments'][key]:8.2f}{r['segments'][key]:8.2f}")
  if "fvd" in report:
    lines.append(f"{'FVD (shapes features)':22s}{'':4s}{report['fvd']['value']:8.1f}")
  return "\n".join(lines)


def write_json(path, report: dict, settings: dict) -> None:
  """Standard JSON (undefined figures, NaN here, become null), written atomically."""
  record = _nan_to_none({"settings": settings, **report})
  atomic.write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")


def _nan_to_none(value):
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value
