#!/bin/bash
# Multi-node GPU training under SLURM as one jax.distributed job: one process per node,
# each driving all of its node's GPUs; the allocation's first node is the coordinator.
#
#   sbatch --nodes=4 --gpus-per-node=8 launch/slurm_gpu.sh \
#       lumiere train --config lumiere_base:t2v --workdir /shared/lumiere_base_t2v
#
# Every process gets the distributed environment of launch/common.py:
#   LUMIERE_COORDINATOR_ADDRESS  first node of SLURM_JOB_NODELIST, port
#                                $LUMIERE_COORDINATOR_PORT (default 12345)
#   LUMIERE_NUM_PROCESSES        SLURM_NNODES
#   LUMIERE_PROCESS_ID           the task's SLURM_PROCID (read inside the task)
# --dry-run as the first argument prints the srun command instead of running it.
# Outside a SLURM allocation, or without scontrol, it stops with one line and exit code 2.
#SBATCH --job-name=lumiere
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

fail() {
  echo "launch/slurm_gpu.sh: error: $*" >&2
  exit 2
}

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
  dry_run=1
  shift
fi
[[ $# -gt 0 ]] \
  || fail "no command to run; usage: sbatch launch/slurm_gpu.sh [--dry-run] COMMAND ..."
[[ -n "${SLURM_JOB_NODELIST:-}" && -n "${SLURM_NNODES:-}" ]] \
  || fail "SLURM_JOB_NODELIST and SLURM_NNODES are not set; submit with sbatch or run inside salloc"
command -v scontrol >/dev/null || fail "scontrol not found on PATH; this script needs SLURM"

# The whole list, then its first line: `| head -n 1` would end scontrol with SIGPIPE,
# which pipefail turns into a failed script.
hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
coordinator=${hosts%%$'\n'*}
[[ -n "$coordinator" ]] || fail "no host in SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST"
port=${LUMIERE_COORDINATOR_PORT:-12345}

# SLURM_PROCID differs per task, so it is read by a shell inside each task.
launch=(srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1
        --kill-on-bad-exit=1
        env LUMIERE_COORDINATOR_ADDRESS="$coordinator:$port" LUMIERE_NUM_PROCESSES="$SLURM_NNODES"
        bash -c 'export LUMIERE_PROCESS_ID=$SLURM_PROCID; exec "$@"' lumiere-task "$@")
if (( dry_run )); then
  printf '%q ' "${launch[@]}"
  echo
  exit 0
fi
exec "${launch[@]}"
