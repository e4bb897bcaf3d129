#!/usr/bin/env bash
# Cloud TPU VM (a slice of one or more hosts): the same command on every worker, started with
# `gcloud ... ssh --worker=all`; --distributed makes jax.distributed.initialize() read the
# worker count and this worker's id from the TPU metadata server.
#
#   TPU_NAME=my-v5e-16 ZONE=us-west4-a WORKDIR=/mnt/shared/runs/paper \
#       launch/tpu_vm.sh [CONFIG] [--config.x=y ...]
#
# Expects:
#   - gcloud on this machine, authenticated; TPU_NAME, ZONE (and PROJECT, optional) set
#   - on every worker: the repository at REPO (default ~/xray_flax) and PYTHON with
#     xray_flax and jax[tpu] installed (default: python3); SETUP runs first (optional)
#   - WORKDIR on a filesystem mounted at the same path on every worker (NFS, Filestore,
#     gcsfuse); the data must be reachable from every worker too
#   - config.train.batch_size is the GLOBAL batch: a multiple of the slice's chips
# Preemption: a maintenance event or preemption sends SIGTERM to the workers; every worker
# saves the same step and exits 0; run the script again to resume.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (shared by all workers)}"
CONFIG=configs/default.py
if [[ $# -gt 0 && $1 != --* ]]; then CONFIG=$1; shift; fi
REMOTE_REPO=${REPO:-'~/xray_flax'}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} --worker=all \
  --command "cd $REMOTE_REPO && ${SETUP:-true} && ${PYTHON:-python3} -m xray_flax.main --distributed \
    --config $CONFIG --workdir $WORKDIR$ARGS"
