"""dfdtrain evaluate: score test shards with a trained detector; write metrics, predictions, plots, a report."""

from dfdtrain.commands._common import (add_base_weights_argument, add_perturb_argument, add_scoring_arguments,
                                       check_scoring_arguments, print_json)

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
    add_base_weights_argument(parser)
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero when any video index.json promises was not scored (skipped or "
                             "missing); without it such videos are named in metrics.json and a WARNING line")
    parser.add_argument("--synthesis", choices=["sbi", "vb"], default="",
                        help="also score a synthetic twin of every real video (face shards with landmarks), "
                             "reported apart: metrics.json's synthetic, predictions_synthetic.csv")
    add_perturb_argument(parser)
    parser.add_argument("--json", action="store_true", help="print metrics.json to stdout")


def run(args):
    from dfdtrain.core.distributed import process_group
    from dfdtrain.core.fileio import check_output_folder
    from dfdtrain.evaluation.evaluate import perturbation_summary, resolve_checkpoint, run_evaluation
    from dfdtrain.evaluation.report import calibration_line, format_breakdown, perturbation_line
    from dfdtrain.metrics import format_metrics_table

    check_scoring_arguments(args)
    perturbation_summary(args.perturb)  # a bad --perturb: one line before anything is loaded
    check_output_folder(args.out)
    checkpoint = resolve_checkpoint(args.run_dir, args.checkpoint)  # before joining the process group: fail fast
    with process_group(args.device) as context:
        metrics = run_evaluation(checkpoint, args.shards, args.out, threshold=args.threshold,
                                 batch_size=args.batch_size, workers=args.workers, decoder=args.decoder,
                                 context=context, verify=args.verify_shards, strict=args.strict,
                                 bootstrap=args.bootstrap, base_weights=args.base_weights,
                                 synthesis=args.synthesis, perturb=args.perturb)
    if metrics is None:  # not rank 0: rank 0 reports
        return 0
    if args.json:
        print_json(metrics)
    else:
        print(format_metrics_table(metrics))
        print(format_breakdown(metrics["breakdown"]) if "breakdown" in metrics else metrics["breakdown_note"])
        print(f"calibration: {calibration_line(metrics['calibration'])}")
        if "perturbation" in metrics:
            print(f"perturbation: {perturbation_line(metrics['perturbation'])}")
        accounting = metrics["accounting"]
        unindexed = len(accounting["unindexed"])
        retries = metrics["storage_retries"]["total"]
        print(f"loss {metrics['loss']:.4f}; {accounting['scored']} of the {accounting['promised']} videos index.json "
              f"promises scored ({accounting['skipped']} skipped, {accounting['missing']} missing"
              + (f"; {unindexed} shard(s) without an index.json entry, not checked" if unindexed else "")
              + (f"; {retries} storage fault(s) retried" if retries else "")
              + f"); wrote {', '.join(metrics['files'])} to {args.out}")
    return 0
