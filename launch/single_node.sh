#!/usr/bin/env bash
# One node, N processes (one per GPU; 2 on a CPU-only machine):
#   launch/single_node.sh configs/efficientnet_b7_lstm.yaml data.train_shards='shards/train-*.tar' ...
# NPROC overrides the process count. Extra arguments are config overrides (key.sub=value) or train flags.
set -uo pipefail
source "$(dirname "$0")/common.sh"
config="${1:?usage: launch/single_node.sh CONFIG.yaml [key.sub=value ...]}"; shift
gpus="$(gpu_count)"
nproc="${NPROC:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}"
run_or_print "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$nproc" \
  -m dfdtrain train --config "$config" "$@"
