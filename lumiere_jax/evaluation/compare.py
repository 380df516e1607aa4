"""`lumiere eval compare A.json B.json ...`: shapes reports side by side.

Each report is what `lumiere eval shapes --json` wrote (one pipeline or checkpoint).
Reports are compared only when they judged the same prompts: the same number, seed,
caption list, resolution and frame count (the ground truth is then the same clips);
their Fréchet distances only when every setting of the score agrees
(evaluation/frechet.py). Anything else is one line and exit 2.
"""

import json
import math
import pathlib

from lumiere_jax.data import shapes
from lumiere_jax.errors import UserError
from lumiere_jax.evaluation import frechet, shapes_eval
from lumiere_jax.io import atomic

HELP = "Shapes reports (eval shapes --json) side by side, on the same prompts."
SAME = ("num", "seed", "resolution", "frames", "held_out")


def add_arguments(parser) -> None:
  parser.add_argument("reports", nargs="+", type=pathlib.Path, metavar="REPORT.json")
  parser.add_argument("--markdown", type=pathlib.Path, metavar="PATH",
                      help="also write the table as markdown")


def read_report(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise UserError(f"report {path} does not exist")
  try:
    report = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"report {path} is not JSON: {e}") from None
  missing = [k for k in ("settings", "model", "ground_truth", "captions")
             if not isinstance(report, dict) or k not in report]
  if missing:
    raise UserError(f"report {path} is not an `eval shapes` report: no {missing[0]!r}")
  return report


def check_same_prompts(reports: dict) -> None:
  (first, a), *rest = reports.items()
  for path, b in rest:
    for key in SAME:
      if a["settings"].get(key) != b["settings"].get(key):
        raise UserError(f"{first} and {path} judged different prompts: {key} is "
                        f"{a['settings'].get(key)!r} vs {b['settings'].get(key)!r}")
    if a["captions"] != b["captions"]:
      raise UserError(f"{first} and {path} judged different prompts (the captions differ)")


def fvd_scores(reports: dict) -> list:
  """The reports' Fréchet scores, checked comparable; [] if none has one."""
  scores = {path: frechet.FrechetScore(**{**r["fvd"], "resolution": tuple(
      r["fvd"]["resolution"])}) for path, r in reports.items() if "fvd" in r}
  if not scores:
    return []
  if len(scores) != len(reports):
    without = next(p for p in reports if p not in scores)
    raise UserError(f"{without} has no Fréchet distance and the others do (run eval "
                    f"shapes with --fvd for all)")
  (first, a), *rest = scores.items()
  for path, b in rest:
    try:
      frechet.check_comparable(a, b)
    except UserError as e:
      raise UserError(f"{first} vs {path}: {e}") from None
  return [scores[p] for p in reports]


def label(report: dict, path: pathlib.Path) -> str:
  s = report["settings"]
  source = s.get("checkpoint") or s.get("model") or path.stem
  if s.get("pipeline") == "keyframes-tsr":
    return f"keyframes-tsr ({source} + {s.get('tsr_checkpoint') or s.get('tsr_model')})"
  return f"{s.get('pipeline', 'stunet')} ({source})"


def rows(reports: list, scores: list) -> list:
  """[(figure, [value per report], ground truth)]."""
  out = []
  for key in ("motion", "colour", "shape"):
    out.append((f"{key} accuracy", [r["model"]["accuracy"][key] for r in reports],
                reports[0]["ground_truth"]["accuracy"][key]))
  for motion in shapes.MOTIONS:
    out.append((f"  {motion}", [r["model"]["per_motion"][motion]["accuracy"]
                                for r in reports],
                reports[0]["ground_truth"]["per_motion"][motion]["accuracy"]))
  for key in shapes_eval.FIGURES:
    out.append((key, [r["model"]["consistency"][key] for r in reports],
                reports[0]["ground_truth"]["consistency"][key]))
  if all("lost_midway" in r["model"] for r in reports):  # older reports lack it
    out.append(("lost midway", [r["model"]["lost_midway"]["all"] for r in reports],
                reports[0]["ground_truth"]["lost_midway"]["all"]))
  if all("segments" in r["model"] for r in reports):
    for key in ("across", "inside", "across_over_inside"):
      out.append((f"frame step {key}", [r["model"]["segments"][key] for r in reports],
                  reports[0]["ground_truth"]["segments"][key]))
  if scores:
    out.append(("FVD (shapes features)", [s.value for s in scores], 0.0))
  return out


def _cell(value) -> str:
  return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else (
      f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}")


def markdown(labels: list, table: list) -> str:
  lines = ["| figure | " + " | ".join(labels) + " | ground truth |",
           "|---|" + "---:|" * (len(labels) + 1)]
  for name, values, truth in table:
    lines.append(f"| {name} | " + " | ".join(_cell(v) for v in values) +
                 f" | {_cell(truth)} |")
  return "\n".join(lines) + "\n"


def check_args(args) -> None:
  if len(args.reports) < 2:
    raise UserError("give two or more reports to compare")
  if args.markdown is not None and not args.markdown.parent.is_dir():
    raise UserError(f"--markdown {args.markdown}: folder {args.markdown.parent} does not "
                    f"exist")


def run(args) -> int:
  check_args(args)
  reports = {path: read_report(path) for path in args.reports}
  check_same_prompts(reports)
  scores = fvd_scores(reports)
  text = markdown([label(r, p) for p, r in reports.items()],
                  rows(list(reports.values()), scores))
  print(text, end="")
  if args.markdown is not None:
    atomic.write_text(args.markdown, text)
    print(args.markdown)
  return 0
