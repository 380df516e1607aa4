"""The table `lumiere bench` prints (and the benchmarks in benchmarks/ print alike) from
the JSON of a bench run (bench/timing.py:assemble)."""

import json


def format_table(result: dict) -> str:
  """A markdown table: one line per program, then the peak and the notes."""
  lines = [f"{result['preset']}: {json.dumps(result['settings'])}",
           "| program | median s | GFLOP | GFLOP/s | MFU | compile s | peak MiB/device |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for name, r in result["rows"].items():
    memory = r["memory"]["peak_bytes"] / 2 ** 20 if r["memory"] else None
    lines.append(f"| {name} | {_fmt(r['seconds'], '.4f')} | {r['flops'] / 1e9:,.2f} | "
                 f"{_fmt(r['achieved_flops_per_s'] and r['achieved_flops_per_s'] / 1e9, '.2f')}"
                 f" | {_fmt(r['mfu'], '.1%')} | {_fmt(r['compile_s'], '.1f')} | "
                 f"{_fmt(memory, ',.0f')} |")
  peak = result["peak"]
  lines.append(f"peak: {_fmt(peak['flops_per_s'] and peak['flops_per_s'] / 1e9, '.1f')} "
               f"GFLOP/s ({peak['source']}); params: {result['params']}")
  if "fits" in result:
    lines.append("fits per device: " + ", ".join(
        f"{chip} {'yes' if ok else 'no'}" for chip, ok in result["fits"].items()))
  machine = result["machine"]
  lines.append(f"{machine['device_kind']} x {machine['devices']}, {machine['cpu_count']} "
               f"CPUs, load {machine['load_average']}, jax {machine['jax']}; compilation "
               f"cache {machine['compilation_cache']} (compile s is a load where it holds "
               "the program; LUMIERE_COMPILATION_CACHE=off compiles afresh)")
  lines.extend(f"note: {note}" for note in result["notes"])
  return "\n".join(lines)


def _fmt(value, spec: str) -> str:
  return "-" if value is None else format(value, spec)
