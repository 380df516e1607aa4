"""`lumiere data`: build and inspect datasets.

  lumiere data build shapes --out DIR --num-videos N --resolution R --frames T
                            [--seed S --two-object-fraction F --held-out "red circle growing"]
                            [--style plain|outlined|striped]
  lumiere data build folder --src DIR --out DIR --resolution R --frames T [--fps F]
  lumiere data show DIR --out grid.png
"""

import sys

from lumiere_jax import runtime
from lumiere_jax.data import shapes  # numpy only: `lumiere --help` stays fast

HELP = "Build and inspect datasets."


def add_arguments(parser):
  actions = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True,
                                  parser_class=type(parser))
  build = actions.add_parser("build", help="Build a dataset (TFDS array_record files).")
  kinds = build.add_subparsers(dest="kind", metavar="KIND", required=True,
                               parser_class=type(parser))
  _add_shapes_arguments(kinds.add_parser("shapes", help="The synthetic shapes clips."))
  _add_folder_arguments(kinds.add_parser("folder", help="A folder of your own videos."))
  show = actions.add_parser("show", help="Write a contact sheet of clips and captions.")
  show.add_argument("dataset", metavar="DIR", help="a build's --out folder or version folder")
  show.add_argument("--out", required=True, help="picture to write (.png or .jpg)")
  show.add_argument("--split", default="train")
  show.add_argument("--clips", type=int, default=8, help="number of clips (rows)")
  show.add_argument("--frames", type=int, default=8, help="frames shown per clip")


def _add_shapes_arguments(parser):
  parser.add_argument("--out", required=True, help="output data_dir")
  parser.add_argument("--num-videos", type=int, required=True)
  parser.add_argument("--resolution", type=int, default=32, help="32, 64 or 128")
  parser.add_argument("--frames", type=int, default=16, help="1 to 80")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--two-object-fraction", type=float, default=0.5)
  parser.add_argument("--held-out", action="append", default=[], metavar="COMBINATION",
                      help="'<colour> <shape> <motion>' kept out of train (repeatable)")
  parser.add_argument("--held-out-videos", type=int, default=None,
                      help="size of the heldout split (default 16 per combination)")
  parser.add_argument("--text-embeddings", default=None, metavar="NPZ",
                      help="precomputed caption embeddings to store with each clip")
  parser.add_argument("--style", default="plain", choices=shapes.STYLES,
                      help="how the objects are drawn: filled (plain), outlined or striped; "
                           "a styled dataset trains the style stage (shapes_tiny:style)")


def _add_folder_arguments(parser):
  parser.add_argument("--src", required=True, help="folder of videos / PNG-frame folders")
  parser.add_argument("--out", required=True, help="output data_dir")
  parser.add_argument("--resolution", type=int, required=True)
  parser.add_argument("--frames", type=int, required=True)
  parser.add_argument("--fps", type=float, default=None, help="resample to this frame rate")
  parser.add_argument("--captions", default=None,
                      help="jsonl of {video, caption} (default: SRC/captions.jsonl, else "
                           "a .txt beside each clip)")
  parser.add_argument("--text-embeddings", default=None, metavar="NPZ",
                      help="precomputed caption embeddings to store with each clip")


def run(args) -> int:
  # Imported here so that `lumiere --help` does not pay for TFDS and grain.
  from lumiere_jax.data import builders, contact_sheet  # pylint: disable=import-outside-toplevel
  if args.data_command == "show":
    path = contact_sheet.write_contact_sheet(args.dataset, args.out, args.clips, args.frames,
                                             args.split)
    print(f"wrote {path}")
    return 0
  what = ("rendering the shapes clips" if args.kind == "shapes" else
          f"reading the videos in {args.src}")

  def announce(final):
    print(f"building {final}: {what} here (nothing is downloaded); it appears only when "
          f"complete", file=sys.stderr)

  if args.kind == "shapes":
    path = builders.build_shapes(args.out, args.num_videos, args.resolution, args.frames,
                                 args.seed, args.two_object_fraction, args.held_out,
                                 args.held_out_videos, args.text_embeddings, announce,
                                 args.style)
    print(f"wrote {path}")
  else:
    report = builders.build_folder(args.out, args.src, args.resolution, args.frames, args.fps,
                                   args.captions, args.text_embeddings, announce)
    print(f"wrote {report.written} clips to {report.path}; skipped {len(report.skipped)}")
    for clip, reason in report.skipped.items():
      print(f"  skipped {clip}: {reason}")
  runtime.check_interrupt("interrupted; the dataset was complete and is kept")
  return 0
