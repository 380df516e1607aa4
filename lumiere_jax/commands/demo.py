"""`lumiere demo`: shapes videos from the shipped tiny text-to-video model."""

import pathlib
import time

from lumiere_jax import runtime
from lumiere_jax import weights
from lumiere_jax.errors import UserError
from lumiere_jax.pipelines import demo

HELP = "Generate a few shapes videos with the shipped tiny model (mp4, gif, X-T slices)."


def shipped_models_text() -> str:
  """What this install really ships (the demo needs one), for --help."""
  try:
    models = weights.manifest()
  except UserError as e:
    return f"The model manifest is unreadable ({e}), so the demo cannot run."
  if not models:
    return ("This install ships no models, so the demo cannot run; export one with "
            "`lumiere export`.")
  return "Shipped models in this install: " + "; ".join(
      f"{name}: {entry.get('description', '')}" for name, entry in sorted(models.items()))


def add_arguments(parser):
  parser.epilog = shipped_models_text()
  parser.add_argument("--out", default="demo_out", metavar="DIR",
                      help="output folder (default: ./demo_out)")
  parser.add_argument("--model", default=weights.DEFAULT_MODEL, metavar="NAME",
                      help=f"a shipped model (default: {weights.DEFAULT_MODEL})")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
  start = time.perf_counter()
  written = demo.run_demo(args.out, args.model, progress=not args.quiet)
  runtime.check_interrupt(f"interrupted; the demo files were complete and are written "
                          f"to {args.out}")
  videos = sum(p.suffix == ".mp4" for p in written)
  sheets = [p for p in written if p.name.endswith("sheet.png")]
  print(f"wrote {videos} videos (mp4, gif, X-T slice) and {len(sheets)} contact "
        f"sheet{'s' * (len(sheets) > 1)} to {pathlib.Path(args.out).resolve()}/ in "
        f"{time.perf_counter() - start:.0f} s")
  print(f"start with {' and '.join(map(str, sheets))}")
  return 0
