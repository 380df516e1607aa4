"""Loss curves of training runs as one PNG, from their WORKDIR/metrics.jsonl (the record
of a real run in docs/ needs a picture, not a tensorboard server).

  python -m lumiere_jax.train.report --out docs/images/tiny_loss.png \\
      workdirs/tiny_t2i workdirs/tiny_t2v

Drawn with Pillow (a dependency already): one panel per run, loss against step (log
scale when positive), the raw interval means in grey and a moving average in colour.
"""

import argparse
import json
import math
import pathlib
import sys
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from lumiere_jax.errors import UserError
from lumiere_jax.train.metrics import METRICS_FILE

PANEL_W, PANEL_H, MARGIN = 640, 360, 56
COLOURS = ((40, 90, 200), (200, 70, 40), (40, 150, 70), (150, 60, 170))


def read_losses(workdir) -> tuple:
  """(steps, losses) of a run's log steps; a resumed run's repeated steps keep the last."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.is_file():
    raise UserError(f"{path} does not exist (is {workdir} a training workdir?)")
  by_step = {}
  for line in path.read_text().splitlines():
    record = json.loads(line)
    if math.isfinite(record.get("loss", math.nan)):
      by_step[record["step"]] = record["loss"]
  if not by_step:
    raise UserError(f"{path} holds no finite loss")
  steps = np.array(sorted(by_step))
  return steps, np.array([by_step[s] for s in steps])


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
  window = max(1, min(window, len(values)))
  padded = np.concatenate([np.full(window - 1, values[0]), values])
  return np.convolve(padded, np.ones(window) / window, mode="valid")


def _panel(title: str, steps, losses, colour) -> Image.Image:
  image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
  draw = ImageDraw.Draw(image)
  left, top, right, bottom = MARGIN, 30, PANEL_W - 16, PANEL_H - 36
  logarithmic = losses.min() > 0
  scale, unscale = (np.log10, lambda v: 10 ** v) if logarithmic else (np.asarray, float)
  low, high = scale(losses.min()), scale(losses.max())
  high = high if high > low else low + 1e-3
  first, last = steps[0], max(steps[-1], steps[0] + 1)

  def point(step, loss):
    x = left + (step - first) / (last - first) * (right - left)
    y = bottom - (scale(loss) - low) / (high - low) * (bottom - top)
    return float(x), float(y)

  draw.rectangle((left, top, right, bottom), outline="black")
  for fraction in (0.0, 0.5, 1.0):
    value = unscale(low + fraction * (high - low))
    y = bottom - fraction * (bottom - top)
    draw.text((4, y - 6), f"{value:.3g}", fill="black")
    x = left + fraction * (right - left)
    draw.text((x - 12, bottom + 6), f"{int(first + fraction * (last - first))}", fill="black")
  draw.text((left, 8), f"{title}: loss ({'log' if logarithmic else 'linear'} scale) vs step",
            fill="black")
  if len(steps) > 1:
    draw.line([point(s, v) for s, v in zip(steps, losses)], fill=(190, 190, 190), width=1)
    smooth = moving_average(losses, max(1, len(losses) // 20))
    draw.line([point(s, v) for s, v in zip(steps, smooth)], fill=colour, width=2)
  return image


def plot_loss_curves(workdirs: Sequence, out) -> pathlib.Path:
  panels = [_panel(pathlib.Path(w).name, *read_losses(w), COLOURS[i % len(COLOURS)])
            for i, w in enumerate(workdirs)]
  sheet = Image.new("RGB", (PANEL_W, PANEL_H * len(panels)), "white")
  for i, panel in enumerate(panels):
    sheet.paste(panel, (0, i * PANEL_H))
  out = pathlib.Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  sheet.save(out)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", required=True, help="PNG to write")
  args = parser.parse_args(argv)
  try:
    print(f"wrote {plot_loss_curves(args.workdirs, args.out)}")
  except UserError as e:
    print(f"report: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
