"""`lumiere bench` end to end on a micro config.

The end-to-end run is the real CLI (parse, compile the real train step and a sampling
step, time them, write the JSON); the config is shapes_tiny:t2i shrunk to two levels at
8x8, so the test takes under a minute even with a cold compilation cache (50 s on a busy
2-core machine, most of it compiling).
"""

import json
import math
import pathlib

import jax
import numpy as np
import pytest

from lumiere_jax import cli

MICRO = ["--config.model.block_out_channels=(8,16)",
         "--config.model.cross_attention_levels=(False,True)",
         "--config.model.num_attention_heads=2",
         "--config.text.num_layers=1",
         "--config.data.resolution=8"]


def test_tiny_bench_writes_every_field(tmp_path, capsys):
  out = tmp_path / "bench.json"
  code = cli.main(["bench", "tiny-t2i", "--steps", "2", "--warmup", "1", "--batch", "8",
                   *MICRO, "--json", str(out)])
  assert code == 0
  result = json.loads(out.read_text())
  assert "| train_step |" in capsys.readouterr().out
  for key in ("train_step", "sample_step"):
    row = result["rows"][key]
    assert result[f"{key}_s"] == row["seconds"] > 0
    assert math.isclose(row["seconds"], np.median(row["times_s"]))
    assert len(row["times_s"]) == 2
    assert result["flops"][key] == row["flops"] > 0
    assert math.isclose(result["achieved_flops_per_s"][key], row["flops"] / row["seconds"])
    assert math.isclose(result["mfu"][key],
                        row["achieved_flops_per_s"] / result["peak"]["flops_per_s"])
    assert result["compile_s"][key] > 0
    memory = row["memory"]
    assert result["peak_memory_bytes"][key] == memory["peak_bytes"] > 0
    assert memory["peak_bytes"] == (memory["argument_bytes"] + memory["output_bytes"]
                                    - memory["alias_bytes"] + memory["temp_bytes"])
  # Training costs more than one forward on the same batch; the donated state is aliased.
  assert result["flops"]["train_step"] > result["flops"]["sample_step"]
  assert result["rows"]["train_step"]["memory"]["alias_bytes"] > 0
  assert result["peak"]["flops_per_s"] > 0 and "jnp.dot" in result["peak"]["source"]
  assert result["settings"]["batch"] == result["settings"]["sample_batch"] == 8
  assert result["settings"]["devices"] == len(jax.devices())  # the batch split over them
  assert 0 < result["params"]["trainable"] <= result["params"]["total"]
  assert math.isfinite(result["loss"])
  assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("argv,message", [
    (["bench", "tiny-t3v"], "unknown preset 'tiny-t3v'"),
    (["bench", "tiny-t2v", "--steps", "0"], "--steps must be >= 1"),
    (["bench", "base", "--batch", "4"], "--batch applies to the tiny-* presets"),
    (["bench", "tiny-t2v", "--config.model.no_such_field=1"], "no_such_field"),
    (["bench", "tiny-t2v", "--config.data.batch_size=2", "--config.data.batch_size=4"],
     "--config.data.batch_size given more than once"),
    (["bench", "tiny-t2v", "--config.data.batch_size"], "--config.a.b=VALUE"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err and err.startswith("lumiere bench: error:")


def test_unwritable_json_path_is_refused_before_anything_runs(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  targets = [tmp_path, blocker / "out.json"]
  if pathlib.Path("/proc/self").is_dir():  # a filesystem nobody can create files in
    targets.append(pathlib.Path("/proc/bench.json"))
  for target in targets:
    assert cli.main(["bench", "tiny-t2v", "--json", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--json" in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_collective_bytes_counts_each_collective_once_by_its_results():
  """Per-device bytes received, from the result shapes of a partitioned module's
  collectives: a synchronous one by its result, an asynchronous pair by the results of
  its '-start' (its '-done' is not counted again), nothing else."""
  from lumiere_jax.bench import memory
  hlo = "\n".join([
      "  %ag = bf16[8,128]{1,0} all-gather(bf16[1,128]{1,0} %p), dimensions={0}",
      "  %ar = f32[4]{0} all-reduce(f32[4]{0} %x), to_apply=%add",
      "  %ags = (bf16[1,16]{1,0}, bf16[8,16]{1,0}) all-gather-start(bf16[1,16]{1,0} %q)",
      "  %agd = bf16[8,16]{1,0} all-gather-done((bf16[1,16]{1,0}, bf16[8,16]{1,0}) %ags)",
      "  %cp = s32[3,5]{1,0} collective-permute(s32[3,5]{1,0} %y), source_target_pairs={{0,1}}",
      "  %a2a = (f32[2,2]{1,0}, f32[2,2]{1,0}) all-to-all(f32[2,2]{1,0} %u, f32[2,2]{1,0} %v)",
      "  %add = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b)",
  ])
  assert memory.collective_bytes(hlo) == {
      "all-gather": 8 * 128 * 2 + 8 * 16 * 2, "all-reduce": 4 * 4, "reduce-scatter": 0,
      "all-to-all": 2 * 2 * 2 * 4, "collective-permute": 3 * 5 * 4}
