#!/usr/bin/env bash
# M nodes x N processes with torchrun's c10d rendezvous on the first node. Run the same line on every node:
#   NNODES=4 MASTER_ADDR=node0 launch/multi_node.sh configs/efficientnet_b7_lstm.yaml [key.sub=value ...]
# MASTER_PORT (default 29500), NPROC (default: GPUs on this node), RUN_ID (default: the config's file name).
set -uo pipefail
source "$(dirname "$0")/common.sh"
config="${1:?usage: NNODES=M MASTER_ADDR=HOST launch/multi_node.sh CONFIG.yaml [key.sub=value ...]}"; shift
: "${NNODES:?set NNODES, the number of nodes}"
: "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}"
gpus="$(gpu_count)"
nproc="${NPROC:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}"
run_or_print "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc_per_node="$nproc" \
  --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" \
  --rdzv_id="${RUN_ID:-$(basename "$config" .yaml)}" \
  -m dfdtrain train --config "$config" "$@"
