"""Clips per second through the training input pipeline (make_train_iterator).

Builds (or reuses) a shapes dataset per size in --workdir, then for each worker count
times --batches batches after a warm-up (worker start-up is excluded) and prints one
line per case plus a markdown table. Also times bare record reads (decode only) to show
how much of the cost is the array_record read + zstd decode.

  python benchmarks/data_pipeline.py --workdir /tmp/lumiere_data_bench
  python benchmarks/data_pipeline.py --sizes 16x32 --workers 0 1 2 --batches 200
"""

import argparse
import json
import os
import pathlib
import time

import numpy as np

from lumiere_jax.config import load_config
from lumiere_jax.data import builders, pipeline

# frames x resolution -> (clips to build, batch size)
SIZES = {"16x32": (512, 8), "80x128": (64, 4)}
WARMUP_BATCHES = 3


def dataset_for(workdir: pathlib.Path, size: str) -> pathlib.Path:
  frames, resolution = (int(v) for v in size.split("x"))
  out = workdir / f"shapes_{size}"
  if not (out / "shapes" / builders.VERSION).exists():
    builders.build_shapes(out, SIZES[size][0], resolution, frames, seed=0)
  return out


def time_pipeline(data_dir: pathlib.Path, size: str, workers: int, batches: int) -> dict:
  frames, resolution = (int(v) for v in size.split("x"))
  batch_size = SIZES[size][1]
  config = load_config("shapes_tiny:t2v", [f"data.num_frames={frames}",
                                           f"data.resolution={resolution}",
                                           f"data.batch_size={batch_size}"])
  iterator = pipeline.make_train_iterator(config, data_dir, process_index=0, process_count=1,
                                          worker_count=workers)
  for _ in range(WARMUP_BATCHES):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(iterator)
  seconds = time.perf_counter() - start
  iterator.close()
  clips = batches * batch_size
  return {"case": "pipeline", "size": f"{frames}x{resolution}x{resolution}",
          "workers": workers, "batch": batch_size, "clips_per_s": round(clips / seconds, 1),
          "ms_per_batch": round(1000 * seconds / batches, 2),
          "MB_per_s": round(clips * batch["video"][0].nbytes / seconds / 2**20, 1)}


def time_reads(data_dir: pathlib.Path, size: str, reads: int) -> dict:
  """Single-threaded reads in shuffled order, as the pipeline reads."""
  source = pipeline.open_split(data_dir)
  order = np.random.default_rng(0).integers(0, len(source), size=reads)
  start = time.perf_counter()
  for i in order:
    source[int(i)]
  seconds = time.perf_counter() - start
  frames, resolution = size.split("x")
  return {"case": "read+decode only", "size": f"{frames}x{resolution}x{resolution}",
          "workers": 0, "batch": 1, "clips_per_s": round(reads / seconds, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/lumiere_data_bench")
  parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
  parser.add_argument("--workers", nargs="+", type=int, default=[0, 2])
  parser.add_argument("--batches", type=int, default=100)
  args = parser.parse_args()
  workdir = pathlib.Path(args.workdir)
  print(f"# {os.cpu_count()} CPUs")
  rows = []
  for size in args.sizes:
    data_dir = dataset_for(workdir, size)
    rows.append(time_reads(data_dir, size, args.batches * SIZES[size][1]))
    print(json.dumps(rows[-1]), flush=True)
    for workers in args.workers:
      rows.append(time_pipeline(data_dir, size, workers, args.batches))
      print(json.dumps(rows[-1]), flush=True)
  print("\n| case | clip size | workers | batch | clips/s | ms/batch |\n|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['case']} | {r['size']} | {r['workers']} | {r['batch']} | {r['clips_per_s']} "
          f"| {r.get('ms_per_batch', '')} |")


if __name__ == "__main__":
  main()
