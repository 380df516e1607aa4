"""Side by side with the lumiere-pytorch peer: peer seconds / our seconds for full
training, frozen-base training and the sampling step, on this machine, in one go.

  python benchmarks/peer/compare.py --repeats 3 --json /tmp/peer_compare.json
  python benchmarks/peer/compare.py --repeats 1 --iters 2 --warmup 1     # a quick look
  python benchmarks/peer/compare.py --repeats 3 --xla-flags=--xla_cpu_use_onednn=true
  python benchmarks/peer/compare.py --repeats 3 --xla-defaults   # also without our options
  python benchmarks/peer/compare.py --repeats 3 --bf16   # also both in bfloat16

`--xla-flags=FLAGS` (repeatable) also times ours under XLA_FLAGS=FLAGS in every repeat,
right after the default run, so each option's rows are interleaved with the peer's and
ours; the report names the CPU (lscpu), since these timings differ 15x between CPU
families.

Each repeat runs, one after the other, the peer (../shared/bench/lumiere_pytorch_peer.py,
with the .peer-venv Python) with --train-mode full, the peer with --train-mode temporal,
and peer_unet.py beside this file (this Python), each in a fresh process; so load from
other processes on a shared machine falls on all three alike within a repeat. Every run
reports its own median; the table gives the median over repeats of those, and the ratio
peer / ours (above 1: we are faster). The peer's sampling step is timed in both of its
runs; both count. The first full-mode peer run also measures the matmul peaks (torch
fp32/bf16, and jax through --jax-python = this Python).

`--bf16` adds, in every repeat, the bfloat16 rows beside the float32 ones: the peer under
torch.autocast("cpu", bfloat16) (peer_autocast.py beside this file) and ours with
`peer_unet.py --dtype bfloat16` (float32 parameters and optimizer, bfloat16 convolutions,
projections and attention), their own table; the float32 rows stay the comparison.

One-time setup of the peer (from the repository root):
  python3 -m venv .peer-venv && .peer-venv/bin/pip install torch==2.13.0 lumiere-pytorch==0.0.24
"""

import argparse
import json
import os
import pathlib
import platform
import signal
import statistics
import subprocess
import sys
import tempfile

from lumiere_jax import runtime
from lumiere_jax.errors import UserError
from lumiere_jax.io import atomic

ROOT = pathlib.Path(__file__).resolve().parents[2]
OURS = pathlib.Path(__file__).resolve().parent / "peer_unet.py"
AUTOCAST = pathlib.Path(__file__).resolve().parent / "peer_autocast.py"
PEER_PYTHON = ROOT / ".peer-venv" / "bin" / "python"
PEER_SCRIPT = ROOT.parent / "shared" / "bench" / "lumiere_pytorch_peer.py"
SETUP = ("python3 -m venv .peer-venv && .peer-venv/bin/pip install torch==2.13.0 "
         "lumiere-pytorch==0.0.24")
ROWS = (("train full", "train_step_s", "full"),
        ("train frozen 2D base", "train_step_frozen_s", "temporal"),
        ("sample step", "sample_step_s", None))


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--iters", type=int, default=3,
                      help="timed calls per run (the peer does two rounds of these)")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=2, help="the peer's torch threads")
  parser.add_argument("--peer-python", default=str(PEER_PYTHON))
  parser.add_argument("--peer-script", default=str(PEER_SCRIPT))
  parser.add_argument("--json", help="also write the results here")
  parser.add_argument("--xla-flags", action="append", default=[], metavar="FLAGS",
                      help="also time ours under XLA_FLAGS=FLAGS, in every repeat beside "
                           "the default run (repeatable): its own column of rows")
  parser.add_argument("--skip-peak", action="store_true",
                      help="no matmul peaks (the peer's bfloat16 peak takes minutes on a "
                           "CPU without bf16 arithmetic)")
  parser.add_argument("--xla-defaults", action="store_true",
                      help="also time ours without the XLA:CPU options lumiere adds on "
                           "this CPU (LUMIERE_XLA_CPU_DEFAULTS=off; runtime.py): a column")
  parser.add_argument("--bf16", action="store_true",
                      help="also time the peer under torch.autocast(bfloat16) and ours "
                           "with bfloat16 compute, in every repeat: their own table")
  args = parser.parse_args(argv)
  if min(args.repeats, args.iters) < 1 or args.warmup < 0:
    parser.error("--repeats and --iters must be >= 1, --warmup >= 0")
  return args


class RunFailed(Exception):
  """A timed run's process failed; the message is one line: which, how, its last words."""


def checked_run(what: str, command: list, env=None) -> subprocess.CompletedProcess:
  done = subprocess.run(command, capture_output=True, text=True, env=env)
  if done.returncode:
    how = (f"signal {signal.Signals(-done.returncode).name}" if done.returncode < 0
           else f"exit {done.returncode}")
    last = done.stderr.strip().splitlines()[-1:] or ["nothing on stderr"]
    raise RunFailed(f"{what} failed ({how}): {last[0]}")
  return done


def last_json_line(text: str) -> dict:
  return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def run_peer(args, mode: str, with_peak: bool, bf16: bool = False) -> dict:
  command = [args.peer_python, *([str(AUTOCAST)] if bf16 else []), args.peer_script,
             "--train-mode", mode, "--iters", str(args.iters), "--warmup", str(args.warmup),
             "--threads", str(args.threads), "--jax-python", sys.executable]
  if not with_peak:
    command.append("--skip-peak")
  what = f"the peer (--train-mode {mode}{', autocast bfloat16' if bf16 else ''})"
  return last_json_line(checked_run(what, command).stdout)


def run_ours(args, xla_flags: str = "", cpu_defaults: bool = True,
             dtype: str = "float32") -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
  if not cpu_defaults:
    env[runtime.CPU_DEFAULTS_ENV] = "off"
  with tempfile.TemporaryDirectory() as tmp:
    out = pathlib.Path(tmp) / "peer_matched.json"
    checked_run(f"ours ({dtype}) under XLA_FLAGS={env['XLA_FLAGS']!r}",
                [sys.executable, str(OURS), "--steps", str(args.iters), "--dtype", dtype,
                 "--warmup", str(args.warmup), "--json", str(out)], env)
    return json.loads(out.read_text())


def cpu_model() -> str:
  """lscpu's model name (timings here differ 15x between CPU families)."""
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return platform.processor() or "unknown CPU"
  names = [line.split(":", 1)[1].strip() for line in text.splitlines()
           if line.startswith("Model name")]
  return names[0] if names else "unknown CPU"


def peer_times(full: dict, frozen: dict) -> dict:
  return {"train_step_s": full["timing"]["train_step_s"],
          "train_step_frozen_s": frozen["timing"]["train_step_s"],
          "sample_step_s": [full["timing"]["sample_step_s"], frozen["timing"]["sample_step_s"]]}


def one_repeat(args, index: int) -> dict:
  full = run_peer(args, "full", with_peak=index == 0 and not args.skip_peak)
  frozen = run_peer(args, "temporal", with_peak=False)
  ours = run_ours(args)
  times = {"peer": peer_times(full, frozen), "ours": {key: ours[key] for _, key, _ in ROWS}}
  if args.bf16:
    times["bf16 peer"] = peer_times(run_peer(args, "full", False, bf16=True),
                                    run_peer(args, "temporal", False, bf16=True))
    ours_bf16 = run_ours(args, dtype="bfloat16")
    times["bf16 ours"] = {key: ours_bf16[key] for _, key, _ in ROWS}
  for flags in args.xla_flags:
    variant = run_ours(args, flags)
    times[f"ours {flags}"] = {key: variant[key] for _, key, _ in ROWS}
  if args.xla_defaults:
    variant = run_ours(args, cpu_defaults=False)
    times["ours XLA defaults"] = {key: variant[key] for _, key, _ in ROWS}
  return {"times": times, "peer_full": full, "peer_temporal": frozen, "ours": ours}


def _pair(repeats, peer_key: str, ours_key: str, key: str) -> dict:
  peer = []
  for r in repeats:
    value = r["times"][peer_key][key]
    peer.extend(value if isinstance(value, list) else [value])
  ours = [r["times"][ours_key][key] for r in repeats]
  pair = {"peer_s": statistics.median(peer), "ours_s": statistics.median(ours),
          "peer_runs_s": peer, "ours_runs_s": ours}
  return {**pair, "ratio_peer_over_ours": pair["peer_s"] / pair["ours_s"]}


def summarize(repeats) -> dict:
  """Medians over repeats and the ratios peer / ours, per row (and in bfloat16, under
  "bf16", where the repeats have it)."""
  rows = {}
  for name, key, _ in ROWS:
    rows[name] = _pair(repeats, "peer", "ours", key)
    if "bf16 ours" in repeats[0]["times"]:
      rows[name]["bf16"] = _pair(repeats, "bf16 peer", "bf16 ours", key)
    for variant in [k for k in repeats[0]["times"] if k.startswith("ours ")]:
      runs = [r["times"][variant][key] for r in repeats]
      rows[name][variant] = {"s": statistics.median(runs), "runs_s": runs,
                             "ratio_peer_over_it": rows[name]["peer_s"] / statistics.median(runs)}
  return rows


def flops_comparison(repeat: dict) -> dict:
  """The peer's FlopCounterMode counts against ours, counted alike (every conv tap) and
  as the traced programs count them (valid taps only)."""
  peer_flops = {"train_step": repeat["peer_full"]["flops"]["train_step"],
                "train_step_frozen": repeat["peer_temporal"]["flops"]["train_step"],
                "sample_step": repeat["peer_full"]["flops"]["sample_step"]}
  ours = repeat["ours"]
  return {key: {"peer": peer, "ours": ours["flops"][key],
                "ours_over_peer": ours["flops"][key] / peer,
                "ours_valid_taps": ours["flops_valid_taps"][key]}
          for key, peer in peer_flops.items()}


def print_report(rows, flops, params, cpu: str) -> None:
  variants = [k for k in next(iter(rows.values())) if k.startswith("ours ")]
  print(f"CPU: {cpu}\n")
  print("| row | peer median s | ours median s | peer / ours |"
        + "".join(f" {v} s | peer / it |" for v in variants)
        + "\n|---|---:|---:|---:|" + "---:|---:|" * len(variants))
  for name, r in rows.items():
    print(f"| {name} | {r['peer_s']:.3f} | {r['ours_s']:.4f} | "
          f"{r['ratio_peer_over_ours']:.2f} |"
          + "".join(f" {r[v]['s']:.4f} | {r[v]['ratio_peer_over_it']:.2f} |"
                    for v in variants))
  print("\n| FLOPs | peer (FlopCounterMode) | ours, counted alike | ours / peer |"
        " ours, valid taps (traced) |\n|---|---:|---:|---:|---:|")
  for key, f in flops.items():
    print(f"| {key} | {f['peer']:,} | {f['ours']:,} | {f['ours_over_peer']:.4f} | "
          f"{f['ours_valid_taps']:,} |")
  if all("bf16" in r for r in rows.values()):
    print("\n| bfloat16 row | peer (autocast) median s | ours (bf16 compute) median s | "
          "peer / ours |\n|---|---:|---:|---:|")
    for name, r in rows.items():
      b = r["bf16"]
      print(f"| {name} | {b['peer_s']:.3f} | {b['ours_s']:.4f} | "
            f"{b['ratio_peer_over_ours']:.2f} |")
  print(f"\nparams: peer {params['peer']}, ours {params['ours']}")


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  if not pathlib.Path(args.peer_python).exists():
    print(f"peer Python {args.peer_python} not found; create it from the repository root "
          f"with: {SETUP}", file=sys.stderr)
    return 2
  if not pathlib.Path(args.peer_script).exists():
    print(f"peer script {args.peer_script} not found (it lives in shared/bench/)",
          file=sys.stderr)
    return 2
  for flags in args.xla_flags:  # XLA aborts a process on an option it does not know
    os.environ["XLA_FLAGS"], before = flags, os.environ.get("XLA_FLAGS")
    try:
      runtime.check_xla_flags()
    except UserError as e:
      print(f"--xla-flags {flags!r}: {e}", file=sys.stderr)
      return 2
    finally:
      os.environ.pop("XLA_FLAGS")
      if before is not None:
        os.environ["XLA_FLAGS"] = before
  repeats = []
  for index in range(args.repeats):
    try:
      repeats.append(one_repeat(args, index))
    except RunFailed as e:  # e.g. SIGILL under an XLA option
      print(e, file=sys.stderr)
      return 2
    print(json.dumps({"repeat": index, **repeats[-1]["times"]}), flush=True)
  rows, flops = summarize(repeats), flops_comparison(repeats[0])
  params = {"peer": repeats[0]["peer_full"]["params"], "ours": repeats[0]["ours"]["params"]}
  cpu = cpu_model()
  print_report(rows, flops, params, cpu)
  if args.json:
    atomic.write_text(args.json, json.dumps(
        {"cpu": cpu, "rows": rows, "flops": flops, "params": params,
         "matmul_peak": repeats[0]["peer_full"].get("matmul_peak"),
         "settings": vars(args), "repeats": repeats}, indent=1) + "\n")
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
