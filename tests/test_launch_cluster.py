"""launch/tpu_pod.py and launch/slurm_gpu.sh: the commands they would run, the environment
each process gets, and one-line refusals when settings are missing. Nothing reaches a
cloud or a cluster: gcloud only ever runs as --dry-run, curl, scontrol and srun are fakes."""

import os
import pathlib
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TPU = [sys.executable, str(REPO / "launch" / "tpu_pod.py")]
SLURM = ["bash", str(REPO / "launch" / "slurm_gpu.sh")]
TPU_SETTINGS = ("CLOUDSDK_CORE_PROJECT", "CLOUDSDK_COMPUTE_ZONE", "LUMIERE_TPU_NAME")
WHERE = ["--project=proj", "--zone=us-west4-a", "--tpu-name=pod"]
TRAIN = ["lumiere", "train", "--config", "configs/lumiere_base.py:t2v", "--workdir", "gs://b/r"]


def _env(**changes):
  env = {k: v for k, v in os.environ.items()
         if k not in TPU_SETTINGS and not k.startswith("SLURM_")}
  env.update(changes)
  return env


def _run(command, env, timeout=60):
  return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def _fake(directory: pathlib.Path, name: str, body: str) -> None:
  path = directory / name
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(0o755)


def test_tpu_dry_run_prints_create_copy_setup_train_delete():
  result = _run([*TPU, *WHERE, "--accelerator-type=v5litepod-32", "--spot", "--dry-run",
                 "--", *TRAIN], _env())
  assert result.returncode == 0, result.stderr
  lines = [shlex.split(line) for line in result.stdout.splitlines()]
  assert [line[4] for line in lines] == ["create", "scp", "ssh", "ssh", "delete"]
  assert all(line[:4] == ["gcloud", "compute", "tpus", "tpu-vm"] for line in lines)
  assert all("--project=proj" in line and "--zone=us-west4-a" in line for line in lines)
  assert "--accelerator-type=v5litepod-32" in lines[0] and "--spot" in lines[0]
  assert all("--worker=all" in line for line in lines[1:4])
  assert lines[3][-1].endswith(f"exec {shlex.join(TRAIN)}")


@pytest.mark.parametrize("flag,steps", [("--reuse", ["scp", "ssh", "ssh"]),
                                        ("--keep", ["create", "scp", "ssh", "ssh"])])
def test_tpu_reuse_and_keep_leave_out_create_and_delete(flag, steps):
  result = _run([*TPU, *WHERE, flag, "--dry-run", "--", "true"], _env())
  assert [shlex.split(line)[4] for line in result.stdout.splitlines()] == steps


def test_tpu_settings_come_from_the_environment_too():
  env = _env(CLOUDSDK_CORE_PROJECT="p", CLOUDSDK_COMPUTE_ZONE="z", LUMIERE_TPU_NAME="n")
  result = _run([*TPU, "--dry-run", "--", "true"], env)
  assert result.returncode == 0
  assert "create n --project=p --zone=z" in result.stdout


@pytest.mark.parametrize("missing,message", [
    ("--project", "no gcloud project: pass --project or set CLOUDSDK_CORE_PROJECT"),
    ("--zone", "no zone: pass --zone or set CLOUDSDK_COMPUTE_ZONE"),
    ("--tpu-name", "no TPU name: pass --tpu-name or set LUMIERE_TPU_NAME"),
])
def test_tpu_missing_setting_is_one_line_and_exit_2(missing, message):
  flags = [f for f in WHERE if not f.startswith(missing + "=")]
  result = _run([*TPU, *flags, "--dry-run", "--", "true"], _env())
  assert result.returncode == 2
  assert result.stderr == f"launch/tpu_pod.py: error: {message}\n"


def test_tpu_without_gcloud_stops_before_anything_starts(tmp_path):
  result = _run([*TPU, *WHERE, "--", "true"], _env(PATH=str(tmp_path)))
  assert result.returncode == 2
  assert result.stderr == ("launch/tpu_pod.py: error: gcloud not found on PATH; install the "
                           "Google Cloud CLI\n")


def test_tpu_workers_get_their_place_in_the_job_from_the_metadata_server(tmp_path):
  """The worker script run against a fake metadata server (curl) on worker 2 of 3."""
  _fake(tmp_path, "curl", """case "$*" in
  *worker-network-endpoints*) echo "w-0:0:10.0.0.7,w-1:1:10.0.0.8,w-2:2:10.0.0.9" ;;
  *agent-worker-number*) echo 2 ;;
  *) exit 22 ;;
esac
""")
  (tmp_path / "lumiere_jax").mkdir()
  printer = ["sh", "-c", 'echo "$LUMIERE_COORDINATOR_ADDRESS $LUMIERE_NUM_PROCESSES '
             '$LUMIERE_PROCESS_ID"']
  dry = _run([*TPU, *WHERE, "--dry-run", "--", *printer], _env())
  script = shlex.split(dry.stdout.splitlines()[3])[-1].removeprefix("--command=")
  result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env=_env(PATH=f"{tmp_path}:{os.environ['PATH']}"), timeout=60)
  assert result.returncode == 0, result.stderr
  assert result.stdout.split() == ["10.0.0.7:8476", "3", "2"]


def test_slurm_outside_an_allocation_is_one_line_and_exit_2():
  result = _run([*SLURM, *TRAIN], _env())
  assert result.returncode == 2
  assert result.stderr == ("launch/slurm_gpu.sh: error: SLURM_JOB_NODELIST and SLURM_NNODES "
                           "are not set; submit with sbatch or run inside salloc\n")


def test_slurm_without_a_command_is_one_line_and_exit_2():
  result = _run(SLURM, _env(SLURM_JOB_NODELIST="n1", SLURM_NNODES="1"))
  assert result.returncode == 2 and result.stderr.count("\n") == 1
  assert "no command to run" in result.stderr


@pytest.fixture
def fake_slurm(tmp_path):
  """scontrol that expands the node list, srun that runs each task here with its
  SLURM_PROCID, and the allocation's variables."""
  _fake(tmp_path, "scontrol", "echo gpu-node07; echo gpu-node08\n")
  _fake(tmp_path, "srun", """n=1
while [[ "$1" == --* ]]; do [[ "$1" == --ntasks=* ]] && n=${1#--ntasks=}; shift; done
for ((i = 0; i < n; i++)); do SLURM_PROCID=$i "$@" & done
wait
""")
  return _env(PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_JOB_NODELIST="gpu-node[07-08]",
              SLURM_NNODES="2")


def test_slurm_dry_run_prints_the_srun_command(fake_slurm):
  result = _run([*SLURM, "--dry-run", *TRAIN], fake_slurm)
  assert result.returncode == 0, result.stderr
  words = shlex.split(result.stdout)
  assert words[:5] == ["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                       "--kill-on-bad-exit=1"]
  assert "LUMIERE_COORDINATOR_ADDRESS=gpu-node07:12345" in words
  assert "LUMIERE_NUM_PROCESSES=2" in words
  assert words[-len(TRAIN):] == TRAIN


def test_slurm_each_task_gets_its_own_process_id(fake_slurm):
  printer = ["sh", "-c", 'echo "$LUMIERE_PROCESS_ID $LUMIERE_NUM_PROCESSES '
             '$LUMIERE_COORDINATOR_ADDRESS"']
  result = _run([*SLURM, *printer], dict(fake_slurm, LUMIERE_COORDINATOR_PORT="2222"))
  assert result.returncode == 0, result.stderr
  assert sorted(result.stdout.splitlines()) == ["0 2 gpu-node07:2222", "1 2 gpu-node07:2222"]
