"""dfdtrain calibrate: fit a detector's temperature and decision threshold on validation shards, in place."""

from dfdtrain.commands._common import (add_base_weights_argument, add_scoring_arguments, check_scoring_arguments,
                                       print_json)
from dfdtrain.metrics.calibration import THRESHOLD_RULE_NAMES

HELP = "fit temperature scaling and the decision threshold of a trained detector on validation shards"


def add_arguments(parser):
    parser.add_argument("--checkpoint", required=True,
                        help="a run directory (its best checkpoint), a checkpoint folder or a bundle: its "
                             "detector.json is rewritten with the calibration")
    parser.add_argument("--shards", action="append", required=True,
                        help="validation shards, e.g. 'shards/val-*.tar' (repeatable; never a test split)")
    parser.add_argument("--threshold-rule", default="fixed", choices=THRESHOLD_RULE_NAMES,
                        help="how the threshold is chosen on the calibrated validation scores: fixed (--threshold), "
                             "eer (false positive rate = false negative rate) or max_f1 (default fixed)")
    parser.add_argument("--threshold", type=float,
                        help="the fixed threshold (default: the detector's own when it was fixed or a fallback, "
                             "else 0.5)")
    parser.add_argument("--no-temperature", dest="temperature", action="store_false",
                        help="choose the threshold only; keep P(fake) = sigmoid(logit)")
    parser.add_argument("--force", action="store_true",
                        help="when the shards hold fewer than 2 videos of a class (nothing can be fitted), write the "
                             "fallback anyway: temperature 1 and the fixed threshold, labelled threshold_rule "
                             "'fallback' (without it: exit 2, nothing written)")
    add_scoring_arguments(parser, evaluation=False)
    add_base_weights_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the calibration as JSON")


def run(args):
    from dfdtrain.metrics.calibration import FALLBACK_RULE, CalibrationNotFitted, describe, fit_calibration
    from dfdtrain.config import config_to_dict
    from dfdtrain.data.shards.catalog import test_split_overlap
    from dfdtrain.data.storage import expand_shards, redact
    from dfdtrain.core.distributed import process_group
    from dfdtrain.core.errors import DfdError
    from dfdtrain.evaluation.evaluate import score_shards
    from dfdtrain.models.bundle import calibrated, settings_folder, write_settings

    check_scoring_arguments(args)
    folder = settings_folder(args.checkpoint)  # before joining the process group: fail fast
    overlap = test_split_overlap(expand_shards(args.shards))
    if overlap:
        raise DfdError(f"--shards: {overlap}; calibrate on validation data only")
    with process_group(args.device) as context:
        scored = score_shards(folder, args.shards, args.batch_size, args.workers, args.decoder, context,
                              base_weights=args.base_weights)
    if scored is None:  # not rank 0: rank 0 writes and reports
        return 0
    settings, _, records, skipped, _, _ = scored
    threshold = args.threshold
    if threshold is None:
        # a fallback's threshold was a configured one too
        threshold = settings.threshold if settings.calibration.threshold_rule in ("fixed", FALLBACK_RULE) else 0.5
    try:
        calibration = fit_calibration([record["video_logit"] for record in records],
                                      [record["label"] for record in records],
                                      args.threshold_rule, threshold, calibrate=args.temperature,
                                      fitted_on=f"{len(records)} videos of {', '.join(map(redact, args.shards))} "
                                                "(dfdtrain calibrate)", fallback=args.force)
    except CalibrationNotFitted as error:
        raise DfdError(f"{folder}: {error} in --shards; nothing written (detector.json keeps temperature "
                       f"{settings.calibration.temperature:.4g}, threshold {settings.threshold:.4g}); --force writes "
                       f"the fallback: temperature 1, threshold {threshold:.4g}") from None
    write_settings(calibrated(settings, calibration), folder)
    if args.json:
        print_json({"detector": str(folder), "skipped": len(skipped), **config_to_dict(calibration)})
    else:
        print(f"{folder}: {describe(calibration)}" + (f"; {len(skipped)} video(s) skipped" if skipped else ""))
    return 0
