"""dfdtrain evaluate: score test shards with a trained detector; write metrics, predictions, plots, a report."""

import json
import sys

HELP = "evaluate a trained detector on shards: metrics.json, predictions.csv, plots and report.md"


def add_arguments(parser):
    parser.add_argument("--run", "--run-dir", dest="run_dir", metavar="RUN_DIR",  # args.run is the command
                        help="run directory (its checkpoints/best or checkpoints/last)")
    parser.add_argument("--checkpoint", default="best",
                        help="best or last (of --run), or a path: a checkpoint folder or a bundle (default best)")
    parser.add_argument("--shards", action="append", required=True,
                        help="shards to evaluate, e.g. 'shards/test-*.tar' (repeatable)")
    parser.add_argument("--out", required=True, help="output folder")
    add_scoring_arguments(parser)
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero when any video index.json promises was not scored (skipped or "
                             "missing); without it such videos are named in metrics.json and a WARNING line")
    parser.add_argument("--json", action="store_true", help="print metrics.json to stdout")


def add_scoring_arguments(parser, evaluation=True):
    """The options of every command that scores shards with a detector (evaluate, protocol, calibrate);
    ``evaluation``: also the threshold, the shard check and the bootstrap."""
    if evaluation:
        parser.add_argument("--threshold", type=float,
                            help="score at or above which a video is called fake (default: the detector's own)")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per batch and rank (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers per rank (default 2)")
    parser.add_argument("--decoder", default="pyav", help="pyav, torchcodec, dali or auto (default pyav)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu or cuda (default cpu)")
    if evaluation:
        parser.add_argument("--no-verify-shards", dest="verify_shards", action="store_false",
                            help="skip checking each shard's sha256 against its index.json before reading (on by "
                                 "default: a corrupt or rewritten shard stops with one line)")
        parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                            help="resamples of the groups (identities, source pairs) for 95%% intervals (default "
                                 "1000; 0: none); fewer than 2 groups of real or of fake videos give none (n/a)")


def check_scoring_arguments(args):
    """One line for a scoring option that cannot work, before any process group or model."""
    from dfdtrain.data.decode.decoders import DECODERS
    from dfdtrain.core.errors import DfdError

    if getattr(args, "threshold", None) is not None and not 0.0 <= args.threshold <= 1.0:
        raise DfdError(f"--threshold must be in [0, 1], not {args.threshold}")
    if args.batch_size < 1 or args.workers < 0 or getattr(args, "bootstrap", 0) < 0:
        raise DfdError("--batch-size must be >= 1, --workers >= 0 and --bootstrap >= 0")
    if args.decoder not in DECODERS:
        raise DfdError(f"--decoder: {DECODERS.unknown_name_message(args.decoder)}")


def run(args):
    from dfdtrain.core.distributed import cleanup, init_distributed
    from dfdtrain.evaluation.evaluate import calibration_line, format_breakdown, resolve_checkpoint, run_evaluation
    from dfdtrain.core.fileio import check_output_folder
    from dfdtrain.metrics import format_metrics_table

    check_scoring_arguments(args)
    check_output_folder(args.out)
    checkpoint = resolve_checkpoint(args.run_dir, args.checkpoint)  # before joining the process group: fail fast
    context = init_distributed(args.device)
    try:
        metrics = run_evaluation(checkpoint, args.shards, args.out, threshold=args.threshold,
                                 batch_size=args.batch_size, workers=args.workers, decoder=args.decoder,
                                 context=context, verify=args.verify_shards, strict=args.strict,
                                 bootstrap=args.bootstrap)
    finally:
        cleanup()
    if metrics is None:  # not rank 0: rank 0 reports
        return 0
    if args.json:
        json.dump(metrics, sys.stdout, indent=2)
        print()
    else:
        print(format_metrics_table(metrics))
        print(format_breakdown(metrics["breakdown"]) if "breakdown" in metrics else metrics["breakdown_note"])
        print(f"calibration: {calibration_line(metrics['calibration'])}")
        accounting = metrics["accounting"]
        unindexed = len(accounting["unindexed"])
        retries = metrics["storage_retries"]["total"]
        print(f"loss {metrics['loss']:.4f}; {accounting['scored']} of the {accounting['promised']} videos index.json "
              f"promises scored ({accounting['skipped']} skipped, {accounting['missing']} missing"
              + (f"; {unindexed} shard(s) without an index.json entry, not checked" if unindexed else "")
              + (f"; {retries} storage fault(s) retried" if retries else "")
              + f"); wrote {', '.join(metrics['files'])} to {args.out}")
    return 0
