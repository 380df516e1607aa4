"""Training across process boundaries: the real `lumiere train` CLI end to end (t2i, then
t2v on top of it, then `lumiere generate --checkpoint`), bit-for-bit resume in a new process, SIGKILL during asynchronous
saves, and SIGTERM (preemption) to one of two jax.distributed processes.

Run as a script, this file is the worker those tests start and kill:
  python tests/test_train_processes.py WORKDIR DATA_DIR STOP_AT_STEP [ADDRESS COUNT INDEX]
"""

import json
import pathlib
import random
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import test_train_support as support
from lumiere_jax import cli
from lumiere_jax.diffusion.config import sampler_settings
from lumiere_jax.pipelines import generate
from lumiere_jax.train import checkpoint

pytestmark = pytest.mark.slow

STEPS = 4              # the uninterrupted CLI run; the resumed one stops at STEPS // 2
WORKER_STEPS = 10_000  # the workers' schedule length; they stop by signal or stop_at_step
KILLS = 6


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return support.build_dataset(tmp_path_factory.mktemp("data"))


def _cli(stage: str, workdir, *extra: str, timeout=300):
  command = support.lumiere_command(
      "train", "--config", str(support.REPO / f"configs/shapes_tiny.py:{stage}"),
      "--workdir", str(workdir), *extra)
  result = subprocess.run(command, env=support.subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _restore_raw(step_dir: pathlib.Path) -> dict:
  """A checkpoint's state as nested dicts of numpy arrays (no target needed)."""
  with pytest.warns(UserWarning, match="Sharding info not provided"):
    tree = ocp.PyTreeCheckpointer().restore(step_dir / "state")
  return tree


def _flat(tree, prefix="") -> dict:
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}/{key}").items()}
  if isinstance(tree, (list, tuple)):
    return {k: v for i, sub in enumerate(tree) for k, v in _flat(sub, f"{prefix}/{i}").items()}
  return {prefix: np.asarray(tree)}


def _assert_same_state(a: pathlib.Path, b: pathlib.Path) -> None:
  left, right = _flat(_restore_raw(a)), _flat(_restore_raw(b))
  assert left.keys() == right.keys()
  different = [k for k in left if not np.array_equal(left[k], right[k])]
  assert not different, different[:5]
  for data_file in (a / "data").glob("process_*.json"):
    assert data_file.read_text() == (b / "data" / data_file.name).read_text()


def _committed(workdir) -> list:
  directory = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) \
      if directory.is_dir() else []


def _check_resume(t2i_workdir, flags, workdir) -> None:
  """STEPS // 2 steps, stop; a new process resumes and trains to STEPS: its final
  checkpoint equals the uninterrupted run's, bit for bit."""
  _cli("t2i", workdir, *flags, f"--stop_at_step={STEPS // 2}")
  assert _committed(workdir)[-1] == STEPS // 2
  resumed = _cli("t2i", workdir, *flags)
  assert f"resuming from the checkpoint of step {STEPS // 2}" in resumed.stderr
  # Params, optimizer state, EMA, counters and the data position are all identical.
  _assert_same_state(t2i_workdir / f"checkpoints/{STEPS}", workdir / f"checkpoints/{STEPS}")
  position = json.loads((workdir / f"checkpoints/{STEPS}/data/process_0-of-1.json").read_text())
  assert position["next_index"] == STEPS


def _check_t2v(t2i_workdir, data_dir, workdir) -> None:
  """t2v on the t2i checkpoint: frozen groups stay bit-identical to what they were loaded
  from (the t2i EMA of its trained backbone, its frozen text encoder as saved); optimizer
  state and EMA hold the temporal layers only."""
  _cli("t2v", workdir, *support.cli_overrides(
      f"train.data_dir={data_dir}", f"train.init_checkpoint={t2i_workdir}", "train.num_steps=2"))
  t2i = _restore_raw(t2i_workdir / f"checkpoints/{STEPS}")
  t2v = _restore_raw(workdir / "checkpoints/2")
  assert set(t2v["frozen"]) == {"backbone", "text"}
  assert set(t2i["ema"]) == {"backbone"} and set(t2i["frozen"]) == {"text"}
  frozen, loaded = _flat(t2v["frozen"]), {**_flat(t2i["ema"]), **_flat(t2i["frozen"])}
  assert frozen.keys() == loaded.keys()
  assert all(np.array_equal(frozen[k], loaded[k]) for k in frozen)
  assert set(t2v["params"]) == set(t2v["ema"]) == {"temporal"}
  optimizer_leaves = list(_flat(t2v["opt_state"]))
  assert any("/mu/temporal/" in k for k in optimizer_leaves)
  assert not [k for k in optimizer_leaves if "/backbone/" in k or "/text/" in k]
  assert int(t2v["step"]) == 2 and int(t2v["nonfinite_total"]) == 0
  # What generation loads: the run's config and the full tree, trained groups from the EMA.
  config = checkpoint.load_run_config(workdir)
  assert config.stage == "t2v" and config.model.block_out_channels == (8,)
  params = _flat(jax.device_get(checkpoint.load_trained_params(workdir, config)))
  expected = {**_flat(t2v["frozen"]), **_flat(t2v["ema"])}
  assert params.keys() == expected.keys()
  assert all(np.array_equal(params[k], expected[k]) for k in expected)
  _check_generate_from_checkpoint(workdir, config, jax.device_get(
      checkpoint.load_trained_params(workdir, config)))


def _check_generate_from_checkpoint(workdir, config, params) -> None:
  """`lumiere generate --checkpoint` takes the run's own config (this micro model is not
  the default config) and its trained weights: the same video as sampling those weights
  directly, and not the video of a fresh init."""
  out = workdir.parent / "generated.npy"
  argv = ["generate", "--checkpoint", str(workdir), "--prompt", "a red circle moving left",
          "--steps", "2", "--seed", "3", "--out", str(out), "--quiet"]
  assert cli.main(argv) == 0
  video = np.load(out)
  settings = sampler_settings(config.diffusion, steps=2)
  guidance = config.diffusion.guidance
  from_weights = generate.TextToVideo(config, params, settings)(
      ["a red circle moving left"], 3, guidance)[0]
  fresh = generate.TextToVideo(config, generate.fresh_params(config), settings)(
      ["a red circle moving left"], 3, guidance)[0]
  assert video.shape == (config.data.num_frames, 32, 32, 3)
  np.testing.assert_array_equal(video, from_weights)
  assert not np.array_equal(video, fresh)


def test_cli_t2i_resumes_bit_for_bit_and_t2v_trains_on_it(data_dir, tmp_path):
  """The real `lumiere train`: an uninterrupted t2i run, the same run stopped halfway and
  resumed in a new process, then t2v on top of the t2i checkpoint. (One test, so that
  the t2i run and its compilation are shared however pytest-xdist splits the tests.)"""
  flags = support.cli_overrides(f"train.data_dir={data_dir}", f"train.num_steps={STEPS}",
                                f"train.checkpoint_every={STEPS}")
  t2i_workdir = tmp_path / "t2i"
  _cli("t2i", t2i_workdir, *flags)
  _check_resume(t2i_workdir, flags, tmp_path / "t2i_resumed")
  _check_t2v(t2i_workdir, data_dir, tmp_path / "t2v")


# ---------------------------------------------------------------------------------------
# Signals: the workers run the library loop with the cheap loss (see support.cheap_loss).


def _worker(workdir, data_dir, log_path, stop_at_step=0, distributed=()):
  """Starts the worker (see _main); its log lines are appended to `log_path`."""
  command = [sys.executable, __file__, str(workdir), str(data_dir), str(stop_at_step),
             *map(str, distributed)]
  with open(log_path, "a") as log:  # the child keeps its own descriptor
    return subprocess.Popen(command, env=support.subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=log)


def _wait_for_line(path: pathlib.Path, pattern: str, process, timeout=120) -> re.Match:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    match = re.search(pattern, path.read_text()) if path.exists() else None
    if match:
      return match
    assert process.poll() is None, path.read_text()[-3000:]
    time.sleep(0.05)
  raise AssertionError(f"no {pattern!r} in {path} after {timeout}s")


def _wait_for_commit_after(workdir, step: int, process, timeout=120) -> None:
  """Waits until this run has committed a checkpoint of its own (so every attempt makes
  progress whatever the machine's speed)."""
  deadline = time.monotonic() + timeout
  while not (_committed(workdir) and _committed(workdir)[-1] > step):
    assert process.poll() is None and time.monotonic() < deadline
    time.sleep(0.05)


def test_sigkill_during_async_saves_never_loses_the_last_committed_step(data_dir, tmp_path):
  workdir, rng = tmp_path / "run", random.Random(0)
  killed_mid_save = 0
  for attempt in range(KILLS):
    committed = _committed(workdir)
    log_path = tmp_path / f"attempt_{attempt}.log"
    worker = _worker(workdir, data_dir, log_path)
    if committed:  # the restart restores the newest committed step, whatever was cut
      _wait_for_line(log_path, f"resuming from the checkpoint of step {committed[-1]} ",
                     worker)
    _wait_for_commit_after(workdir, committed[-1] if committed else 0, worker)
    time.sleep(rng.uniform(0.0, 1.0))  # a save (one per step) is almost always running
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=60)
    killed_mid_save += any(".orbax-checkpoint-tmp" in p.name
                           for p in (workdir / "checkpoints").iterdir())
  assert killed_mid_save >= KILLS // 2  # the kills did land inside saves

  # It trains on from the last committed step, and ends exactly where a run that was
  # never killed ends.
  last = _committed(workdir)[-1]
  for directory in (workdir, tmp_path / "reference"):
    worker = _worker(directory, data_dir, tmp_path / "final.log", last + 2)
    assert worker.wait(timeout=120) == 0, (tmp_path / "final.log").read_text()[-3000:]
  _assert_same_state(workdir / f"checkpoints/{last + 2}",
                     tmp_path / f"reference/checkpoints/{last + 2}")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_pair(workdir, data_dir, logs, stop_at_step=0):
  address = f"127.0.0.1:{_free_port()}"
  return [_worker(workdir, data_dir, logs[index], stop_at_step, (address, 2, index))
          for index in range(2)]


def test_sigterm_to_one_of_two_processes_saves_the_same_step_and_resumes(data_dir, tmp_path):
  workdir = tmp_path / "run"
  logs = [tmp_path / "process_0.log", tmp_path / "process_1.log"]
  first = _launch_pair(workdir, data_dir, logs)
  _wait_for_line(logs[0], r"step 3:", first[0], timeout=240)
  first[1].send_signal(signal.SIGTERM)
  assert [p.wait(timeout=120) for p in first] == [0, 0]
  saved = {int(_wait_for_line(log, r"finished step=(\d+) preempted=True", p).group(1))
           for log, p in zip(logs, first)}
  assert len(saved) == 1  # both processes stopped at, and saved, the same step
  step = saved.pop()
  assert _committed(workdir)[-1] == step

  second = _launch_pair(workdir, data_dir, logs, stop_at_step=step + 3)
  assert [p.wait(timeout=240) for p in second] == [0, 0]
  text = logs[0].read_text()
  assert f"resuming from the checkpoint of step {step} " in text
  logged = [int(s) for s in re.findall(r"step (\d+):", text)]
  assert logged == list(range(1, step + 4))  # no step lost, none repeated
  for index in range(2):
    position = json.loads((workdir / f"checkpoints/{step + 3}/data/"
                           f"process_{index}-of-2.json").read_text())
    assert position["next_index"] == step + 3


def _main(argv) -> None:
  """The worker: the library training loop on the micro t2i config with the cheap loss,
  checkpointing every step (so a signal almost always lands in a save)."""
  # Imported here, after torch is blocked (below): the loop imports tensorboardX.
  from lumiere_jax import runtime  # pylint: disable=import-outside-toplevel
  from lumiere_jax.train import distributed, loop, metrics  # pylint: disable=import-outside-toplevel
  runtime.enable_compilation_cache()  # as `lumiere` does
  workdir, data, stop_at_step, *cluster = argv
  if cluster:
    distributed.initialize(cluster[0], int(cluster[1]), int(cluster[2]))
  metrics.configure_logging(jax.process_index())
  config = support.micro_config("t2i", f"train.data_dir={data}", "train.checkpoint_every=1",
                                "train.keep_checkpoints=2", f"train.num_steps={WORKER_STEPS}")
  result = loop.train(config, workdir, loss_fn=support.cheap_loss,
                      stop_at_step=int(stop_at_step))
  print(f"finished step={result.step} preempted={result.preempted}", file=sys.stderr,
        flush=True)


if __name__ == "__main__":
  sys.modules.setdefault("torch", None)  # tensorboardX imports torch if it can: 2 s a start
  _main(sys.argv[1:])
