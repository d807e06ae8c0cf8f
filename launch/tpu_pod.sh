#!/usr/bin/env bash
# Launch a run on every host of a Cloud TPU VM pod slice.
#
#   REPO_URL=https://github.com/you/txt2img_jax.git \
#   launch/tpu_pod.sh [--dry_run] TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]
#
# --dry_run prints the exact gcloud command, then the environment and main
# command every worker runs, and runs nothing. launch/README.md walks a whole
# pod run (create the slice, data, run, resume, TensorBoard).
#
# Every worker runs the same command: jax.distributed finds the coordinator,
# the process count and its own index from the TPU metadata, the mesh spans
# all chips of the slice, and each host reads its own rows of every global
# batch. WORKDIR must be one place every host sees: a bucket URL
# (gs://bucket/run) or a path every host mounts (see launch/README.md). The shapes data is
# generated on each host into DATA_DIR (deterministic: identical records).
#
# Environment: REPO_URL (required), REPO_REF (branch, tag or commit; default
# main), DATA_DIR (default ~/txt2img_data on each host), PROJECT (default:
# gcloud's configured project).
set -euo pipefail

DRY_RUN=0
if [[ "${1:-}" == "--dry_run" ]]; then DRY_RUN=1; shift; fi
if (( $# < 4 )); then
  echo "usage: $0 [--dry_run] TPU_NAME ZONE CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
REPO_URL=${REPO_URL:?set REPO_URL to a git URL the TPU hosts can clone}
REPO_REF=${REPO_REF:-main}
DATA_DIR=${DATA_DIR:-'~/txt2img_data'}
HERE=$(cd "$(dirname "$0")/.." && pwd)
# The TPU build of the jax version requirements.txt pins for CPU.
JAX_VERSION=$(sed -n 's/^jax\[cpu\]==\([0-9.]*\).*/\1/p' "$HERE/requirements.txt")
[[ -n "$JAX_VERSION" ]] || { echo "$0: no jax[cpu]==X pin in requirements.txt" >&2; exit 2; }

# Quoted once here, so arguments with spaces or quotes survive the remote shell.
MAIN="python -m txt2img_jax.main --distributed $(printf '%q ' \
  "--config=$CONFIG" "--workdir=$WORKDIR" --config.dtype=bfloat16 "$@")"
MAIN=${MAIN% }
ENV="export TXT2IMG_DATA_DIR=$DATA_DIR"
SETUP="set -e
if [ ! -d txt2img_jax ]; then git clone $(printf '%q' "$REPO_URL") txt2img_jax; fi
cd txt2img_jax && git fetch -q origin && git checkout -q $(printf '%q' "$REPO_REF")
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
pip install -q -r requirements.txt 'jax[tpu]==$JAX_VERSION' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
REMOTE="$SETUP
$ENV
$MAIN"

CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all)
[[ -n "${PROJECT:-}" ]] && CMD+=(--project="$PROJECT")
CMD+=(--command="$REMOTE")

if (( DRY_RUN )); then
  echo "# gcloud command (runs the script below on every worker at once):"
  printf '%q ' "${CMD[@]}"; echo
  echo "# environment on every worker:"
  echo "$ENV"
  echo "# main command on every worker (jax.distributed gives each its process index):"
  echo "$MAIN"
  exit 0
fi
exec "${CMD[@]}"
