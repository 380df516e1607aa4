"""launch/local.py: N processes of one command as a jax.distributed job on this machine."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCHER = [sys.executable, str(REPO / "launch" / "local.py")]

# Joins the job through the launcher's environment only, then reduces across processes.
WORKER = textwrap.dedent("""
    import json, os
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    jax.distributed.initialize(os.environ["LUMIERE_COORDINATOR_ADDRESS"],
                               int(os.environ["LUMIERE_NUM_PROCESSES"]),
                               int(os.environ["LUMIERE_PROCESS_ID"]))
    indices = multihost_utils.process_allgather(np.array([jax.process_index()]))
    mesh = Mesh(np.array(jax.devices()), ("d",))
    local = np.full((jax.local_device_count(),), jax.process_index() + 1.0, np.float32)
    values = multihost_utils.host_local_array_to_global_array(local, mesh, PartitionSpec("d"))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(values)
    print(json.dumps({"index": jax.process_index(), "devices": jax.device_count(),
                      "local_devices": jax.local_device_count(),
                      "gathered": np.asarray(indices).ravel().tolist(),
                      "total": float(total)}))
    jax.distributed.shutdown()
""")


def _launch(args, timeout=180, **kwargs):
  return subprocess.run([*LAUNCHER, *args], capture_output=True, text=True, timeout=timeout,
                        **kwargs)


def test_two_processes_join_one_job_and_reduce_across_processes(tmp_path):
  worker = tmp_path / "worker.py"
  worker.write_text(WORKER)
  logs = tmp_path / "logs"
  result = _launch(["--num-processes", "2", "--devices-per-process", "2", "--log-dir",
                    str(logs), "--", sys.executable, str(worker)])
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  reports = {}
  for line in result.stdout.splitlines():
    prefix, _, rest = line.partition(" ")
    if rest.startswith("{"):
      reports[prefix] = json.loads(rest)
  assert set(reports) == {"[0]", "[1]"}
  for i in range(2):
    report = reports[f"[{i}]"]
    assert report["index"] == i
    assert report["devices"] == 4 and report["local_devices"] == 2
    assert report["gathered"] == [0, 1]
    assert report["total"] == 2 * 1.0 + 2 * 2.0  # two devices per process hold i + 1
    assert json.loads((logs / f"process_{i}.log").read_text().splitlines()[-1]) == report


def test_a_failing_process_stops_the_others_and_sets_the_exit_code():
  child = ("import os, sys, time\n"
           "if os.environ['LUMIERE_PROCESS_ID'] == '1': sys.exit(3)\n"
           "time.sleep(120)")
  start = time.monotonic()
  result = _launch(["--num-processes", "2", "--", sys.executable, "-c", child])
  assert result.returncode == 3
  assert time.monotonic() - start < 60
  assert "process 1 exited with code 3; stopping the others" in result.stderr


def test_sigterm_is_passed_to_every_process(tmp_path):
  """Each child records the signal it received in its SIGTERM handler: a launcher that
  killed its children (SIGKILL) would stop them too, but no handler would run."""
  child = textwrap.dedent(f"""
      import os, pathlib, signal, sys, time
      index = os.environ['LUMIERE_PROCESS_ID']
      def on_sigterm(signum, frame):
        pathlib.Path({str(tmp_path)!r}, 'signal_' + index).write_text(str(signum))
        sys.exit(0)
      signal.signal(signal.SIGTERM, on_sigterm)
      pathlib.Path({str(tmp_path)!r}, index).write_text(str(os.getpid()))
      time.sleep(120)
      """)
  launcher = subprocess.Popen([*LAUNCHER, "--num-processes", "2", "--", sys.executable, "-c",
                               child], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
  pid_files = [tmp_path / "0", tmp_path / "1"]
  deadline = time.monotonic() + 60
  while not all(p.exists() and p.read_text() for p in pid_files):
    assert time.monotonic() < deadline and launcher.poll() is None
    time.sleep(0.1)
  launcher.send_signal(signal.SIGTERM)
  _, stderr = launcher.communicate(timeout=60)
  assert launcher.returncode == 128 + signal.SIGTERM
  assert "received signal" in stderr
  for index, pid_file in enumerate(pid_files):
    received = tmp_path / f"signal_{index}"
    assert received.exists(), f"process {index} never ran its SIGTERM handler"
    assert received.read_text() == str(int(signal.SIGTERM))
    with pytest.raises(ProcessLookupError):
      os.kill(int(pid_file.read_text()), 0)


def test_dry_run_prints_each_process_environment():
  result = _launch(["--num-processes", "2", "--port", "4321", "--devices-per-process", "3",
                    "--dry-run", "--", "lumiere", "train", "--workdir", "w d"])
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert "LUMIERE_COORDINATOR_ADDRESS=127.0.0.1:4321" in line
    assert "LUMIERE_NUM_PROCESSES=2" in line and f"LUMIERE_PROCESS_ID={i}" in line
    assert "--xla_force_host_platform_device_count=3" in line
    assert line.endswith("lumiere train --workdir 'w d'")


@pytest.mark.parametrize("args,message", [
    (["--num-processes", "2"], "no command to run"),
    (["--num-processes", "0", "--", "true"], "--num-processes and --devices-per-process"),
    (["--bogus", "--", "true"], "unrecognized arguments: --bogus"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
  result = _launch(args, timeout=60)
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and message in result.stderr
  assert result.stderr.startswith("launch/local.py: error: ")


# Fewer layers than shapes_tiny: the two processes' compile is most of the test's time.
SMALL_MODEL = ["--config.model.block_out_channels=(16, 32)",
               "--config.model.cross_attention_levels=(False, True)",
               "--config.text.num_layers=1"]


@pytest.mark.slow
def test_two_process_training_runs_a_few_steps(tmp_path):
  """The t2i stage (it trains from scratch; t2v needs a t2i checkpoint to freeze)."""
  from lumiere_jax.data import builders  # pylint: disable=import-outside-toplevel
  data_dir = tmp_path / "shapes"
  builders.build_shapes(data_dir, 8, 32, 16, seed=3)
  workdir = tmp_path / "workdir"
  result = _launch(["--num-processes", "2", "--", sys.executable, "-m", "lumiere_jax.cli",
                    "train", "--config", f"{REPO / 'configs' / 'shapes_tiny.py'}:t2i",
                    "--workdir", str(workdir), f"--config.train.data_dir={data_dir}",
                    "--config.train.num_steps=2", "--config.data.batch_size=4",
                    "--config.train.log_every=1", "--config.train.progress_bar=False",
                    *SMALL_MODEL],
                   timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  for i in range(2):
    assert any(line.startswith(f"[{i}] ") for line in result.stdout.splitlines())
  assert any((workdir / "checkpoints").glob("2")), sorted(workdir.rglob("*"))[:20]
