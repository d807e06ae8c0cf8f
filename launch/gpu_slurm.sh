#!/usr/bin/env bash
# Launch a run on a Slurm GPU cluster: one process per node, all local GPUs.
#
#   sbatch --nodes=2 --gpus-per-node=8 launch/gpu_slurm.sh configs/restart.py /shared/workdirs/run1 [--config.x=y ...]
#
# jax.distributed.initialize() reads the Slurm environment (coordinator,
# process count and id). The venv must have jax[cuda12] at the pinned jax
# version instead of jax[cpu]. The workdir must be on a shared file system.
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
CONFIG=$1; WORKDIR=$2; shift 2
srun python -m txt2img_jax.main --distributed --config="$CONFIG" \
    --workdir="$WORKDIR" --config.dtype=bfloat16 "$@"
