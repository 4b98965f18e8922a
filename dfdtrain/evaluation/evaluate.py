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

Every score is on the verdict's scale: the head's P(fake) and each frame's are calibrated with the detector's
temperature (sigmoid(logit / T), as ``predict`` reports them), so the threshold, which was chosen on calibrated
scores, means the same for the head, for each frame's vote in ``majority``, for the other rules and the frame
level. Bootstrap intervals need at least 2 groups of real and 2 of fake videos (``metrics.interval_problem``).
"""

import collections
import csv
import math
import sys
from pathlib import Path

import numpy as np
import torch

from dfdtrain.metrics.calibration import FALLBACK_RULE
from dfdtrain.metrics.calibration import describe as describe_calibration
from dfdtrain.config import DataConfig, config_to_dict
from dfdtrain.data import storage
from dfdtrain.data.loading.loader import VideoLoader, expand_shards
from dfdtrain.data.shards.catalog import reconcile, verify_shards
from dfdtrain.core.distributed import DistributedContext, broadcast_object, gather_to_rank0
from dfdtrain.evaluation.scoring import records_loss, score_videos
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import atomic_open, check_output_folder, write_json
from dfdtrain.metrics import (CALIBRATION_BINS, INTERVAL_METRICS, aggregate, bootstrap_intervals,
                              calibration_bin_index, evaluate_predictions, expected_calibration_error,
                              format_metrics_table, groups_per_class, interval_problem, log_loss,
                              precision_recall_curve, roc_auc, roc_curve)
from dfdtrain.models.bundle import load_detector
from dfdtrain.models.detector import detector_score_kind
from dfdtrain.models.heads import SCORE_KINDS

RULES = ("mean", "max", "majority", "confident")
SCORE_NAMES = ("head", *RULES)  # the video scores compared everywhere: the temporal head, then each rule
REAL_COLOR, FAKE_COLOR = "#1f77b4", "#d62728"
# one colour and line style per score: rules often tie (e.g. mean and confident with few frames), and a
# distinct dash keeps a curve hidden under another one visible
CURVE_STYLES = {
    "head": {"color": "#1f77b4", "linestyle": "-", "linewidth": 2.4},
    "mean": {"color": "#ff7f0e", "linestyle": (0, (6, 2)), "linewidth": 1.6},
    "max": {"color": "#2ca02c", "linestyle": (0, (1, 1.5)), "linewidth": 1.8},
    "majority": {"color": "#d62728", "linestyle": (0, (6, 2, 1, 2)), "linewidth": 1.6},
    "confident": {"color": "#9467bd", "linestyle": (0, (3, 3)), "linewidth": 1.6},
}
CHANCE_STYLE = {"color": "0.7", "linestyle": ":", "linewidth": 1, "zorder": 0}


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


def evaluation_loader(settings, shards, batch_size, workers, decoder, context):
    """A loader that sees every video once, each made into the clip the detector was trained on."""
    data = DataConfig(batch_size=batch_size, num_workers=workers, decoder=decoder)
    return VideoLoader(shards, settings.clip, data, train=False, device=context.device, rank=context.rank,
                       world_size=context.world_size)


def single_process_context(device="cpu"):
    return DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device(device), backend="gloo")


# ---------------------------------------------------------------------------------------------- scores


def video_scores(record, threshold=0.5):
    """{score name: P(fake)} of one video: the head's score and each rule's aggregate of its frame scores (at the
    verdict's ``threshold``: each frame's vote in ``majority``)."""
    scores = {"head": record["video_score"]}
    for rule in RULES:
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


def format_breakdown(breakdown_metrics):
    """The breakdown as console lines: one per dataset and per method, AUC and counts."""
    lines = [f"video AUC per dataset and method ({breakdown_metrics['score']} score):"]
    for group in ("dataset", "method"):
        for name, values in breakdown_metrics[group].items():
            auc = "   n/a" if values["auc"] is None else f"{values['auc']:.4f}"
            lines.append(f"  {group:<8} {name:<24} {auc}  ({values['real']} real / {values['fake']} fake)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plots
# Figures are built with matplotlib's object API (no pyplot): no global state, no display needed (Agg).


def _new_figure(width=5.5, height=5.0, rows=1, columns=1, **subplot_options):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = figure.subplots(rows, columns, **subplot_options)
    return figure, axes


def _save(figure, path):
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
    return path


def _labels_and_scores(records, name):
    labels = np.array([record["label"] for record in records], dtype=np.int64)
    scores = np.array([record["scores"][name] for record in records], dtype=np.float64)
    return labels, scores


def _has_both_classes(labels):
    return labels.size > 0 and labels.min() != labels.max()


def _no_data_note(axes, text):
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="0.4")


def plot_roc(records, metrics, path):
    figure, axes = _new_figure()
    axes.plot([0, 1], [0, 1], label="chance", **CHANCE_STYLE)
    for name in SCORE_NAMES:
        labels, scores = _labels_and_scores(records, name)
        if not _has_both_classes(labels):
            continue
        false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
        auc = metrics["video"][name]["auc"]
        axes.plot(false_positive_rate, true_positive_rate, label=f"{name} (AUC {auc:.3f})", **CURVE_STYLES[name])
    if not _has_both_classes(_labels_and_scores(records, "head")[0]):
        _no_data_note(axes, "ROC needs both real and fake videos")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (reals called fake)",
             ylabel="true positive rate (fakes caught)", title=f"ROC, video level ({len(records)} videos)")
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def plot_precision_recall(records, metrics, path):
    figure, axes = _new_figure()
    labels = _labels_and_scores(records, "head")[0]
    if labels.any():
        prevalence = labels.mean()
        axes.axhline(prevalence, label=f"chance ({prevalence:.2f})", **CHANCE_STYLE)
        for name in SCORE_NAMES:
            labels, scores = _labels_and_scores(records, name)
            precision, recall, _ = precision_recall_curve(labels, scores)
            average_precision = metrics["video"][name]["ap"]
            axes.step(recall, precision, where="post", label=f"{name} (AP {average_precision:.3f})",
                      **CURVE_STYLES[name])
        axes.legend(loc="lower left", fontsize=8)
    else:
        _no_data_note(axes, "precision-recall needs fake videos")
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall (fakes caught)", ylabel="precision (called fake that are)",
             title=f"Precision-recall, video level ({len(records)} videos)")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def calibration_bins(labels, scores, bins=CALIBRATION_BINS):
    """Per equal-width score bin: (count, mean score, fraction fake); empty bins have None means."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = calibration_bin_index(scores, bins)  # the bins of the ECE
    rows = []
    for position in range(bins):
        inside = index == position
        count = int(inside.sum())
        rows.append((count, float(scores[inside].mean()) if count else None,
                     float(labels[inside].mean()) if count else None))
    return edges, rows


def plot_calibration(records, path, name="head", temperature=1.0):
    """Reliability diagram of the head score: fraction fake against mean score per bin, calibrated (with the
    detector's temperature) and, when a temperature was fitted, raw beside it; ECE of each in the legend."""
    labels, scores = _labels_and_scores(records, name)
    edges, rows = calibration_bins(labels, scores)
    width = edges[1] - edges[0]
    centers = (edges[:-1] + edges[1:]) / 2
    figure, (reliability, counts) = _new_figure(5.5, 6.2, rows=2, sharex=True,
                                                gridspec_kw={"height_ratios": [3, 1.2]})
    reliability.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfectly calibrated")
    filled = [(center, row) for center, row in zip(centers, rows) if row[0]]
    reliability.bar([center for center, _ in filled], [row[2] for _, row in filled], width=width * 0.9,
                    color=FAKE_COLOR, alpha=0.35, edgecolor=FAKE_COLOR, label="fraction fake in bin")
    calibrated = "calibrated, " if temperature != 1.0 else ""
    reliability.plot([row[1] for _, row in filled], [row[2] for _, row in filled], marker="o", color="black",
                     linewidth=1.2, label=f"{calibrated}ECE {expected_calibration_error(labels, scores):.3f}")
    if temperature != 1.0 and name == "head":
        raw_scores = np.array([record["video_score_raw"] for record in records], dtype=np.float64)
        _, raw_rows = calibration_bins(labels, raw_scores)
        raw_filled = [row for row in raw_rows if row[0]]
        reliability.plot([row[1] for row in raw_filled], [row[2] for row in raw_filled], marker="s", color="0.5",
                         linestyle=(0, (4, 2)), linewidth=1.2,
                         label=f"raw (T = 1), ECE {expected_calibration_error(labels, raw_scores):.3f}")
    reliability.set(xlim=(0, 1), ylim=(0, 1.05), ylabel="fraction of fake videos",
                    title=f"Calibration of the {name} score ({len(records)} videos, {CALIBRATION_BINS} bins"
                          + (f", T = {temperature:.3g}" if temperature != 1.0 else "") + ")")
    reliability.grid(alpha=0.3)
    reliability.legend(loc="upper left", fontsize=8)
    bin_counts = [row[0] for row in rows]
    counts.bar(centers, bin_counts, width=width * 0.9, color="0.55")
    for center, count in zip(centers, bin_counts):
        if count:
            counts.text(center, count, str(count), ha="center", va="bottom", fontsize=8)
    counts.set(xlim=(0, 1), ylim=(0, max(bin_counts) * 1.3 + 0.5),
               xlabel=f"predicted P(fake) ({name}{', calibrated' if temperature != 1.0 else ''})", ylabel="videos")
    counts.set_xticks(edges)
    counts.tick_params(axis="x", labelsize=8)
    return _save(figure, path)


def plot_confusion(metrics, path, threshold, name="head"):
    confusion = metrics["video"][name]["confusion"]
    matrix = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    figure, axes = _new_figure(4.8, 4.2)
    axes.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
    row_totals = matrix.sum(axis=1)
    for row in range(2):
        for column in range(2):
            count = int(matrix[row, column])
            share = f"\n{count / row_totals[row]:.0%} of row" if row_totals[row] else ""
            dark = count > matrix.max() / 2
            axes.text(column, row, f"{count}{share}", ha="center", va="center", fontsize=12,
                      color="white" if dark else "black")
    axes.set_xticks([0, 1], ["real", "fake"])
    axes.set_yticks([0, 1], ["real", "fake"])
    axes.set(xlabel="predicted", ylabel="true",
             title=f"Confusion ({name} score >= {threshold:g} is fake)")
    return _save(figure, path)


def plot_histogram(records, path, threshold, name="head"):
    labels, scores = _labels_and_scores(records, name)
    figure, axes = _new_figure(6.0, 4.2)
    edges = np.linspace(0, 1, 21)
    for label, text, color in ((0, "real", REAL_COLOR), (1, "fake", FAKE_COLOR)):
        chosen = scores[labels == label]
        axes.hist(chosen, bins=edges, color=color, alpha=0.55, edgecolor=color, label=f"{text} ({chosen.size})")
    axes.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axes.set(xlim=(0, 1), xlabel=f"predicted P(fake) ({name})", ylabel="videos",
             title=f"Score distribution per class ({len(records)} videos)")
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def plot_breakdown(breakdown_metrics, path):
    groups = [("dataset", breakdown_metrics["dataset"]), ("method", breakdown_metrics["method"])]
    groups = [(title, values) for title, values in groups if values]
    heights = [max(1.6, 0.45 * len(values) + 1.0) for _, values in groups]
    figure, axes_list = _new_figure(6.5, sum(heights), rows=len(groups), squeeze=False,
                                    gridspec_kw={"height_ratios": heights})
    for axes, (title, values) in zip(axes_list[:, 0], groups):
        names = list(values)
        aucs = [values[name]["auc"] for name in names]
        positions = np.arange(len(names))
        axes.barh(positions, [auc or 0.0 for auc in aucs], color="#4c72b0", height=0.6)
        for position, name, auc in zip(positions, names, aucs):
            counts = f"{values[name]['real']} real / {values[name]['fake']} fake"
            text = f"{auc:.3f}  ({counts})" if auc is not None else f"n/a  ({counts})"
            # in a column right of the axes, which end at AUC 1: the values never cover a bar or the 0.5 line
            axes.text(1.03, position, text, va="center", fontsize=8, clip_on=False)
        axes.axvline(0.5, color="0.5", linestyle="--", linewidth=1, zorder=0)
        axes.set_yticks(positions, names)
        axes.invert_yaxis()
        axes.set(xlim=(0, 1), xlabel=f"video AUC ({breakdown_metrics['score']} score)",
                 title=f"AUC per {title}" + (" (its fakes vs the dataset's reals)" if title == "method" else ""))
        axes.set_xticks(np.linspace(0, 1, 6))
        axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------- files


def _format_score(value):
    return repr(float(value))  # full precision: the CSV reproduces the metrics exactly


def write_predictions(records, path, kind="frame"):
    """predictions.csv; the last column holds each video's per-position scores, named by what they are
    (``frame_scores``, or ``step_scores`` / ``token_scores``: heads.SCORE_KINDS), calibrated like the head's."""
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["key", "label", "score", *(f"score_{rule}" for rule in RULES), "dataset", "method",
                         f"{kind}_scores"])
        for record in records:
            scores = record["scores"]
            writer.writerow([record["key"], record["label"], _format_score(scores["head"]),
                             *(_format_score(scores[rule]) for rule in RULES), record["dataset"] or "",
                             record["method"] or "", " ".join(f"{score:.6f}" for score in record["frame_scores"])])
    return path


def _format_optional(value, digits=4):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _accounting_summary(accounting):
    problem = accounting["problem"]
    counts = (f"index.json promises {accounting['promised']} videos: {accounting['scored']} scored, "
              f"{accounting['skipped']} skipped, {accounting['missing']} missing")
    return f"{counts}. **{problem}**" if problem else f"{counts} (every one accounted for)"


def format_interval(value, interval, digits=3, groups=None):
    """``0.912 [0.850, 0.961]``; ``-`` where undefined. ``groups``: the set's group count when its intervals were
    withheld for too few groups (``metrics.interval_problem``): ``0.500 [n/a (1 group)]``."""
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    if interval:
        return f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return f"{text} [{no_interval(groups)}]" if groups is not None else text


def no_interval(groups):
    """What stands in for an interval withheld for too few groups: ``n/a (1 group)``."""
    return f"n/a ({groups} group{'' if groups == 1 else 's'})"


def calibration_line(summary):
    """How the head's P(fake) was calibrated and what it did on these videos, in one line."""
    if summary.get("threshold_rule") == FALLBACK_RULE:
        return (f"FALLBACK, nothing fitted (temperature {summary['temperature']:.4g}, the threshold as configured; "
                f"{summary['fitted_on']}); here log-loss {_format_optional(summary['log_loss'])}, ECE "
                f"{_format_optional(summary['ece'])}; fit one with dfdtrain calibrate on validation shards holding 2 "
                "videos of each class or more")
    if not summary.get("fitted_on"):
        return (f"none (temperature 1; log-loss {_format_optional(summary['log_loss'])}, ECE "
                f"{_format_optional(summary['ece'])}); fit one with dfdtrain calibrate")
    return (f"temperature {summary['temperature']:.4g} ({summary['fitted_on']}); here log-loss "
            f"{_format_optional(summary['log_loss_raw'])} raw -> {_format_optional(summary['log_loss'])} calibrated, "
            f"ECE {_format_optional(summary['ece_raw'])} -> {_format_optional(summary['ece'])}")


def write_report(metrics, plot_files, path):
    lines = [
        "# Evaluation report", "",
        f"- checkpoint: `{metrics['checkpoint']}`",
        f"- shards: {len(metrics['shards'])} (`{metrics['shards'][0]}`{' ...' if len(metrics['shards']) > 1 else ''})",
        f"- videos: {metrics['videos']} ({metrics['labels']['real']} real, {metrics['labels']['fake']} fake), "
        f"frames: {metrics['frames']}",
        f"- accounted for: {_accounting_summary(metrics['accounting'])}",
        f"- threshold: {metrics['threshold']:g}, video loss (head BCE): {_format_optional(metrics['loss'])}",
        f"- calibration: {calibration_line(metrics['calibration'])}",
        "", "## Metrics", "",
        "Video level: the temporal head and each frame-aggregation rule; frame level: every frame with its "
        "video's label. Every score is calibrated with the detector's temperature, on the threshold's scale (each "
        "frame votes at the threshold in `majority`). This head's per-frame scores are "
        f"{metrics['position_scores']['kind']} scores: {metrics['position_scores']['meaning']}.", "",
        "```", format_metrics_table(metrics), "```", "",
    ]
    if "intervals" in metrics:
        intervals = metrics["intervals"]
        by_class = intervals["groups_by_class"]
        withheld = intervals["groups"] if intervals["problem"] else None
        lines += ["## 95% intervals", "", f"Bootstrap: {intervals['resamples']} resamples of the "
                  f"{intervals['groups']} groups (identities / source pairs; {by_class['real']} with real, "
                  f"{by_class['fake']} with fake videos), head score."
                  + (f" **No intervals**: {intervals['problem']}." if intervals["problem"] else ""), "",
                  "| level | " + " | ".join(INTERVAL_METRICS) + " |", "|---|" + "---:|" * len(INTERVAL_METRICS)]
        for level, values in (("video", metrics["video"]["head"]), ("frame", metrics["frame"])):
            lines.append(f"| {level} | " + " | ".join(format_interval(values[name], intervals[level][name],
                                                                      groups=withheld)
                                                       for name in INTERVAL_METRICS) + " |")
        lines.append("")
    if metrics.get("breakdown_note"):
        lines += ["## Breakdown", "", metrics["breakdown_note"] + ".", ""]
    if "breakdown" in metrics:
        lines += ["## Breakdown", "", "| group | name | real | fake | AUC |", "|---|---|---:|---:|---:|"]
        for group in ("dataset", "method"):
            for name, values in metrics["breakdown"][group].items():
                lines.append(f"| {group} | {name} | {values['real']} | {values['fake']} | "
                             f"{_format_optional(values['auc'])} |")
        lines.append("")
    lines += ["## Plots", ""]
    for title, file_name in plot_files:
        lines += [f"### {title}", "", f"[{file_name}]({file_name})", "", f"![{title}]({file_name})", ""]
    with atomic_open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path


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
    first = broadcast_object(problems[0] if problems else None)
    if first:
        raise DfdError(first)


def accounting_line(accounting):
    """One line on what was not scored of what index.json promised, or None when every video was scored."""
    not_scored = accounting["skipped"] + accounting["missing"]
    parts = []
    if not_scored:
        named = [item for item in accounting["missing_samples"] if item["key"]][:3]
        parts.append(f"{not_scored} of the {accounting['promised']} videos index.json promises were not scored "
                     f"({accounting['skipped']} skipped, {accounting['missing']} missing"
                     + (f" from {accounting['unreadable_shards']} unreadable shard(s)"
                        if accounting["unreadable_shards"] else "")
                     + (f": {', '.join(item['key'] for item in named)}{' ...' if accounting['missing'] > 3 else ''}"
                        if named else "") + ")")
    if accounting["unindexed"]:
        parts.append(f"{len(accounting['unindexed'])} shard(s) have no index.json entry and cannot be checked "
                     f"(e.g. {accounting['unindexed'][0]})")
    return "; ".join(parts) or None


def score_shards(checkpoint, shards, batch_size=8, workers=2, decoder="pyav", context=None, verify=True):
    """Every rank scores its share of ``shards`` with the raw detector at ``checkpoint``; rank 0 gets
    ``(settings, shard paths, records sorted by key, skipped + missing samples, accounting, storage retries)``,
    the other ranks None. Stops with one line when no video could be scored."""
    context = context or single_process_context()
    shard_paths = expand_shards(shards)
    model, settings = load_detector(checkpoint, device=context.device)
    if verify:
        verify_on_every_rank(shard_paths, context)
    loader = evaluation_loader(settings, shard_paths, batch_size, workers, decoder, context)
    records = gather_to_rank0(score_videos(model, loader, context.device))
    skipped = gather_to_rank0(loader.skipped)
    retries = gather_to_rank0([dict(loader.io_faults + collections.Counter(storage.take_fault_counts()))])
    if records is None:  # not rank 0
        return None
    storage_retries = sum((collections.Counter(counts) for counts in retries), collections.Counter())
    accounting = reconcile(shard_paths, records, skipped)
    skipped += accounting["missing_samples"]  # named with the skipped, reason "missing"
    if not records:
        reasons = "; ".join(f"{item['key'] or item['shard']}: {item['reason']}" + (f" ({item['detail']})" if
                            item.get("detail") else "") for item in skipped[:2])
        raise DfdError(f"{storage.mask(shards) if isinstance(shards, str) else shards}: no video could be scored ({len(skipped)} skipped" +
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
                   context=None, verify=True, strict=False, bootstrap=1000):
    """Score ``shards`` with the detector at ``checkpoint`` and write the evaluation into ``out_dir``.

    Every rank scores its share; rank 0 gathers the records and writes the files. Returns the metrics dict
    on rank 0 and None on the other ranks. ``threshold`` defaults to the one the detector carries. The head's
    P(fake) is calibrated with the detector's temperature (``metrics["calibration"]`` compares raw and
    calibrated log-loss and ECE); ``bootstrap`` resamples of the groups give 95% intervals (0: none).

    Every video the shards' index.json promises is accounted for (``metrics["accounting"]``): scored, skipped
    with its reason, or named missing (a truncated or corrupt tar). ``verify``: first check each shard's sha256
    against index.json (a mismatch stops with one line). ``strict``: a video not scored is an error (after the
    files are written) instead of a warning line.
    """
    check_output_folder(out_dir)
    scored = score_shards(checkpoint, shards, batch_size, workers, decoder, context, verify)
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

    metrics = evaluate_predictions(records, threshold=threshold, rules=RULES)
    kind = detector_score_kind(settings.model)
    labels = [record["label"] for record in records]
    metrics.update({
        "loss": records_loss(records),
        "threshold": threshold,
        "calibration": calibration_summary(records, settings.calibration),
        "checkpoint": str(checkpoint),
        "shards": [storage.mask(path) for path in shard_paths],
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
    metrics["files"] = ["metrics.json", "predictions.csv", "report.md", *(name for _, name in plot_files)]
    write_json(out_dir / "metrics.json", metrics)
    write_report(metrics, plot_files, out_dir / "report.md")
    problem = metrics["accounting"]["problem"]
    if problem and strict:
        raise DfdError(f"{problem}; named in {out_dir / 'metrics.json'} (skipped.samples)")
    if problem:
        print(f"WARNING: {problem}; the metrics cover the {len(records)} scored videos; each one not scored is named "
              f"in {out_dir / 'metrics.json'} (skipped.samples)", file=sys.stderr)
    return metrics
