"""How the STUNet's FLOPs grow with the number of frames, against the T2I model run on
every frame and against a 3D U-Net without temporal down-sampling (the same STUNet with
model.temporal.down_levels all False). Analytic counts (lumiere_jax/bench/flops.py), per
clip (batch 1), nothing compiled.

  python benchmarks/scaling.py                          # lumiere_base, 16..80 frames
  python benchmarks/scaling.py --config shapes_tiny --frames 8 16 32
"""

import argparse
import sys

from lumiere_jax.bench import flops
from lumiere_jax.config import load_config

GIGA = 1e9


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="lumiere_base", help="a config file with :t2i and :t2v")
  parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 48, 64, 80])
  return parser.parse_args(argv)


def clip_flops(config_name: str, frames: int) -> dict:
  """Forward FLOPs of one clip for the three models (and their temporal attention), and
  the STUNet's t2v train step."""
  stunet = load_config(f"{config_name}:t2v", [f"data.num_frames={frames}"])
  levels = len(stunet.model.temporal.down_levels)
  no_downsampling = load_config(f"{config_name}:t2v", [
      f"data.num_frames={frames}", f"model.temporal.down_levels={(False,) * levels}"])
  t2i = load_config(f"{config_name}:t2i")
  stunet_count = flops.model_flops(stunet, 1)
  no_downsampling_count = flops.model_flops(no_downsampling, 1)
  return {
      "stunet": stunet_count.forward,
      "stunet_attention": stunet_count.breakdown()["temporal/attention"],
      "t2i": flops.model_flops(t2i, frames).forward,  # the T2I model on each frame
      "no_downsampling": no_downsampling_count.forward,
      "no_downsampling_attention": no_downsampling_count.breakdown()["temporal/attention"],
      "stunet_train": stunet_count.train_step,
  }


def table(config_name: str, frame_counts) -> str:
  rows = [
      "| frames | STUNet | T2I on every frame | 3D U-Net, no temporal down-sampling | "
      "STUNet / T2I | 3D U-Net / STUNet | temporal attention einsums: STUNet / 3D U-Net | "
      "STUNet train step (t2v) |",
      "|---:|---:|---:|---:|---:|---:|---:|---:|"]
  g = lambda n: f"{n / GIGA:,.0f}"
  for frames in frame_counts:
    f = clip_flops(config_name, frames)
    rows.append(
        f"| {frames} | {g(f['stunet'])} | {g(f['t2i'])} | {g(f['no_downsampling'])} | "
        f"{f['stunet'] / f['t2i']:.3f} | {f['no_downsampling'] / f['stunet']:.2f} | "
        f"{f['stunet_attention'] / GIGA:,.1f} / {f['no_downsampling_attention'] / GIGA:,.1f} | "
        f"{g(f['stunet_train'])} |")
  return "\n".join(rows)


def paper_scale(config_name: str) -> str:
  """The config's own t2v run: FLOPs per training step (its global batch) and per
  sampling step (one clip, one denoiser call)."""
  config = load_config(f"{config_name}:t2v")
  per_clip = flops.model_flops(config, 1)
  batch = config.data.batch_size
  return (f"{config_name}:t2v ({config.data.num_frames} frames at {config.data.resolution}x"
          f"{config.data.resolution}): train step {per_clip.train_step / GIGA:,.0f} GFLOPs "
          f"per clip, {batch * per_clip.train_step / 1e15:,.2f} PFLOPs at the config's batch "
          f"{batch}; sampling step {per_clip.forward / GIGA:,.0f} GFLOPs per clip "
          f"(twice that with classifier-free guidance)")


def main(argv):
  args = parse_args(argv)
  print(f"{args.config}: forward GFLOPs per clip (batch 1, one denoiser call = one sampling "
        f"step without guidance); train step = forward + backward, t2v stage (frozen "
        f"backbone, trainable temporal layers)")
  print(table(args.config, args.frames))
  print(paper_scale(args.config))


if __name__ == "__main__":
  main(sys.argv[1:])
