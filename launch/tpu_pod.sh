#!/usr/bin/env bash
# Launch a run on every host of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE configs/restart.py gs://bucket/workdirs/run1 [--config.x=y ...]
#
# Each host runs the same command; jax.distributed finds the coordinator on
# Cloud TPU by itself, the mesh spans all chips of the slice, and each host
# reads its own shard of every global batch. The workdir must be on storage
# every host can reach (GCS); checkpoints are written by all hosts together.
# The shapes data is generated on each host into its local data dir
# (generation is deterministic, so every host has identical records).
set -euo pipefail
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_URL=${REPO_URL:?set REPO_URL to a git URL the TPU hosts can clone}

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "
  set -e
  if [ ! -d txt2img_jax ]; then git clone $REPO_URL txt2img_jax; fi
  cd txt2img_jax && git pull --ff-only
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -r requirements.txt 'jax[tpu]==0.9.2' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  python -m txt2img_jax.main --distributed --config=$CONFIG \
      --workdir=$WORKDIR --config.dtype=bfloat16 $*
"
