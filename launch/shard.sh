#!/usr/bin/env bash
# Sharding with N processes on one node (one per GPU; 2 on a CPU-only machine), into one folder:
#   launch/shard.sh MANIFEST OUT [dfdtrain shard options...]
# torchrun starts N ranks; each writes its part of the shards (the part is the rank) and rank 0 waits for the
# others and writes OUT/index.json: the same shards as one process writes. A killed run resumes when rerun.
# NPROC overrides the process count. On a GPU machine add --device auto (each rank's own GPU) and --workers K.
# Several nodes: run the same line on every node with NNODES=M MASTER_ADDR=<first node> (MASTER_PORT, default
# 29500; RUN_ID, default shard), like launch/multi_node.sh; OUT must be a folder every node sees.
#   DRY_RUN=1  print the torchrun command instead of running it
set -uo pipefail
if [ "$#" -lt 2 ]; then
  echo "usage: [NPROC=N] launch/shard.sh MANIFEST OUT [dfdtrain shard options...]" >&2
  exit 2
fi
source "$(dirname "$0")/common.sh"
manifest="$1" out="$2"; shift 2
LAUNCH_WHAT=sharding  # for run_or_print's failure line
gpus="$(gpu_count)"
nproc="${NPROC:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}"
if [ -n "${NNODES:-}" ]; then
  : "${MASTER_ADDR:?set MASTER_ADDR to the address of the first node}"
  nodes=(--nnodes="$NNODES" --rdzv_backend=c10d --rdzv_endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}"
         --rdzv_id="${RUN_ID:-shard}")
else
  nodes=(--standalone)
fi
run_or_print "$PYTHON" -m torch.distributed.run "${nodes[@]}" --nproc_per_node="$nproc" \
  -m dfdtrain shard --manifest "$manifest" --out "$out" "$@"
