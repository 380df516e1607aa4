"""Runs the lumiere-pytorch peer's bench script under torch.autocast("cpu", bfloat16):
the peer's bfloat16 row (its own script has float32 only). Parameters, AdamW and the
MSE loss stay float32; convolutions, linear layers and matmuls run in bfloat16, torch's
standard CPU mixed precision (oneDNN, AMX where the CPU has it).

  .peer-venv/bin/python benchmarks/peer/peer_autocast.py ../shared/bench/lumiere_pytorch_peer.py \\
      --train-mode full --skip-peak

compare.py --bf16 runs it; the JSON the script prints gains "autocast": "bfloat16".
"""

import contextlib
import io
import json
import runpy
import sys


def main(argv) -> int:
  if not argv or argv[0].startswith("-"):
    print("usage: peer_autocast.py PEER_SCRIPT [its arguments]", file=sys.stderr)
    return 2
  import torch  # the peer's Python, not ours
  script, sys.argv = argv[0], argv
  out = io.StringIO()
  with torch.autocast("cpu", dtype=torch.bfloat16), contextlib.redirect_stdout(out):
    runpy.run_path(script, run_name="__main__")
  for line in out.getvalue().splitlines():
    if line.startswith("{"):
      result = json.loads(line)
      result.setdefault("config", {})["dtype"] = "bfloat16 (torch.autocast)"
      line = json.dumps({**result, "autocast": "bfloat16"})
    print(line)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
