"""dfdtrain demo: the README main job on the built-in default data.

synth -> index (folder layout, group = person) -> shard, then a printed summary and DIR/report.json.
"""

import json
import time
from pathlib import Path

from dfdtrain.data.datasets import IndexOptions
from dfdtrain.data.index import build_manifest, format_summary, write_manifest
from dfdtrain.data.shard import format_index, write_shards
from dfdtrain.data.synth import synthesize
from dfdtrain.fileio import write_json

HELP = "run the main job end to end on a small generated dataset (synth -> index -> shard)"


def add_arguments(parser):
    parser.add_argument("--out", default="demo", help="run folder (default ./demo)")
    parser.add_argument("--count", type=int, default=48, help="generated videos (default 48)")
    parser.add_argument("--frames", type=int, default=24, help="frames per video (default 24)")
    parser.add_argument("--size", default="128x128", help="frame size WxH (default 128x128)")
    parser.add_argument("--codec", choices=("h264", "vp9"), default="h264", help="video codec (default h264)")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, splits and shard order")
    parser.add_argument("--workers", type=int, default=2, help="processes for probing and sharding (default 2)")
    parser.add_argument("--json", action="store_true", help="print report.json to stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args):
    from dfdtrain.commands.synth import parse_frame_size

    started = time.time()
    out = Path(args.out)
    width, height = parse_frame_size(args.size)
    progress = not args.quiet
    synth = synthesize(out / "data", count=args.count, frames=args.frames, width=width, height=height,
                       codec=args.codec, seed=args.seed, progress=progress)
    rows, summary = build_manifest("folder", out / "data", IndexOptions(), val_fraction=0.2, test_fraction=0.2,
                                   seed=args.seed, workers=args.workers, progress=progress)
    manifest = out / "manifest.jsonl"
    write_manifest(manifest, rows, summary)
    index = write_shards(manifest, out / "shards", target_bytes=256 * 1024, seed=args.seed,
                         workers=args.workers, progress=progress)
    report = {
        "stage": "data",
        "data": str(out / "data"),
        "manifest": str(manifest),
        "shards": str(out / "shards"),
        "videos": summary["videos"],
        "groups": summary["groups"],
        "splits": index["splits"],
        "skipped": len(summary["skipped"]) + len(index["skipped"]),
        "resumed_shards": index["totals"]["resumed_shards"],
        "synth_seconds": synth["seconds"],
        "seconds": round(time.time() - started, 2),
    }
    write_json(out / "report.json", report)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_summary(summary))
        print(format_index(index))
        print(f"report: {out / 'report.json'} ({report['seconds']} s)")
    return 0
