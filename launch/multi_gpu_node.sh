#!/usr/bin/env bash
# One machine, several GPUs: one process drives every GPU it sees (a `data` mesh over all of
# them, config.mesh.data=-1); no jax.distributed needed.
#
#   launch/multi_gpu_node.sh WORKDIR [CONFIG] [--config.x=y ...]
#   e.g. launch/multi_gpu_node.sh /scratch/runs/paper configs/paper.py --config.train.batch_size=64
#
# Expects:
#   - run from anywhere; the repository is found from this script's path
#   - PYTHON: the interpreter with xray_flax and a CUDA build of jax installed (default: python)
#   - CUDA_VISIBLE_DEVICES (optional): which GPUs to use (default: all)
#   - config.train.batch_size is the GLOBAL batch: a multiple of the number of GPUs
#     (docs/scaling.md explains the learning rate for a larger batch)
#   - XRAY_FLAX_JAX_CACHE (optional): compilation cache folder (default ~/.cache/xray_flax/jax)
# Stopping: SIGTERM/Ctrl-C saves a checkpoint and exits 0; the same command resumes.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  sed -n '2,16p' "$0" >&2
  exit 2
fi
WORKDIR=$1; shift
CONFIG=configs/default.py
if [[ $# -gt 0 && $1 != --* ]]; then CONFIG=$1; shift; fi
cd "$(dirname "$0")/.."
# XLA preallocates 75% of each GPU by default; training state here is small, but the
# inference batches of evaluation are not: let XLA grow as needed.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec "${PYTHON:-python}" -m xray_flax.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
