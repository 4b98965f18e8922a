"""dfdtrain index: a dataset folder -> manifest.jsonl with leakage-free, group-level splits."""

import sys

from dfdtrain.commands._common import print_json
from dfdtrain.data.ingest.datasets import DATASETS, IndexOptions
from dfdtrain.data.ingest.manifest import format_summary, index_dataset, split_warning, summary_path
from dfdtrain.data.ingest.splits import LEAKAGE_POLICIES
from dfdtrain.core.errors import DfdError

HELP = "index a dataset folder (dfdc, celebdf, ffpp, folder) into a manifest.jsonl with group-level splits"


def add_arguments(parser):
    parser.add_argument("--dataset", required=True, choices=DATASETS.names(), help="dataset layout")
    parser.add_argument("--root", required=True, help="dataset root folder")
    parser.add_argument("--out", required=True, help="manifest to write (JSON lines)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="share of videos for val (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.1,
                        help="share of videos for test when the dataset has no official test split (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the group split (default 0)")
    parser.add_argument("--no-official-splits", action="store_true",
                        help="ignore the dataset's own split files and split every group by --seed")
    parser.add_argument("--leakage", choices=LEAKAGE_POLICIES, default="error",
                        help="when a group would be in two splits: refuse (error, default), drop its non-test "
                             "videos (exclude), or keep and mark them (report)")
    parser.add_argument("--ffpp-splits", help="FF++: folder with train/val/test.json (default: root/splits or root)")
    parser.add_argument("--compression", action="append", choices=("raw", "c23", "c40"),
                        help="FF++: keep only this compression (repeatable; default: all found)")
    parser.add_argument("--celebdf-test-list", help="Celeb-DF: List_of_testing_videos.txt (default: under root)")
    parser.add_argument("--celebdf-group-by", choices=("identity", "video"), default="identity",
                        help="Celeb-DF leakage group: identity (default) or source video")
    parser.add_argument("--group-regex", help="folder: group = first capture group of this regex on the path")
    parser.add_argument("--name", help="folder: the rows' dataset name and key prefix, a short identifier "
                                       "(default: folder)")
    parser.add_argument("--face-boxes", metavar="FILE",
                        help="face boxes you already have, JSON lines {path, frames, boxes} (see README): stored "
                             "in the rows as shard --faces stores detected ones, so clip.crop: face needs no "
                             "detector")
    parser.add_argument("--workers", type=int, default=1, help="probe processes (default 1)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args):
    if not 0 <= args.val_fraction < 1 or not 0 <= args.test_fraction < 1 or args.val_fraction + args.test_fraction >= 1:
        raise DfdError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    if args.name is not None and args.dataset != "folder":
        raise DfdError(f"--name applies to --dataset folder only ({args.dataset} rows are named {args.dataset})")
    options = IndexOptions(
        official_splits=not args.no_official_splits, ffpp_splits=args.ffpp_splits,
        celebdf_test_list=args.celebdf_test_list, celebdf_group_by=args.celebdf_group_by,
        compressions=tuple(args.compression or ()), group_regex=args.group_regex, name=args.name)
    summary = index_dataset(args.dataset, args.root, args.out, options, val_fraction=args.val_fraction,
                            test_fraction=args.test_fraction, seed=args.seed, leakage=args.leakage,
                            workers=max(1, args.workers), progress=not args.quiet, face_boxes=args.face_boxes)
    if not summary["videos"]:  # nothing was written
        raise DfdError(f"{args.root}: no usable {args.dataset} videos found "
                       f"({len(summary['skipped'])} skipped: {summary['skipped_by_reason']})")
    summary = {**summary, "manifest": args.out, "summary_file": summary_path(args.out)}
    if args.json:
        print_json(summary)
        if split_warning(summary):  # stdout is the JSON alone: the warning still reaches the user
            print(split_warning(summary), file=sys.stderr)
    else:
        print(format_summary(summary))
        print(f"wrote {args.out} and {summary_path(args.out)}")
    return 0
