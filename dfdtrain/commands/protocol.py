"""dfdtrain protocol: one checkpoint on every test set of a suite; table.md, table.json and a comparison plot."""

from dfdtrain.commands._common import (add_base_weights_argument, add_scoring_arguments, check_scoring_arguments,
                                       print_json)

HELP = "evaluate one checkpoint on every test set of a suite (cross-dataset protocol): table.md/json + plot"


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory (its best checkpoint), a checkpoint folder or an export bundle")
    parser.add_argument("--suite", required=True,
                        help="suite YAML, e.g. configs/protocols/ffpp_c23_cross.yaml; its optional `robustness: "
                             "{types: [...], levels: [...]}` also scores every set under each perturbation "
                             "(robustness.md, robustness.json, robustness.png)")
    parser.add_argument("--out", required=True, help="output folder (table.md, table.json, protocol.png, sets/)")
    parser.add_argument("--root", help="folder that the suite's relative shard patterns are joined to "
                                       "(default: the suite's own root, else the current folder)")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="evaluate only this test set (repeatable)")
    parser.add_argument("--allow-overlap", action="store_true",
                        help="score test sets that share videos or groups with the run's training or validation "
                             "shards (refused by default), marked OVERLAP in the table")
    parser.add_argument("--allow-pipe", action="store_true",
                        help="let the suite file's pipe: shard patterns run their commands (refused by default)")
    add_scoring_arguments(parser)
    add_base_weights_argument(parser)
    parser.add_argument("--json", action="store_true", help="print table.json to stdout")


def run(args):
    from dfdtrain.core.distributed import process_group
    from dfdtrain.core.fileio import check_output_folder
    from dfdtrain.models.bundle import settings_folder
    from dfdtrain.evaluation.protocol import (TABLE_FILES, check_shards, find_leakage, load_suite, refuse_leakage,
                                             run_protocol)
    from dfdtrain.evaluation.robustness import ROBUSTNESS_FILES

    check_scoring_arguments(args)
    check_output_folder(args.out)
    checkpoint = settings_folder(args.checkpoint)  # before joining the process group: fail fast
    suite = load_suite(args.suite, root=args.root, only=args.only, allow_pipe=args.allow_pipe)
    check_shards(suite)
    leakage = find_leakage(checkpoint, suite)
    if not args.allow_overlap:
        refuse_leakage(leakage, suite)
    with process_group(args.device) as context:
        progress = print if context.is_main and not args.json else (lambda line: None)
        table = run_protocol(checkpoint, suite, args.out, context, bootstrap=args.bootstrap,
                             batch_size=args.batch_size, workers=args.workers, decoder=args.decoder,
                             verify=args.verify_shards, threshold=args.threshold, progress=progress,
                             allow_overlap=args.allow_overlap, leakage=leakage, base_weights=args.base_weights)
    if table is None:  # not rank 0
        return 0
    if args.json:
        print_json(table)
    else:
        files = TABLE_FILES + (ROBUSTNESS_FILES if suite.robustness else ())
        print(f"wrote {', '.join(files)} and sets/ to {args.out}")
    return 0
