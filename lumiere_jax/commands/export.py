"""`lumiere export`: a training run's weights as a named model (what `--model NAME`,
`lumiere demo` and `lumiere eval --model` load)."""

from lumiere_jax import runtime
from lumiere_jax import weights
from lumiere_jax.config import finalize
from lumiere_jax.diffusion import samplers
from lumiere_jax.diffusion.config import check_expert_switch, check_guidance
from lumiere_jax.diffusion.guidance import THRESHOLDS
from lumiere_jax.diffusion.samplers import SAMPLERS
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic

HELP = "Export a training run's EMA weights as a named model (safetensors + manifest)."
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


def add_arguments(parser):
  parser.add_argument("--checkpoint", required=True, metavar="DIR",
                      help="a training workdir (its newest step, or --step)")
  parser.add_argument("--step", type=int, metavar="N")
  parser.add_argument("--name", required=True, help="model name: [a-z0-9_]+")
  parser.add_argument("--out", default=str(weights.ASSETS), metavar="DIR",
                      help="models folder with manifest.json (default: the package's "
                           "shipped models)")
  parser.add_argument("--description", default="")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  sampling = parser.add_argument_group("sampling defaults stored with the model")
  sampling.add_argument("--sampler", choices=SAMPLERS)
  sampling.add_argument("--steps", type=int)
  sampling.add_argument("--time-power", type=float, metavar="P", help="the sampling time "
                        "grid's power: 1 uniform, above 1 crowded at high noise")
  sampling.add_argument("--guidance", type=float)
  sampling.add_argument("--threshold", choices=THRESHOLDS)
  sampling.add_argument("--negative-prompt")
  sampling.add_argument("--expert", metavar="NAME", help="a shipped video model that "
                        "denoises the steps at t <= --expert-switch (diffusion.low_noise_expert)")
  sampling.add_argument("--expert-switch", type=float, metavar="S")


def sampling_overrides(args) -> list:
  pairs = {"sampler": args.sampler, "steps": args.steps,
           "time_power": args.time_power, "guidance": args.guidance,
           "threshold": args.threshold, "negative_prompt": args.negative_prompt,
           "low_noise_expert": args.expert, "expert_switch": args.expert_switch}
  return [f"diffusion.{k}={v!r}" if isinstance(v, str) else f"diffusion.{k}={v}"
          for k, v in pairs.items() if v is not None]


def check_sampling_args(args) -> None:
  """The sampling defaults given, checked before any checkpoint is read."""
  if args.steps is not None and not 1 <= args.steps <= samplers.MAX_STEPS:
    raise UserError(f"--steps must be an integer >= 1 and <= {samplers.MAX_STEPS}, got "
                    f"{args.steps}")
  if args.time_power is not None:
    samplers.check_time_power(args.time_power)
  if args.guidance is not None:
    check_guidance(args.guidance)
  if args.expert_switch is not None:
    check_expert_switch(args.expert_switch)
  if args.expert is not None:
    weights.model_config(name=args.expert, directory=args.out)


def run(args) -> int:
  if not args.name or set(args.name) - NAME_CHARS:
    raise UserError(f"--name {args.name!r}: use lower-case letters, digits and _")
  out = atomic.check_output_dir(args.out, "--out")
  check_sampling_args(args)
  config, params = weights.load_model(checkpoint=args.checkpoint, step=args.step)
  config = finalize(config.unlock(), sampling_overrides(args))
  with runtime.shielded():  # three files, the manifest last: let them all be written
    path = weights.export_model(config, params, args.name, args.description, out,
                                args.dtype)
  print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB) and its entry in "
        f"{out / weights.MANIFEST}")
  return 0
