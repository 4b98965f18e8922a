#!/usr/bin/env bash
# Prepare what the GPU acceptance kit carries, here, in one command (benchmarks/gpu/README.md): download the
# wheels pinned in benchmarks/gpu/wheels.txt for cp312 manylinux x86_64 (pip download --no-deps --only-binary),
# build the one PyPI has only as an sdist (deepspeed), copy the real fixtures the GPU run reads, split the wheels
# over 60 MiB into parts and pack everything into .gpu-carry/load1..N (git-ignored), one load per device call;
# then print the device calls to make.
set -euo pipefail
# run.sh picks the interpreter and hands its arguments to kit.py
exec bash "$(dirname "$0")/run.sh" --prepare "$@"
