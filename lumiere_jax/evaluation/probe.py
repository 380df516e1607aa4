"""Has a t2v checkpoint learned prompt -> motion? A one-minute probe instead of sampling.

Three measurements of a t2v model (a training run's EMA weights unless --raw, or a
shipped model); each is a library function (text_sensitivity, conditional_means,
caption_swap_gap) that `probe` composes:

1. Text sensitivity: how far the text encoder's output moves when one word of a caption
   changes, as ||e(a) - e(b)|| / ||e(a)|| over the caption's tokens, averaged over pairs
   that differ in the motion word, the colour word or the shape word. The temporal
   layers can only follow a motion word the (frozen) text encoder still tells apart.

2. The conditional mean: at a high noise level t, the model's guided x0-prediction from
   pure noise, averaged over --seeds noise draws, estimates E[video | prompt]. For
   "moving left" that mean drifts left even though each draw places the object anywhere.
   Every probe is the same red circle with the same noise draws, so the rows differ only
   in the motion phrase, and "standing still" is the control: whatever it shows (the
   draws' own pull) is not the motion word's doing.
   Per prompt the probe reports the brightness-weighted centroid displacement (first ->
   last frame, pixels, x right, y down) and the mass ratio, and, with --data, the same
   numbers for the dataset's own mean over the single-object clips with that motion: what
   a model that learned the motion would show.

3. With --data, the caption-swap loss gap: on the dataset's single-object clips that move
   left, right, up or down, the denoising error (v-MSE, conditional, no guidance) with the
   true caption and with the opposite direction swapped in ("left" <-> "right", "up" <->
   "down"), the same clip, noise and t for both. A model that reads the direction word
   denoises worse with the wrong one: the gap, (swapped - true) / true, is > 0. A model
   that ignores it has a gap of exactly 0. It is measured per noise level because the
   direction only matters where the noise hides where the object goes.

  lumiere eval probe --checkpoint runs/tiny_t2v [--data runs/data/shapes16] [--json F]
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from lumiere_jax import weights
from lumiere_jax.data import pipeline
from lumiere_jax.diffusion import denoisers, predictions
from lumiere_jax.diffusion import guidance as guidance_lib
from lumiere_jax.diffusion.schedules import alpha_sigma_from_logsnr, schedule_from_config
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic
from lumiere_jax.models import build

# One object for every probe, so that the rows differ only in the motion phrase.
MOTIONS = ("moving left", "moving right", "moving up", "moving down", "growing",
           "shrinking", "standing still")
PROBES = tuple(f"a red circle {motion}" for motion in MOTIONS)
SWAPS = {"motion": [("moving left", "moving right"), ("moving up", "moving down"),
                    ("moving left", "moving up"), ("growing", "shrinking")],
         "colour": [("red", "blue"), ("green", "yellow"), ("cyan", "magenta")],
         "shape": [("circle", "square"), ("square", "triangle"), ("triangle", "circle")]}
BASE = "a red circle moving left"
CONTROL = "a red circle standing still"
OPPOSITE = {"moving left": "moving right", "moving right": "moving left",
            "moving up": "moving down", "moving down": "moving up"}


def weighted_track(weights_: np.ndarray) -> tuple:
  """weights [T, H, W] >= 0 -> (centroids [T, 2] as (x, y), total weight [T]); a frame
  with no weight gets centroid (0, 0)."""
  ys, xs = np.mgrid[:weights_.shape[1], :weights_.shape[2]]
  mass = weights_.sum(axis=(1, 2))
  safe = np.where(mass > 0, mass, 1.0)
  return np.stack([(weights_ * xs).sum(axis=(1, 2)) / safe,
                   (weights_ * ys).sum(axis=(1, 2)) / safe], axis=-1), mass


def summary(brightness: np.ndarray) -> dict:
  centroids, mass = weighted_track(brightness)
  d = centroids[-1] - centroids[0]
  return dict(dx=round(float(d[0]), 2), dy=round(float(d[1]), 2),
              mass_ratio=round(float(mass[-1] / max(mass[0], 1e-6)), 2))


def motion_of(prompt: str) -> str:
  return " ".join(prompt.split()[3:])


def single_object_clips(data_dir, num_frames: int):
  """Yields (caption, uint8 video [T, H, W, 3]) for the dataset's single-object clips."""
  clips = pipeline.open_split(data_dir)
  for i in range(len(clips)):
    record = clips[i]
    caption = record["caption"]
    caption = caption.decode() if isinstance(caption, bytes) else str(caption)
    if " and " not in caption:
      yield caption, np.asarray(record["video"][:num_frames])


def dataset_means(data_dir, num_frames: int) -> dict:
  """Motion phrase -> mean brightness video [T, H, W] of the single-object clips."""
  sums, counts = {}, {}
  for caption, video in single_object_clips(data_dir, num_frames):
    key = motion_of(caption)
    sums[key] = sums.get(key, 0.0) + video.astype(np.float32).max(axis=-1) / 255.0
    counts[key] = counts.get(key, 0) + 1
  return {k: sums[k] / counts[k] for k in sums}


def swapped_direction(caption: str):
  """The caption with its direction replaced by the opposite one; None if it has none."""
  motion = motion_of(caption)
  if motion not in OPPOSITE:
    return None
  return caption[:-len(motion)] + OPPOSITE[motion]


def noise_scales(schedule, t, n: int) -> tuple:
  """(alpha, sigma), each [n, 1, 1, 1, 1], at noise level t for a batch of n clips."""
  alpha, sigma = alpha_sigma_from_logsnr(schedule.logsnr(jnp.full((n,), t)))
  return tuple(a.reshape(n, 1, 1, 1, 1) for a in (alpha, sigma))


def text_sensitivity(model: build.Model, params: dict) -> dict:
  """{'motion'|'colour'|'shape': mean relative change of the text encoding over the
  caption's tokens when one word of that kind changes (SWAPS)}."""
  encode = jax.jit(lambda tokens: model.encode(params["text"], tokens))

  def relative_change(a: str, b: str) -> float:
    cond = encode(model.tokenize([a, b]))
    emb, mask = np.asarray(cond["emb"]), np.asarray(cond["mask"])
    valid = mask[0] & mask[1]
    change = np.linalg.norm(emb[0] - emb[1], axis=-1) / np.linalg.norm(emb[0], axis=-1)
    return float(change[valid].mean())

  return {kind: round(float(np.mean([relative_change(_with(BASE, a), _with(BASE, b))
                                     for a, b in pairs])), 3)
          for kind, pairs in SWAPS.items()}


def conditional_means(model: build.Model, params: dict, noise_levels, seeds: int,
                      guidance: float) -> dict:
  """{t: brightness [len(PROBES), T, H, W] in [0, 1]}: the guided x0-prediction from
  pure noise at level t for every probe prompt, averaged over `seeds` noise draws."""
  config = model.config
  schedule = schedule_from_config(config.diffusion, config.data.resolution)
  shape = model.clip_shape

  @jax.jit
  def mean_x0(tokens, empty, t, key):
    cond, uncond = model.encode(params["text"], tokens), model.encode(params["text"], empty)
    n = tokens.shape[0]
    alpha, sigma = noise_scales(schedule, t, n)
    # No signal, and the same noise for every prompt: what differs between the rows is
    # the prompt's doing ("standing still" is the control).
    z = sigma * jnp.broadcast_to(jax.random.normal(key, (1,) + shape), (n,) + shape)
    out = guidance_lib.classifier_free_guidance(
        denoisers.bind(model.denoise, params), uncond, guidance)(z, jnp.full((n,), t), cond)
    return predictions.to_x0_eps(out, z, alpha, sigma, config.diffusion.prediction)[0]

  tokens = model.tokenize(PROBES)
  empty = model.tokenize([""] * len(PROBES))
  means = {}
  for t in noise_levels:
    x0 = np.mean([np.asarray(mean_x0(tokens, empty, np.float32(t), jax.random.key(s)))
                  for s in range(seeds)], axis=0)
    means[t] = np.clip((x0.max(axis=-1) + 1) / 2, 0, 1)
  return means


def caption_errors(model: build.Model, params: dict):
  """A jitted (uint8 clip [T, H, W, 3], token ids [N, ...], t, key) -> v-MSE [N]: the
  conditional denoising error (no guidance) of one clip under each of N captions, the
  same noise and t for all."""
  config = model.config
  schedule = schedule_from_config(config.diffusion, config.data.resolution)

  @jax.jit
  def errors(video, tokens, t, key):
    x0 = pipeline.to_model_range(video)[None]
    alpha, sigma = noise_scales(schedule, t, 1)
    eps = jax.random.normal(key, x0.shape)
    z = alpha * x0 + sigma * eps
    goal = predictions.target(x0, eps, alpha, sigma, config.diffusion.prediction)
    n = tokens.shape[0]
    out = model.denoise(params, jnp.repeat(z, n, axis=0), jnp.full((n,), t),
                        model.encode(params["text"], tokens))
    return jnp.mean(jnp.square(out.astype(jnp.float32) - goal), axis=(1, 2, 3, 4))

  return errors


def caption_swap_gap(model: build.Model, params: dict, clips, noise_levels,
                     max_clips: int, seed: int = 1234) -> dict:
  """{t: {clips, true, swapped, gap, worse}}: the denoising error (v-MSE, conditional,
  no guidance) of each (caption, uint8 clip [T, H, W, 3]) in `clips` that moves left,
  right, up or down, with its true caption and with the opposite direction, the same
  noise and t for both; gap = mean of swapped / true - 1 (0 exactly for a model that
  ignores the caption), worse = the share of clips where the swap hurts. At most
  `max_clips` clips; raises UserError if none moves in a direction."""
  per_clip_error = caption_errors(model, params)

  errors = {t: [] for t in noise_levels}
  used = 0
  for caption, video in clips:
    swapped = swapped_direction(caption)
    if used == max_clips:
      break
    if swapped is None:
      continue
    tokens = model.tokenize([caption, swapped])
    key = jax.random.fold_in(jax.random.key(seed), used)
    for t in noise_levels:
      errors[t].append(np.asarray(per_clip_error(video, tokens, np.float32(t), key)))
    used += 1
  if not used:
    raise UserError("no single-object clip moving left, right, up or down to swap")
  return {t: dict(clips=used, true=float(np.mean([e[0] for e in errs])),
                  swapped=float(np.mean([e[1] for e in errs])),
                  gap=float(np.mean([e[1] / e[0] - 1 for e in errs])),
                  worse=float(np.mean([e[1] > e[0] for e in errs])))
          for t, errs in errors.items()}


def probe(config, params: dict, noise_levels, seeds: int, guidance: float, data_dir=None,
          swap_clips: int = 0, swap_levels=()) -> dict:
  """The three measurements of a t2v model: {'text', 'means'[, 'swap']} (the swap needs
  `data_dir` and `swap_clips` > 0)."""
  model = build.Model(config)
  if not model.is_video:
    raise UserError(f"the probe needs a t2v model, got a {config.model.kind} one")
  result = dict(text=text_sensitivity(model, params),
                means=conditional_means(model, params, noise_levels, seeds, guidance))
  if swap_clips and data_dir is not None:
    clips = single_object_clips(data_dir, config.data.num_frames)
    result["swap"] = caption_swap_gap(model, params, clips, swap_levels, swap_clips)
  return result


def _with(caption: str, word: str) -> str:
  """BASE with the phrase of `word`'s kind (colour, shape or motion) replaced by it."""
  for kind, pairs in SWAPS.items():
    if any(word in pair for pair in pairs):
      if kind == "colour":
        return caption.replace("red", word)
      if kind == "shape":
        return caption.replace("circle", word)
      return caption.replace("moving left", word)
  raise ValueError(word)


HELP = "Does a t2v checkpoint read the motion word? (caption-swap gap, conditional means)"


def add_arguments(parser) -> None:
  source = parser.add_mutually_exclusive_group()
  source.add_argument("--checkpoint", metavar="DIR",
                      help="a t2v training workdir, its checkpoints/ or a step folder")
  source.add_argument("--model", metavar="NAME",
                      help=f"a shipped model (default: {weights.DEFAULT_MODEL})")
  parser.add_argument("--data", type=pathlib.Path, help="dataset folder: add its own means "
                      "and the caption-swap gap")
  parser.add_argument("--raw", action="store_true",
                      help="with --checkpoint: the raw weights, not the EMA")
  parser.add_argument("--t", type=float, nargs="+", default=[0.98, 0.9])
  parser.add_argument("--seeds", type=int, default=4)
  parser.add_argument("--guidance", type=float, default=3.0)
  parser.add_argument("--swap-clips", type=int, default=64,
                      help="clips for the caption-swap loss gap (needs --data; 0: skip)")
  parser.add_argument("--swap-t", type=float, nargs="+", default=[0.5, 0.7, 0.9])
  parser.add_argument("--json", type=pathlib.Path)


def check_args(args) -> None:
  """Every input problem as one line, before the model loads."""
  if args.seeds < 1 or args.swap_clips < 0 or not all(0 < t <= 1
                                                      for t in args.t + args.swap_t):
    raise UserError("--seeds must be >= 1, --swap-clips >= 0 and every --t and --swap-t "
                    "in (0, 1]")
  if args.raw and args.checkpoint is None:
    raise UserError("--raw selects the raw weights of --checkpoint")
  if args.data is not None and not args.data.is_dir():
    raise UserError(f"--data {args.data} is not a folder")
  if args.json is not None and not args.json.parent.is_dir():
    raise UserError(f"--json {args.json}: folder {args.json.parent} does not exist")


def run(args) -> int:
  """`lumiere eval probe`: prints the three measurements; --json writes them."""
  check_args(args)
  config, params = weights.load_model(checkpoint=args.checkpoint, name=args.model,
                                      use_ema=not args.raw)
  result = probe(config, params, args.t, args.seeds, args.guidance, args.data,
                 args.swap_clips, args.swap_t)
  reference = {}
  if args.data is not None:
    reference = dataset_means(args.data, config.data.num_frames)

  print("text encoder: relative output change when one word changes: " + ", ".join(
      f"{k} {v:.3f}" for k, v in result["text"].items()))
  rows = []
  for t, means in result["means"].items():
    control = summary(means[PROBES.index(CONTROL)])
    print(f"conditional mean at t={t} (guidance {args.guidance}, {args.seeds} seeds); "
          f"'- control': minus the '{CONTROL}' row:")
    print(f"  {'prompt':34s} {'dx':>6s} {'dy':>6s} {'mass':>5s}   - control: {'dx':>6s} "
          f"{'dy':>6s}" + (f"   data: {'dx':>6s} {'dy':>6s} {'mass':>5s}" if reference else ""))
    for prompt, brightness in zip(PROBES, means):
      row = dict(t=t, prompt=prompt, **summary(brightness))
      row["dx_vs_control"] = round(row["dx"] - control["dx"], 2)
      row["dy_vs_control"] = round(row["dy"] - control["dy"], 2)
      line = (f"  {prompt:34s} {row['dx']:6.2f} {row['dy']:6.2f} {row['mass_ratio']:5.2f}"
              f"             {row['dx_vs_control']:6.2f} {row['dy_vs_control']:6.2f}")
      if motion_of(prompt) in reference:
        row["data"] = summary(reference[motion_of(prompt)])
        line += (f"         {row['data']['dx']:6.2f} {row['data']['dy']:6.2f} "
                 f"{row['data']['mass_ratio']:5.2f}")
      rows.append(row)
      print(line)
  swap = result.get("swap", {})
  if swap:
    print("caption-swap loss gap (left <-> right, up <-> down; v-MSE, same clip and noise):")
    for t, row in swap.items():
      print(f"  t={t}: true {row['true']:.4f}  swapped {row['swapped']:.4f}  "
            f"gap {row['gap']:+.2%}  swapped worse on {row['worse']:.0%} of {row['clips']} clips")
  if args.json:
    atomic.write_text(args.json, json.dumps(dict(text=result["text"], rows=rows,
                                                 swap={str(t): r for t, r in swap.items()}),
                                            indent=1) + "\n")
  return 0
