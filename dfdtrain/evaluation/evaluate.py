"""Evaluate a trained detector on test shards: metrics, per-video predictions, plots and a markdown report.

``run_evaluation(checkpoint, shards, out_dir)`` scores every video of the shards once (split across ranks
under torchrun, gathered on rank 0) and writes into ``out_dir`` on rank 0:

* ``metrics.json``: video-level metrics of the temporal head and of every frame-aggregation rule side by
  side, frame-level metrics, the loss, counts, the checkpoint, the skipped samples, the ``accounting`` of
  scored + skipped + missing against the shards' index.json, and (when the shards mix datasets or FF++
  manipulation methods) the AUC per dataset and per method under ``breakdown``;
* ``predictions.csv``: one row per video (head score, each rule's score, the frame scores);
* ``roc.png``, ``pr.png``, ``calibration.png``, ``confusion.png``, ``histogram.png`` (+ ``breakdown.png``);
* ``report.md``: the above in one page.

``perturb="jpeg:3"`` (``evaluate --perturb``): every video degraded by one robustness perturbation
(``dfdtrain.data.perturb``) at one level in the loader's workers (``data.loading.degrade.FixedPerturbation``: h264
re-encodes the source bytes, the others change the decoded frames), recorded as ``metrics["perturbation"]``
(``perturbation_summary``); level 0 is the identity, the clean numbers exactly.

This module scores and computes; ``plots`` draws the figures, ``report`` writes predictions.csv and report.md.

Every score is on the verdict's scale: the head's P(fake) and each frame's are calibrated with the detector's
temperature (sigmoid(logit / T), as ``predict`` reports them), so the threshold, which was chosen on calibrated
scores, means the same for the head, for each frame's vote in ``majority``, for the other rules and the frame
level. Bootstrap intervals need at least 2 groups of real and 2 of fake videos (``metrics.interval_problem``).
"""

import collections
import sys
from pathlib import Path

import numpy as np
import torch

from dfdtrain.config import DataConfig, config_to_dict
from dfdtrain.core.distributed import DistributedContext, gather_to_rank0, raise_together
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import check_output_folder, write_json
from dfdtrain.data import storage
from dfdtrain.data.loading.degrade import FixedPerturbation
from dfdtrain.data.loading.loader import VideoLoader, expand_shards
from dfdtrain.data.perturb import PERTURBATIONS, parse_perturbation
from dfdtrain.data.shards.catalog import reconcile, verify_shards
from dfdtrain.evaluation.plots import (plot_breakdown, plot_calibration, plot_confusion, plot_histogram,
                                       plot_precision_recall, plot_roc)
from dfdtrain.evaluation.report import accounting_line, write_predictions, write_report
from dfdtrain.evaluation.scoring import records_loss, score_videos, split_synthetic
from dfdtrain.metrics import (REPORTED_RULES, aggregate, bootstrap_intervals, evaluate_predictions,
                              expected_calibration_error, groups_per_class, interval_problem, log_loss, roc_auc,
                              synthetic_metrics)
from dfdtrain.metrics.calibration import describe as describe_calibration
from dfdtrain.models.bundle import load_detector
from dfdtrain.models.detector import detector_score_kind
from dfdtrain.models.heads import SCORE_KINDS


# ---------------------------------------------------------------------------------------------- inputs


def resolve_checkpoint(run_dir=None, checkpoint="best"):
    """The checkpoint folder to load: RUN_DIR/checkpoints/<best|last>, or ``checkpoint`` as a path."""
    if checkpoint in ("best", "last"):
        if run_dir is None:
            raise DfdError(f"--checkpoint {checkpoint} needs --run RUN_DIR")
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise DfdError(f"{run_dir}: run directory not found")
        path = run_dir / "checkpoints" / checkpoint
        if not path.is_dir():
            raise DfdError(f"{run_dir}: no checkpoints/{checkpoint} in this run directory")
        return path
    path = Path(checkpoint)
    if not path.exists():
        raise DfdError(f"{path}: checkpoint not found")
    return path


def perturbation_summary(perturb):
    """``metrics["perturbation"]`` of a "TYPE:LEVEL" spec: {"spec", "type", "level", "parameter" (its meaning),
    "value" (at that level; None at level 0, the identity)}; None for None or "" (clean). A bad spec is one
    line (DfdError)."""
    if perturb is None or perturb == "":
        return None
    name, level = parse_perturbation(perturb)
    perturbation = PERTURBATIONS.get(name)
    return {"spec": f"{name}:{level}", "type": name, "level": level, "parameter": perturbation.parameter,
            "value": perturbation.value(level) if level else None}


def evaluation_loader(settings, shards, batch_size, workers, decoder, context, synthesis="", degrade=None):
    """A loader that sees every video once, each made into the clip the detector was trained on (and, with
    ``synthesis``, each real one also into its synthetic twin: ``data.val_synthesis``). ``degrade``: a
    ``data.loading.degrade`` object applied to every video in the workers (``FixedPerturbation``)."""
    data = DataConfig(batch_size=batch_size, num_workers=workers, decoder=decoder, val_synthesis=synthesis)
    return VideoLoader(shards, settings.clip, data, train=False, device=context.device, rank=context.rank,
                       world_size=context.world_size, degrade=degrade)


def single_process_context(device="cpu"):
    return DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device(device), backend="gloo")


# ---------------------------------------------------------------------------------------------- scores


def video_scores(record, threshold=0.5):
    """{score name: P(fake)} of one video: the head's score and each rule's aggregate of its frame scores (at the
    verdict's ``threshold``: each frame's vote in ``majority``)."""
    scores = {"head": record["video_score"]}
    for rule in REPORTED_RULES:
        scores[rule] = float(aggregate(record["frame_scores"], rule, threshold=threshold))
    return scores


def _auc_or_none(labels, scores):
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return None  # AUC needs both classes
    return roc_auc(labels, np.asarray(scores, dtype=np.float64))


def breakdown(records, score_name="head"):
    """AUC per dataset and per manipulation method; a method's fakes are ranked against all the reals of
    their dataset (FF++'s reals have no method), the usual per-method protocol."""
    by_dataset, by_method = {}, {}
    datasets = sorted({record["dataset"] or "unknown" for record in records})
    for dataset in datasets:
        members = [record for record in records if (record["dataset"] or "unknown") == dataset]
        labels = [record["label"] for record in members]
        by_dataset[dataset] = {"videos": len(members), "real": labels.count(0), "fake": labels.count(1),
                               "auc": _auc_or_none(labels, [record["scores"][score_name] for record in members])}
        reals = [record for record in members if record["label"] == 0]
        methods = sorted({record["method"] for record in members if record["label"] == 1 and record["method"]})
        for method in methods:
            fakes = [record for record in members if record["label"] == 1 and record["method"] == method]
            pair = reals + fakes
            name = method if len(datasets) == 1 else f"{dataset}/{method}"
            by_method[name] = {"dataset": dataset, "real": len(reals), "fake": len(fakes),
                               "auc": _auc_or_none([record["label"] for record in pair],
                                                   [record["scores"][score_name] for record in pair])}
    return {"score": score_name, "dataset": by_dataset, "method": by_method}


def no_breakdown_reason(records):
    """Why a per-dataset / per-method breakdown would compare nothing (one dataset and at most one manipulation
    method), or None when it has something to compare."""
    datasets = sorted({record["dataset"] or "unknown" for record in records})
    methods = sorted({record["method"] for record in records if record["label"] == 1 and record["method"]})
    if len(datasets) > 1 or len(methods) > 1:
        return None
    method = f"one manipulation method ({methods[0]})" if methods else "no manipulation methods in the metadata"
    return f"no breakdown: one dataset ({datasets[0]}) and {method}, so it would repeat the overall AUC"


# ---------------------------------------------------------------------------------------------- evaluation


def verify_on_every_rank(shard_paths, context):
    """Each rank checks its share of the shards' sha256 against index.json; a mismatch anywhere stops every rank
    with the same line."""
    problem = None
    try:
        verify_shards(shard_paths[context.rank::context.world_size])
    except DfdError as error:
        problem = str(error)
    problems = gather_to_rank0([problem] if problem else [])
    raise_together(problems[0] if problems else None)


def score_shards(checkpoint, shards, batch_size=8, workers=2, decoder="pyav", context=None, verify=True,
                 base_weights=None, synthesis="", perturb=None):
    """Every rank scores its share of ``shards`` with the raw detector at ``checkpoint``; rank 0 gets
    ``(settings, shard paths, records sorted by key, skipped + missing samples, accounting, storage retries)``,
    the other ranks None. Stops with one line when no video could be scored. ``synthesis`` (sbi, vb): the
    records also hold each real video's synthetic twin (``synthetic``: True), outside the accounting.
    ``perturb`` ("TYPE:LEVEL"): every video degraded so (checked before anything is loaded; level 0: none)."""
    summary = perturbation_summary(perturb)  # a bad spec: one line, before the model or the shards
    degrade = FixedPerturbation(summary["spec"]) if summary and summary["level"] else None
    context = context or single_process_context()
    shard_paths = expand_shards(shards)
    model, settings = load_detector(checkpoint, device=context.device, base_weights=base_weights)
    if verify:
        verify_on_every_rank(shard_paths, context)
    loader = evaluation_loader(settings, shard_paths, batch_size, workers, decoder, context, synthesis, degrade)
    records = gather_to_rank0(score_videos(model, loader, context.device))
    skipped = gather_to_rank0(loader.skipped)
    retries = gather_to_rank0([dict(loader.io_faults + collections.Counter(storage.take_fault_counts()))])
    if records is None:  # not rank 0
        return None
    storage_retries = sum((collections.Counter(counts) for counts in retries), collections.Counter())
    accounting = reconcile(shard_paths, split_synthetic(records)[0], skipped)
    skipped += accounting["missing_samples"]  # named with the skipped, reason "missing"
    if not records:
        reasons = "; ".join(f"{item['key'] or item['shard']}: {item['reason']}" + (f" ({item['detail']})" if
                            item.get("detail") else "") for item in skipped[:2])
        raise DfdError(f"{storage.redact(shards) if isinstance(shards, str) else shards}: no video could be scored "
                       f"({len(skipped)} skipped" +
                       (f"; first: {reasons}" if reasons else "") + ")")
    records.sort(key=lambda record: record["key"])
    return settings, shard_paths, records, skipped, accounting, storage_retries


def calibration_summary(records, calibration):
    """On these videos: the log-loss and ECE of the raw and of the calibrated head score, and the temperature
    and threshold the detector carries (fitted on validation)."""
    labels = [record["label"] for record in records]
    raw = [record["video_score_raw"] for record in records]
    calibrated = [record["video_score"] for record in records]
    return {**config_to_dict(calibration), "description": describe_calibration(calibration),
            "log_loss_raw": log_loss(labels, raw), "log_loss": log_loss(labels, calibrated),
            "ece_raw": expected_calibration_error(labels, raw), "ece": expected_calibration_error(labels, calibrated)}


def interval_metrics(records, threshold, resamples, confidence=0.95):
    """95% bootstrap intervals of the video-level (head score) and frame-level metrics, resampling groups; every
    interval None, and ``problem`` saying why, with fewer than 2 groups of real or of fake videos."""
    groups = [record["group"] for record in records]
    counts = groups_per_class([record["label"] for record in records], groups)
    frame_counts = [len(record["frame_scores"]) for record in records]
    video = bootstrap_intervals([record["label"] for record in records], [record["video_score"] for record in records],
                                groups, threshold, resamples, confidence)
    frame = bootstrap_intervals(np.repeat([record["label"] for record in records], frame_counts),
                                np.concatenate([record["frame_scores"] for record in records]),
                                np.repeat(groups, frame_counts), threshold, resamples, confidence)
    return {"resamples": resamples, "confidence": confidence, "by": "group", "groups": counts["total"],
            "groups_by_class": {"real": counts["real"], "fake": counts["fake"]}, "problem": interval_problem(counts),
            "video": video, "frame": frame}


def run_evaluation(checkpoint, shards, out_dir, threshold=None, batch_size=8, workers=2, decoder="pyav",
                   context=None, verify=True, strict=False, bootstrap=1000, base_weights=None, synthesis="",
                   perturb=None):
    """Score ``shards`` with the detector at ``checkpoint`` and write the evaluation into ``out_dir``.

    Every rank scores its share; rank 0 gathers the records and writes the files. Returns the metrics dict
    on rank 0 and None on the other ranks. ``threshold`` defaults to the one the detector carries. The head's
    P(fake) is calibrated with the detector's temperature (``metrics["calibration"]`` compares raw and
    calibrated log-loss and ECE); ``bootstrap`` resamples of the groups give 95% intervals (0: none).

    Every video the shards' index.json promises is accounted for (``metrics["accounting"]``): scored, skipped
    with its reason, or named missing (a truncated or corrupt tar). ``verify``: first check each shard's sha256
    against index.json (a mismatch stops with one line). ``strict``: a video not scored is an error (after the
    files are written) instead of a warning line. ``synthesis`` (sbi, vb; shards with landmarks): each real video
    also gets a synthetic twin, scored and reported apart (``metrics["synthetic"]``, real videos against their
    twins; ``predictions_synthetic.csv``); every other number covers the real data only. ``perturb``
    ("TYPE:LEVEL", e.g. "jpeg:3"; None: clean): every video degraded by that robustness perturbation,
    recorded as ``metrics["perturbation"]`` (``perturbation_summary``); a bad spec is one line before scoring.
    """
    perturbation = perturbation_summary(perturb)  # a bad spec: one line before anything else
    check_output_folder(out_dir)
    scored = score_shards(checkpoint, shards, batch_size, workers, decoder, context, verify, base_weights,
                          synthesis, perturb)
    if scored is None:  # not rank 0
        return None
    settings, shard_paths, records, skipped, accounting, storage_retries = scored
    threshold = float(settings.threshold if threshold is None else threshold)
    for record in records:  # every score on the verdict's scale: calibrated, as the threshold was chosen
        record["video_score_raw"] = record["video_score"]
        record["video_score"] = float(settings.calibration.probability(record["video_logit"]))
        record["frame_scores_raw"] = record["frame_scores"]
        record["frame_scores"] = settings.calibration.probability(record["frame_logits"]).tolist()
        record["scores"] = video_scores(record, threshold)
    records, twins = split_synthetic(records)

    metrics = evaluate_predictions(records, threshold=threshold, rules=REPORTED_RULES)
    if twins:
        metrics["synthetic"] = synthetic_metrics(records, twins, threshold)
    if perturbation is not None:  # absent on clean videos
        metrics["perturbation"] = perturbation
    kind = detector_score_kind(settings.model)
    labels = [record["label"] for record in records]
    metrics.update({
        "loss": records_loss(records),
        "threshold": threshold,
        "calibration": calibration_summary(records, settings.calibration),
        "checkpoint": str(checkpoint),
        "shards": [storage.redact(path) for path in shard_paths],
        # transient storage faults (remote shards) that were retried, by kind, over every rank
        "storage_retries": {"total": sum(storage_retries.values()), **dict(storage_retries)},
        "labels": {"real": labels.count(0), "fake": labels.count(1)},
        # the groups (identities, source pairs) the videos come from: those holding real, fake videos
        "groups": groups_per_class(labels, [record["group"] for record in records]),
        "skipped": {"count": len(skipped), "samples": skipped},
        "accounting": {**{name: value for name, value in accounting.items() if name != "missing_samples"},
                       "problem": accounting_line(accounting)},
        "settings": {"name": settings.name, "clip": config_to_dict(settings.clip)},
        # what the frame level and the rules read: frames judged alone, or a GRU's steps (cumulative), ...
        "position_scores": {"kind": kind, "meaning": SCORE_KINDS[kind]},
    })
    if bootstrap:
        metrics["intervals"] = interval_metrics(records, threshold, bootstrap)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_files = [
        ("ROC", plot_roc(records, metrics, out_dir / "roc.png").name),
        ("Precision-recall", plot_precision_recall(records, metrics, out_dir / "pr.png").name),
        ("Calibration", plot_calibration(records, out_dir / "calibration.png",
                                         temperature=settings.calibration.temperature).name),
        ("Confusion matrix", plot_confusion(metrics, out_dir / "confusion.png", threshold).name),
        ("Score histogram", plot_histogram(records, out_dir / "histogram.png", threshold).name),
    ]
    metrics["breakdown_note"] = no_breakdown_reason(records)
    if metrics["breakdown_note"] is None:
        metrics["breakdown"] = breakdown(records)
        plot_files.append(("AUC per dataset and method", plot_breakdown(metrics["breakdown"],
                                                                        out_dir / "breakdown.png").name))
    write_predictions(records, out_dir / "predictions.csv", metrics["position_scores"]["kind"])
    if twins:
        write_predictions(twins, out_dir / "predictions_synthetic.csv", metrics["position_scores"]["kind"])
    metrics["files"] = ["metrics.json", "predictions.csv", *(["predictions_synthetic.csv"] if twins else []),
                        "report.md", *(name for _, name in plot_files)]
    write_json(out_dir / "metrics.json", metrics)
    write_report(metrics, plot_files, out_dir / "report.md")
    problem = metrics["accounting"]["problem"]
    if problem and strict:
        raise DfdError(f"{problem}; named in {out_dir / 'metrics.json'} (skipped.samples)")
    if problem:
        print(f"WARNING: {problem}; the metrics cover the {len(records)} scored videos; each one not scored is named "
              f"in {out_dir / 'metrics.json'} (skipped.samples)", file=sys.stderr)
    return metrics
