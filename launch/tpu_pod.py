"""Train on a Cloud TPU pod slice: create the TPU VM, copy this repository to every worker,
install it, run the command on all workers at once as a jax.distributed job, and delete
the TPU VM afterwards (also when a step fails or the launcher is stopped).

  python launch/tpu_pod.py --project my-project --zone us-west4-a --tpu-name lumiere-v5e \
      --accelerator-type v5litepod-16 -- \
      lumiere train --config lumiere_base:t2v --workdir gs://BUCKET/lumiere_base_t2v

--dry-run prints the gcloud commands instead of running them. The project, zone and TPU
name come from the flags or from CLOUDSDK_CORE_PROJECT, CLOUDSDK_COMPUTE_ZONE and
LUMIERE_TPU_NAME; a missing one is reported before anything starts.

Each worker learns its place from the TPU VM metadata server (the same source jax's own
Cloud TPU detection reads): its index is `agent-worker-number`, the coordinator is the
first of `worker-network-endpoints` (entries "host" or "name:id:ip"), and the number of
processes is the number of endpoints. They are exported as the distributed environment of
launch/common.py before the command starts.
"""

import os
import shlex
import shutil
import signal
import subprocess
import sys

import common

PROG = common.prog_name(__file__)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "lumiere_jax"
COORDINATOR_PORT = 8476  # jax's default coordinator port on Cloud TPU
METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/attributes"
SETTINGS = (("project", "CLOUDSDK_CORE_PROJECT", "gcloud project"),
            ("zone", "CLOUDSDK_COMPUTE_ZONE", "zone"),
            ("tpu_name", "LUMIERE_TPU_NAME", "TPU name"))


def parse_args(argv, environ):
  launcher_args, command = common.split_command(argv)
  parser = common.OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--project", help="gcloud project (default: $CLOUDSDK_CORE_PROJECT)")
  parser.add_argument("--zone", help="TPU zone (default: $CLOUDSDK_COMPUTE_ZONE)")
  parser.add_argument("--tpu-name", help="TPU VM name (default: $LUMIERE_TPU_NAME)")
  parser.add_argument("--accelerator-type", default="v5litepod-16")
  parser.add_argument("--version", default="v2-alpha-tpuv5-lite", help="TPU VM runtime")
  parser.add_argument("--spot", action="store_true", help="create a Spot TPU VM")
  parser.add_argument("--reuse", action="store_true",
                      help="use an existing TPU VM: no create, no delete")
  parser.add_argument("--keep", action="store_true", help="do not delete the TPU VM")
  parser.add_argument("--code-dir", default=REPO_ROOT, help="copied to every worker")
  parser.add_argument("--setup", default=f"cd {REMOTE_DIR} && pip install -q -e '.[tpu]'",
                      help="shell command run on every worker before the command")
  parser.add_argument("--dry-run", action="store_true", help="print the gcloud commands")
  args = parser.parse_args(launcher_args)
  for field, variable, what in SETTINGS:
    setattr(args, field, getattr(args, field) or environ.get(variable))
    if not getattr(args, field):
      flag = "--" + field.replace("_", "-")
      common.fail(PROG, f"no {what}: pass {flag} or set {variable}")
  if not command:
    common.fail(PROG, "no command to run; usage: launch/tpu_pod.py [options] -- COMMAND ...")
  args.command = command
  return args


def worker_script(command) -> str:
  """POSIX shell run on every worker: the distributed environment from the metadata
  server, then the command from the copied repository."""
  return "; ".join([
      "set -e",
      f"md() {{ curl -sf -H 'Metadata-Flavor: Google' {METADATA_URL}/$1; }}",
      "endpoints=$(md worker-network-endpoints)",
      "index=$(md agent-worker-number)",
      "first=${endpoints%%,*}",
      f"export {common.COORDINATOR_ADDRESS}=${{first##*:}}:{COORDINATOR_PORT}",
      f"export {common.NUM_PROCESSES}=$(echo \"$endpoints\" | tr , '\\n' | wc -l)",
      f"export {common.PROCESS_ID}=$index",
      f"cd {REMOTE_DIR}",
      f"exec {shlex.join(command)}",
  ])


def gcloud_commands(args) -> dict:
  """Step name -> gcloud command line, in order: create (not with --reuse), copy, setup,
  train, delete (not with --reuse or --keep)."""
  tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
  where = [f"--project={args.project}", f"--zone={args.zone}"]
  ssh = lambda script: [*tpu, "ssh", args.tpu_name, *where, "--worker=all",
                        f"--command={script}"]
  steps = {}
  if not args.reuse:
    steps["create"] = [*tpu, "create", args.tpu_name, *where,
                       f"--accelerator-type={args.accelerator_type}",
                       f"--version={args.version}", *(["--spot"] if args.spot else [])]
  steps["copy"] = [*tpu, "scp", "--recurse", args.code_dir.rstrip("/"),
                   f"{args.tpu_name}:{REMOTE_DIR}", "--worker=all", *where]
  steps["setup"] = ssh(args.setup)
  steps["train"] = ssh(worker_script(args.command))
  if not (args.reuse or args.keep):
    steps["delete"] = [*tpu, "delete", args.tpu_name, *where, "--quiet"]
  return steps


def run_step(name: str, line) -> int:
  print(f"{PROG}: {name}: {shlex.join(line[:6])} ...", file=sys.stderr, flush=True)
  code = subprocess.run(line).returncode
  if code:
    print(f"{PROG}: {name} failed with code {code}", file=sys.stderr)
  return code


def run(args) -> int:
  steps = gcloud_commands(args)
  if args.dry_run:
    for line in steps.values():
      print(shlex.join(line))
    return 0
  if shutil.which("gcloud") is None:
    common.fail(PROG, "gcloud not found on PATH; install the Google Cloud CLI")
  # Only a TPU VM this run created gets deleted: a failed create may mean the name
  # belongs to someone else's.
  if "create" in steps and (code := run_step("create", steps["create"])):
    return code
  # A SIGTERM (a scheduler, preemption of this machine) still runs `finally`.
  signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
  try:
    for name in ("copy", "setup", "train"):
      if code := run_step(name, steps[name]):
        return code
    return 0
  finally:
    if "delete" in steps:
      run_step("delete", steps["delete"])


def main(argv=None) -> int:
  return run(parse_args(sys.argv[1:] if argv is None else argv, os.environ))


if __name__ == "__main__":
  sys.exit(main())
