"""dfdtrain bench: run the throughput benchmarks of benchmarks/ (each writes JSON; RESULTS.md renders them).

    dfdtrain bench model --quick --out model.json        # one benchmark; arguments go to its script
    dfdtrain bench all --quick --out-dir bench-out       # every benchmark, one JSON each
    dfdtrain bench table                                 # benchmarks/RESULTS.md from benchmarks/results/*.json

The scripts live in the repository's top-level benchmarks/ folder (not in the installed package): it is found
through --benchmarks-dir, else $DFDTRAIN_BENCHMARKS, else beside this package's source, else ./benchmarks.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from dfdtrain.commands._common import OneLineArgumentParser, print_json
from dfdtrain.core.errors import DfdError

HELP = ("run a throughput benchmark (decode, storage, loader, model, train, engine, scaling, face_store, shard, "
        "scale, all) or render the table")

# benchmark name -> its script in benchmarks/; `all` runs them in this order.
BENCHMARKS = {
    "decode": "decode.py",
    "storage": "storage.py",
    "loader": "loader.py",
    "model": "model.py",
    "train": "train.py",
    "engine": "engine.py",
    "scaling": "scaling.py",
    "face_store": "face_store.py",  # original vs face-clip shards (issue 8): bytes, sampled decode, fidelity
    "shard": "shard.py",  # sharding videos/s, stages, 1 vs 2 processes, DFDC projection, vs a PNG store (issue 15)
    "scale": "scale.py",  # every command at 1k-100k videos: seconds per 1k, peak RSS, bytes (issue 36)
}
# Their work runs on the CPU whatever the device (MTCNN at shard time, PNG encoding): no --device, and `all`
# runs them only for a CPU result.
CPU_ONLY = {"storage"}
# Long at their full default sizes (scale: 111,000 videos through every command, ~15 min and ~2 GB of disk on 2
# cores): `all` runs them only with --quick or when --only names them.
QUICK_OR_NAMED = {"scale"}
TABLE_SCRIPT = "results_table.py"


def add_arguments(parser):
    parser.add_argument("--benchmarks-dir", metavar="DIR",
                        help="the benchmarks/ folder (default: $DFDTRAIN_BENCHMARKS, else the source checkout's)")
    parser.add_argument("name", choices=[*BENCHMARKS, "all", "table"],
                        help="the benchmark; 'all' runs every one; 'table' renders benchmarks/RESULTS.md")
    parser.add_argument("args", nargs=argparse.REMAINDER,
                        help="passed to the benchmark's script (see `dfdtrain bench NAME --help`); for all: "
                             "[--quick] [--device auto|cpu|cuda] [--out-dir DIR] [--only a,b] [--json]")


def find_benchmarks_dir(explicit):
    candidates = [explicit] if explicit else [os.environ.get("DFDTRAIN_BENCHMARKS"),
                                              Path(__file__).resolve().parents[2] / "benchmarks",
                                              Path.cwd() / "benchmarks"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "common.py").is_file():
            return Path(candidate).resolve()
    where = explicit or "beside the dfdtrain source or in the current folder"
    raise DfdError(f"benchmarks/ folder not found ({where}): run from a source checkout, set DFDTRAIN_BENCHMARKS "
                   "or pass --benchmarks-dir")


def run_script(folder, script, arguments, stdout=None):
    """Run one benchmark script with this Python; returns its exit status."""
    return subprocess.run([sys.executable, str(folder / script), *arguments], stdout=stdout).returncode


def device_tag(device):
    """'cpu', or the GPU's name as a file-name tag ('NVIDIA H100 80GB HBM3' -> 'h100-80gb-hbm3')."""
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if not torch.cuda.is_available():
        raise DfdError("--device cuda, but torch sees no GPU")
    name = re.sub(r"^nvidia[ -]", "", torch.cuda.get_device_name(0).lower())
    return re.sub(r"[^a-z0-9]+", "-", name).strip("-")


def run_all(folder, arguments):
    parser = OneLineArgumentParser(prog="dfdtrain bench all", description="run every benchmark, one JSON each")
    parser.add_argument("--quick", action="store_true", help="every benchmark's quick mode (CI, a few minutes on CPU)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out-dir", default=str(folder / "results"),
                        help="where NAME_TAG.json files go (default benchmarks/results; TAG: quick, cpu or the GPU)")
    parser.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    parser.add_argument("--json", action="store_true", help="print {name: {path, seconds, status}} at the end")
    options = parser.parse_args(arguments)
    names = options.only.split(",") if options.only else list(BENCHMARKS)
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise DfdError(f"--only: unknown benchmark(s) {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    tag = "quick" if options.quick else device_tag(options.device)
    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in names:
        if name in CPU_ONLY and tag not in ("quick", "cpu"):
            print(f"{name}: skipped (CPU-only work; its result is the CPU run's)", file=sys.stderr)
            continue
        if name in QUICK_OR_NAMED and not options.quick and name not in options.only.split(","):
            print(f"{name}: skipped (long at its full sizes; run `dfdtrain bench {name}` or name it in --only)",
                  file=sys.stderr)
            continue
        out = out_dir / f"{name}_{tag}.json"
        arguments = ["--out", str(out)] + (["--quick"] if options.quick else [])
        if name not in CPU_ONLY:
            arguments += ["--device", options.device]
        started = time.time()
        # the scripts' JSON goes to the file; their stdout would repeat it
        status = run_script(folder, BENCHMARKS[name], arguments, stdout=subprocess.DEVNULL)
        seconds = round(time.time() - started, 1)
        summary[name] = {"path": str(out), "seconds": seconds, "status": status}
        print(f"{name}: {'ok' if status == 0 else f'FAILED (exit {status})'} in {seconds} s -> {out}", file=sys.stderr)
    if options.json:
        print_json(summary)
    failed = [name for name, entry in summary.items() if entry["status"] != 0]
    if failed:
        raise DfdError(f"benchmark(s) failed: {', '.join(failed)} (their output is above)")
    return 0


def run(args):
    folder = find_benchmarks_dir(args.benchmarks_dir)
    if args.name == "all":
        return run_all(folder, args.args)
    if args.name == "table":
        return run_script(folder, TABLE_SCRIPT, args.args)
    return run_script(folder, BENCHMARKS[args.name], args.args)
