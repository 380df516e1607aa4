"""launch/sweep.py: a config's declared sweep expanded into validated runs."""

import json
import pathlib
import shlex
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SWEEP = [sys.executable, str(REPO / "launch" / "sweep.py")]

CONFIG = textwrap.dedent("""
    from lumiere_jax.config import base_config

    def get_config(arg="t2v"):
      return base_config()

    def get_sweep(arg):
      return SWEEP_VALUE
""")

# Records its arguments instead of training; fails for seed 1 to test failure handling.
RECORDER = textwrap.dedent("""
    import json, sys
    with open(sys.argv[1], "a") as f:
      f.write(json.dumps(sys.argv[2:]) + "\\n")
    sys.exit(1 if "--config.seed=1" in sys.argv else 0)
""")


def _config(tmp_path, sweep) -> str:
  path = tmp_path / "sweep_config.py"
  path.write_text(CONFIG.replace("SWEEP_VALUE", repr(sweep)))
  return str(path)


def _sweep(args):
  return subprocess.run([*SWEEP, *args], capture_output=True, text=True, timeout=120)


def _recorder(tmp_path):
  script = tmp_path / "recorder.py"
  script.write_text(RECORDER)
  record = tmp_path / "record.jsonl"
  return f"{shlex.quote(sys.executable)} {script} {record} --", record


def test_product_of_entries_and_zip_within_one(tmp_path):
  config = _config(tmp_path, [{"seed": [0, 1]},
                              {"data.num_frames": [16, 32], "data.batch_size": [8, 4]}])
  root = tmp_path / "root"
  result = _sweep(["--config", config, "--workdir-root", str(root), "--dry-run"])
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line) for line in result.stdout.splitlines()]
  runs = [(c[c.index("--workdir") + 1], [a for a in c if a.startswith("--config.")])
          for c in commands]
  assert runs == [
      (f"{root}/0-seed=0-num_frames=16-batch_size=8",
       ["--config.seed=0", "--config.data.num_frames=16", "--config.data.batch_size=8"]),
      (f"{root}/1-seed=0-num_frames=32-batch_size=4",
       ["--config.seed=0", "--config.data.num_frames=32", "--config.data.batch_size=4"]),
      (f"{root}/2-seed=1-num_frames=16-batch_size=8",
       ["--config.seed=1", "--config.data.num_frames=16", "--config.data.batch_size=8"]),
      (f"{root}/3-seed=1-num_frames=32-batch_size=4",
       ["--config.seed=1", "--config.data.num_frames=32", "--config.data.batch_size=4"]),
  ]
  assert all(c[:4] == ["lumiere", "train", "--config", config] for c in commands)
  assert not root.exists()  # a dry run writes nothing


def test_values_are_written_so_the_config_parser_reads_them_back(tmp_path):
  config = _config(tmp_path, [{"model.dtype": ["bfloat16"],
                               "model.temporal.down_levels": [(True, False)],
                               "model.norm_eps": [1e-6]}])
  result = _sweep(["--config", config, "--workdir-root", str(tmp_path), "--dry-run"])
  assert result.returncode == 0, result.stderr
  overrides = [a for a in shlex.split(result.stdout) if a.startswith("--config.")]
  assert overrides == ["--config.model.dtype=bfloat16",
                       "--config.model.temporal.down_levels=(True, False)",
                       "--config.model.norm_eps=1e-06"]


def test_unknown_key_is_refused_before_anything_runs(tmp_path):
  config = _config(tmp_path, [{"seed": [0, 1]}, {"train.learnig_rate": [1e-4]}])
  launcher, record = _recorder(tmp_path)
  root = tmp_path / "root"
  result = _sweep(["--config", config, "--workdir-root", str(root), "--launcher", launcher])
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1
  assert "unknown config key 'train.learnig_rate'" in result.stderr
  assert "did you mean 'train.learning_rate'?" in result.stderr
  assert not record.exists() and not root.exists()


def test_an_invalid_value_in_a_later_run_is_refused_before_the_first_runs(tmp_path):
  config = _config(tmp_path, [{"data.num_frames": [16, 5]}])
  launcher, record = _recorder(tmp_path)
  result = _sweep(["--config", config, "--workdir-root", str(tmp_path / "root"),
                   "--launcher", launcher])
  assert result.returncode == 2 and result.stderr.count("\n") == 1
  assert "sweep run 1-num_frames=5: data.num_frames=5 is invalid" in result.stderr
  assert not record.exists()


@pytest.mark.parametrize("sweep,message", [
    ([], "non-empty list"),
    ([{"seed": [0, 1], "data.batch_size": [8]}], "zips lists of different lengths"),
    ([{"seed": 3}], "needs a non-empty list of values"),
    ([{"seed": [0]}, {"seed": [1]}], "appears in two entries"),
])
def test_malformed_sweeps_are_one_line_and_exit_2(tmp_path, sweep, message):
  result = _sweep(["--config", _config(tmp_path, sweep), "--workdir-root", str(tmp_path),
                   "--dry-run"])
  assert result.returncode == 2 and result.stderr.count("\n") == 1
  assert message in result.stderr


def test_config_without_a_sweep_is_one_line_and_exit_2():
  result = _sweep(["--config", "lumiere_base:t2v", "--workdir-root", "unused", "--dry-run"])
  assert result.returncode == 2 and result.stderr.count("\n") == 1
  assert "defines no get_sweep(arg)" in result.stderr


def test_runs_go_one_after_another_and_a_failure_does_not_stop_the_rest(tmp_path):
  config = _config(tmp_path, [{"seed": [0, 1, 2]}])
  launcher, record = _recorder(tmp_path)
  root = tmp_path / "root"
  result = _sweep(["--config", config, "--workdir-root", str(root), "--launcher", launcher])
  assert result.returncode == 1
  assert "1 of 3 runs failed: 1-seed=1 (exit 1)" in result.stderr
  calls = [json.loads(line) for line in record.read_text().splitlines()]
  assert [c[c.index("--workdir") + 1] for c in calls] == [
      f"{root}/0-seed=0", f"{root}/1-seed=1", f"{root}/2-seed=2"]
  assert all(c[:3] == ["--", "lumiere", "train"] for c in calls)  # after the launcher prefix


def test_fixed_overrides_go_to_every_run_and_are_validated_like_training(tmp_path):
  config = _config(tmp_path, [{"seed": [0, 1]}])
  result = _sweep(["--config", config, "--workdir-root", str(tmp_path), "--dry-run",
                   "--config.train.data_dir=data/shapes"])
  assert result.returncode == 0, result.stderr
  assert all("--config.train.data_dir=data/shapes --config.seed=" in line
             for line in result.stdout.splitlines())
  bad = _sweep(["--config", config, "--workdir-root", str(tmp_path), "--dry-run",
                "--config.train.learning_rate=-1.0"])
  assert bad.returncode == 2 and "train.learning_rate=-1.0 is invalid" in bad.stderr
  swept = _sweep(["--config", config, "--workdir-root", str(tmp_path), "--dry-run",
                  "--config.seed=4"])
  assert swept.returncode == 2 and "fixed override of swept key(s) ['seed']" in swept.stderr


def test_the_training_command_reads_back_each_runs_values(tmp_path):
  """The printed commands go through `lumiere train`'s own flag parsing."""
  from lumiere_jax.commands import train  # pylint: disable=import-outside-toplevel
  sweep = [{"model.dtype": ["bfloat16", "float32"],
            "model.temporal.down_levels": [(True, False), (False, True)]},
           {"model.norm_eps": [1e-6]}]
  result = _sweep(["--config", _config(tmp_path, sweep), "--workdir-root", str(tmp_path),
                   "--dry-run"])
  assert result.returncode == 0, result.stderr
  for line, (dtype, levels) in zip(result.stdout.splitlines(),
                                   [("bfloat16", (True, False)), ("float32", (False, True))]):
    config = train.parse_flags(shlex.split(line)[2:]).config
    assert config.model.dtype == dtype and tuple(config.model.temporal.down_levels) == levels
    assert config.model.norm_eps == 1e-6
