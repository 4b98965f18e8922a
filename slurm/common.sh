# Shared by the sbatch templates (sourced). srun + torchrun, a run directory per job name (so a requeued job
# resumes from its checkpoints), the W&B run named after the job, and requeue on Slurm's warning signal.
#   DRY_RUN=1  print the srun command instead of running it
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
source "$(dirname "${BASH_SOURCE[0]}")/../launch/python.sh"
PYTHON="$(find_dfdtrain_python)" || exit 2

gpus_or_cpu_processes() {
  local gpus=0
  if command -v nvidia-smi >/dev/null 2>&1; then gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')"; fi
  if [ "$gpus" -gt 0 ]; then echo "$gpus"; else export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"; echo 2; fi
}

# The allocation's first node, as an address: its NodeAddr when Slurm knows the node (several node entries on
# one host, or names that only Slurm resolves), else the name itself.
head_node_address() {
  local head address
  head="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
  address="$(scontrol show node "$head" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)"
  echo "${address:-$head}"
}

# Slurm sends USR1 120 s before the time limit (--signal=B:USR1@120): put the job back in the queue; the
# next start finds RUN_DIR/checkpoints/last and resumes (train --resume auto).
requeue_on_signal() {
  echo "slurm: job $SLURM_JOB_ID got the time-limit warning; requeueing" >&2
  scontrol requeue "$SLURM_JOB_ID"
}

# launch CONFIG [overrides...] -- [torchrun options...]
launch() {
  local config="$1"; shift
  local overrides=()
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do overrides+=("$1"); shift; done
  shift  # the --
  local run_dir="${RUN_DIR:-runs/${SLURM_JOB_NAME:-dfdtrain}}"
  local command=(srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run "$@"
                 -m dfdtrain train --config "$config" --resume auto "run_dir=$run_dir"
                 "logger.wandb.name=${SLURM_JOB_NAME:-dfdtrain}-${SLURM_JOB_ID:-local}" "${overrides[@]}")
  if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "${command[@]}"; echo
    return 0
  fi
  mkdir -p logs
  trap requeue_on_signal USR1
  "${command[@]}" &  # in the background, so the shell can take the signal while training runs
  wait $!
  local status=$?
  if [ "$status" -gt 128 ]; then wait $!; status=$?; fi  # woken by the signal: wait for the real end
  [ "$status" -ne 0 ] && echo "slurm: training exited with $status; rerun with NCCL_DEBUG=INFO for detail" >&2
  return "$status"
}
