"""dfdtrain train: train a detector from a YAML config (+ key.sub=value overrides), on 1..N processes.

Start it with torchrun (`torchrun --nproc_per_node 8 -m dfdtrain train --config C.yaml`), the deepspeed
launcher or srun; alone it runs as a single process.
"""

import sys

HELP = "train a detector (DeepSpeed or DDP) from a YAML config; run under torchrun/deepspeed/srun for several processes"


def add_arguments(parser):
    parser.add_argument("--config", help="experiment YAML (see configs/)")
    parser.add_argument("--resume", choices=("auto", "never", "must"), default="auto",
                        help="continue from RUN_DIR/checkpoints/last: when present (auto, default), never, or must")
    parser.add_argument("--json", action="store_true", help="print report.json at the end (rank 0)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="config overrides, key.sub=value")


def run(args):
    from dfdtrain.checks import load_experiment
    from dfdtrain.commands._common import print_json
    from dfdtrain.core.text import format_number
    from dfdtrain.training.trainer import Trainer

    config = load_experiment(args.config, args.overrides)
    trainer = Trainer(config, progress=not args.quiet)
    if trainer.context.is_main:
        warning = validation_overlap(config.data)
        if warning:
            print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    report = trainer.train(resume=args.resume)
    if report is not None:
        if args.json:
            print_json(report)
        elif not trainer.complete:  # a finished run said so in its one line
            video = report["val"]["video"]
            print(f"done: {report['epochs_run']} epochs, {report['steps']} steps on {report['world_size']} "
                  f"process(es) with {report['engine']}; best val video AUC {format_number(video.get('auc'))} "
                  f"(epoch {report['best_epoch']}); checkpoint {report['checkpoint']}")
    return 0


def validation_overlap(data):
    """One line when ``data.val_shards`` share videos or groups with the training shards (``data.train_shards`` or
    every ``data.train_sources`` entry's; validation would then pick and calibrate the checkpoint on what it
    trained on), else None."""
    from dfdtrain.data.loading.sources import training_urls
    from dfdtrain.data.shards.overlap import overlap, sample_identities
    from dfdtrain.data.storage import expand_shards
    from dfdtrain.core.errors import DfdError

    if not data.val_shards or not (data.train_shards or data.train_sources):
        return None
    training = ("data.train_shards", data.train_shards) if data.train_shards else \
        ("data.train_sources", ", ".join(source.shards for source in data.train_sources))
    try:
        found = overlap(sample_identities(expand_shards(data.val_shards)), sample_identities(training_urls(data)))
    except DfdError:  # shards the loaders cannot read say so themselves
        return None
    if not found:
        return None
    return (f"data.val_shards ({data.val_shards}) {found.describe()} with {training[0]} ({training[1]}): "
            "validation metrics, early stopping, the best checkpoint and its calibration are then measured on "
            "training data")
