"""dfdtrain shard: manifest.jsonl -> WebDataset tar shards (original bytes) + DALI indexes + index.json."""

import json
import sys

from dfdtrain.data.shard import DEFAULT_TARGET_BYTES, format_index, write_shards
from dfdtrain.errors import DfdError

HELP = "write WebDataset tar shards (<split>-%%06d.tar) of the original videos from a manifest"
_UNITS = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_size(text):
    """'1G', '300M', '65536' -> bytes."""
    text = str(text).strip().lower().removesuffix("b")
    try:
        if text and text[-1] in _UNITS:
            return int(float(text[:-1]) * _UNITS[text[-1]])
        return int(text)
    except ValueError:
        raise DfdError(f"--shard-size: {text!r} is not a size like 1G, 300M or 65536") from None


def add_arguments(parser):
    parser.add_argument("--manifest", required=True, help="manifest.jsonl from 'dfdtrain index'")
    parser.add_argument("--out", required=True, help="output folder for the shards and index.json")
    parser.add_argument("--shard-size", default=str(DEFAULT_TARGET_BYTES),
                        help="target bytes per shard, e.g. 1G (default) or 300M")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample order across shards (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="processes that read, check and detect faces")
    parser.add_argument("--faces", choices=("none", "mtcnn"), default="none",
                        help="detect faces at shard time and store per-frame boxes (default none)")
    parser.add_argument("--face-frames", type=int, default=16, help="frames per video to run the face detector on")
    parser.add_argument("--allow-leakage", action="store_true", help="shard a manifest whose groups span splits")
    parser.add_argument("--json", action="store_true", help="print index.json's content as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    if args.workers < 1 or args.face_frames < 1:
        raise DfdError("--workers and --face-frames must be at least 1")
    index = write_shards(args.manifest, args.out, target_bytes=parse_size(args.shard_size), seed=args.seed,
                         workers=args.workers, face_detector=None if args.faces == "none" else args.faces,
                         face_frames=args.face_frames, allow_leakage=args.allow_leakage, progress=not args.quiet)
    if args.json:
        json.dump(index, sys.stdout, indent=2)
        print()
    else:
        print(format_index(index))
        print(f"wrote {args.out}/index.json")
    return 0
