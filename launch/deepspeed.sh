#!/usr/bin/env bash
# The deepspeed launcher over the hosts of a hostfile ("node0 slots=8" lines; it starts the ranks over ssh):
#   HOSTFILE=hostfile launch/deepspeed.sh configs/efficientnet_b7_lstm.yaml [key.sub=value ...]
# Without HOSTFILE: this node only, NPROC processes (default: its GPUs, or 2 on a CPU).
set -uo pipefail
source "$(dirname "$0")/common.sh"
config="${1:?usage: [HOSTFILE=FILE] launch/deepspeed.sh CONFIG.yaml [key.sub=value ...]}"; shift
gpus="$(gpu_count)"
nproc="${NPROC:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}"
if [ -n "${HOSTFILE:-}" ]; then
  hosts=(--hostfile "$HOSTFILE" --master_port "${MASTER_PORT:-29500}")
else
  hosts=(--num_gpus "$nproc" --master_port "${MASTER_PORT:-29500}")
fi
# --no_local_rank: the rank comes from LOCAL_RANK; a --local_rank argument would land before `train` and be refused
run_or_print "$PYTHON" -m deepspeed.launcher.runner "${hosts[@]}" --no_local_rank --module dfdtrain train \
  --config "$config" "$@" train.engine=deepspeed
