"""dfdtrain demo: the README main job on the built-in default data, end to end on CPU.

synth -> index (folder layout, group = person) -> shard -> a 2-process DeepSpeed training job under
torchrun (configs/demo.yaml) -> validation metrics printed and DIR/report.json written.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from dfdtrain.data.ingest.datasets import IndexOptions
from dfdtrain.data.ingest.manifest import format_summary, index_dataset
from dfdtrain.data.shards.summary import format_index
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.demo.synth import synthesize
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json, write_json

HELP = "run the main job end to end on a generated dataset: synth -> index -> shard -> 2-process training"
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def add_arguments(parser):
    parser.add_argument("--out", default="demo", help="run folder (default ./demo)")
    parser.add_argument("--count", type=int, default=256, help="generated videos (default 256)")
    parser.add_argument("--frames", type=int, default=24, help="frames per video (default 24)")
    parser.add_argument("--size", default="128x128", help="frame size WxH (default 128x128)")
    parser.add_argument("--codec", choices=("h264", "vp9"), default="h264", help="video codec (default h264)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, splits, shard order and training")
    parser.add_argument("--workers", type=int, default=2, help="processes for probing and sharding (default 2)")
    parser.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="training config (default configs/demo.yaml)")
    parser.add_argument("--no-train", action="store_true", help="stop after sharding")
    parser.add_argument("--json", action="store_true", help="print report.json to stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="training config overrides, key.sub=value")


def run_training(args, out):
    """torchrun --nproc_per_node N -m dfdtrain train ... (gloo and DeepSpeed's CPU accelerator on a CPU)."""
    shards = out / "shards"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "dfdtrain", "train", "--config", args.config, "--resume", "never",
               f"data.train_shards={shards}/train-*.tar", f"data.val_shards={shards}/val-*.tar",
               f"run_dir={out / 'run'}", f"seed={args.seed}", *args.overrides]
    if args.quiet:
        command.append("--quiet")
    environment = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    environment.setdefault("DS_ACCELERATOR", "cpu")
    # with --json, stdout carries only the report: the training job's own output goes to stderr
    result = subprocess.run(command, env=environment, stdout=sys.stderr if args.json else None)
    if result.returncode != 0:
        raise DfdError(f"training failed (exit {result.returncode}); see the output above and {out / 'run'}")
    return read_json(out / "run" / "report.json")


def run(args):
    from dfdtrain.commands._common import parse_frame_size, print_json

    started = time.time()
    out = Path(args.out).resolve()
    width, height = parse_frame_size(args.size)
    progress = not args.quiet
    synth = synthesize(out / "data", count=args.count, frames=args.frames, width=width, height=height,
                       codec=args.codec, seed=args.seed, progress=progress)
    manifest = out / "manifest.jsonl"
    summary = index_dataset("folder", out / "data", manifest, IndexOptions(), val_fraction=0.2, test_fraction=0.2,
                            seed=args.seed, workers=args.workers, progress=progress)
    index = write_shards(manifest, out / "shards", target_bytes=256 * 1024, seed=args.seed,
                         workers=args.workers, progress=progress)
    if not args.json:
        print(format_summary(summary))
        print(format_index(index))
    report = {
        "data": str(out / "data"), "manifest": str(manifest), "shards": str(out / "shards"),
        "videos": summary["videos"], "groups": summary["groups"], "splits": index["splits"],
        "skipped": len(summary["skipped"]) + len(index["skipped"]),
        "resumed_shards": index["totals"]["resumed_shards"], "synth_seconds": synth["seconds"],
    }
    if not args.no_train:
        training = run_training(args, out)
        report.update({key: training[key] for key in ("engine", "world_size", "checkpoint", "val", "best_epoch",
                                                      "epochs_run", "throughput")})
        report["run"] = str(out / "run")
    report["seconds"] = round(time.time() - started, 1)
    write_json(out / "report.json", report)
    if args.json:
        print_json(report)
    else:
        auc = report.get("val", {}).get("video", {}).get("auc")
        print(f"report: {out / 'report.json'} ({report['seconds']} s)" +
              (f"; validation video AUC {auc:.3f} ({report['engine']}, {report['world_size']} processes)"
               if auc is not None else ""))
    return 0
