#!/usr/bin/env bash
# Launch a run on a Slurm GPU cluster: one process per node, all its GPUs.
#
#   sbatch --nodes=2 --gpus-per-node=8 launch/gpu_slurm.sh CONFIG WORKDIR [--config.x=y ...]
#   launch/gpu_slurm.sh --dry_run CONFIG WORKDIR [--config.x=y ...]
#
# --dry_run prints the exact srun command, the environment, and the main
# command of every task, and runs nothing (outside an allocation it assumes
# NODES nodes, default 2).
#
# jax.distributed.initialize() reads the Slurm environment: the coordinator
# (the first node of the job), the process count (SLURM_NTASKS) and each
# process's index (SLURM_PROCID). The venv must have jax[cuda12] at the
# version requirements.txt pins instead of jax[cpu]. WORKDIR must be on a
# file system every node sees (checkpoints are written by all nodes).
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry_run" ]]; then DRY_RUN=1; shift; fi
if (( $# < 2 )); then
  echo "usage: $0 [--dry_run] CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
NODES=${SLURM_NNODES:-${NODES:-2}}

# Let XLA use most of each GPU's memory, but not preallocate it all at start.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
MAIN=(python -m txt2img_jax.main --distributed "--config=$CONFIG"
      "--workdir=$WORKDIR" --config.dtype=bfloat16 "$@")
# --kill-on-bad-exit: one failed task ends the others instead of leaving
# them blocked in a collective until the time limit.
CMD=(srun --ntasks-per-node=1 --kill-on-bad-exit=1 "${MAIN[@]}")

if (( DRY_RUN )); then
  echo "# srun command:"
  printf '%q ' "${CMD[@]}"; echo
  echo "# environment of every task:"
  echo "export XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"
  for (( i = 0; i < NODES; i++ )); do
    echo "# task $i of $NODES (SLURM_PROCID=$i, one per node):"
    printf '%q ' "${MAIN[@]}"; echo
  done
  exit 0
fi
exec "${CMD[@]}"
