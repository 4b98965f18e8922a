# Shared by the launch scripts (sourced, not run): defaults that keep a training job sane.
#   OMP_NUM_THREADS  1 per process unless set (N processes x all cores each would thrash the CPU)
#   PYTHON           the interpreter that has dfdtrain (see python.sh: an activated venv, the repo's .venv, ...)
#   NCCL_DEBUG       WARN by default; a failed run on GPUs is told how to rerun with INFO
#   DS_ACCELERATOR   cpu on a machine without GPUs (DeepSpeed's CPU accelerator, gloo)
#   DRY_RUN=1        print the command instead of running it
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"  # a dead rank fails the job, no hang
source "$(dirname "${BASH_SOURCE[0]}")/python.sh"
PYTHON="$(find_dfdtrain_python)" || exit 2

gpu_count() {
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L 2>/dev/null | grep -c '^GPU' ; else echo 0; fi
}

if [ "$(gpu_count)" -eq 0 ]; then
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
fi

run_or_print() {
  if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "$@"; echo
    return 0
  fi
  "$@"
  local status=$?
  if [ "$status" -ne 0 ] && [ "$(gpu_count)" -gt 0 ]; then
    echo "launch: ${LAUNCH_WHAT:-training} exited with status $status; its first error line is above (for NCCL detail, rerun" \
         "with NCCL_DEBUG=INFO)" >&2
  elif [ "$status" -ne 0 ]; then
    echo "launch: ${LAUNCH_WHAT:-training} exited with status $status; its first error line is above" >&2
  fi
  return "$status"
}
