#!/usr/bin/env bash
# The GPU acceptance kit's one entry point (benchmarks/gpu/README.md):
#   bash benchmarks/gpu/run.sh OUT_DIR             on the GPU machine: receive the last load, reassemble, install
#                                                  the wheels into /tmp/site, run every step under its budget
#   bash benchmarks/gpu/run.sh --receive           on the GPU machine, every call but the last: keep its load in
#                                                  /root/parts (kept while the machine stays warm)
#   bash benchmarks/gpu/run.sh --dry-run OUT_DIR   on a CPU: check the wheel list, print the plan with each
#                                                  step's budget, run each step's CPU-sized variant
# Options: --wheels FILE (another wheel list), --only STEP,STEP. The work is kit.py's (standard library only).
set -euo pipefail
cd "$(dirname "$0")/../.."
# $PYTHON if set; else this checkout's virtualenv (a dry run here); else python3 (the GPU machine's torch Python).
if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"
elif [ -x .venv/bin/python ]; then
  python=.venv/bin/python
else
  python=python3
fi
exec "$python" benchmarks/gpu/kit.py "$@"
