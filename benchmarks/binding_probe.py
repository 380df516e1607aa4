"""Probe (stop 49): does a t2v model tie each motion of a two-object caption to its object?

Renders two-object shapes clips whose objects move in two different straight directions
and measures the denoising error (v-MSE, conditional, no guidance, the same noise) with the
true caption and with the caption whose two motions are swapped between the objects ("a
red circle moving left and a blue square moving up" -> "... moving up and ... moving
left"): the same words, only who moves how differs. A model that binds loses where only
the caption says who moves how (high noise); gap = mean(swapped / true) - 1. For a model
with caption parts (model.temporal.caption_parts), a third column swaps the parts only
(the backbone and the joint caption keep the true caption).

  python benchmarks/binding_probe.py [--checkpoint DIR [--step N] | --model NAME] [--clips 24]

Measured (docs/learning_record.md, "Stop 49"): the shipped shapes_t2v +0.4% / +0.5% /
-0.6% at t = 0.9 / 0.95 / 0.98, where stage 4's single-object direction swap cost +306%
at t = 0.9.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax import runtime, weights
from lumiere_jax.data import shapes
from lumiere_jax.evaluation.probe import caption_errors
from lumiere_jax.models import build

STRAIGHT = ("moving left", "moving right", "moving up", "moving down")
OPPOSITE = dict(zip(STRAIGHT, ("moving right", "moving left", "moving down", "moving up")))


def two_motion_clips(count: int) -> list:
  """(clip, caption with the two motions swapped, caption with the first object's motion
  reversed) for the first `count` seeds' two-object clips whose objects move in two
  different straight directions."""
  clips, seed = [], 0
  while len(clips) < count:
    clip = shapes.render_clip(seed, two_object_fraction=1.0)
    seed += 1
    a, b = clip.tracks if len(clip.tracks) == 2 else (None, None)
    if a is not None and {a.motion, b.motion} <= set(STRAIGHT) and a.motion != b.motion:
      swapped = f"a {a.colour} {a.shape} {b.motion} and a {b.colour} {b.shape} {a.motion}"
      reversed_ = (f"a {a.colour} {a.shape} {OPPOSITE[a.motion]} and a {b.colour} {b.shape} "
                   f"{b.motion}")
      clips.append((clip, swapped, reversed_))
  return clips


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint")
  parser.add_argument("--step", type=int)
  parser.add_argument("--model")
  parser.add_argument("--clips", type=int, default=24)
  parser.add_argument("--t", type=float, nargs="+", default=[0.9, 0.95, 0.98])
  args = parser.parse_args()
  config, params = weights.load_model(args.checkpoint, args.model, args.step)
  model = build.Model(config)
  length, parts = config.text.max_length, build.caption_parts(config)[1]
  errors = caption_errors(model, params)

  clips = two_motion_clips(args.clips)
  for t in args.t:
    rows = []
    for i, (clip, swapped, reversed_) in enumerate(clips):
      ids = model.tokenize([clip.caption, swapped, reversed_])
      tokens = [ids[:1], ids[1:2], ids[2:]]
      if parts:  # the true caption with the swapped caption's parts
        tokens.append(np.concatenate([ids[0, :-parts * length], ids[1, -parts * length:]])[None])
      rows.append(np.asarray(errors(clip.video, jnp.asarray(np.concatenate(tokens)),
                                    np.float32(t), jax.random.key(i))))
    e = np.array(rows)
    gap = lambda k: f"{e[:, k].mean():.4f} (gap {np.mean(e[:, k] / e[:, 0] - 1):+.1%})"
    line = (f"t={t}: v-MSE true {e[:, 0].mean():.4f}, swapped {gap(1)}, first motion "
            f"reversed {gap(2)}")
    if parts:
      line += f", parts swapped {gap(3)}"
    print(line, flush=True)


if __name__ == "__main__":
  runtime.apply_cpu_defaults()
  main()
