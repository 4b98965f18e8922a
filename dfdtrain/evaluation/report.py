"""What an evaluation writes and prints besides its figures: predictions.csv, report.md, and the lines and cells
of the console and the reports (the breakdown, the accounting, the calibration, a value with its interval)."""

import csv

from dfdtrain.core.fileio import atomic_open
from dfdtrain.core.text import format_fixed
from dfdtrain.metrics import INTERVAL_METRICS, REPORTED_RULES, format_metrics_table
from dfdtrain.metrics.calibration import FALLBACK_RULE


def format_breakdown(breakdown_metrics):
    """The breakdown as console lines: one per dataset and per method, AUC and counts."""
    lines = [f"video AUC per dataset and method ({breakdown_metrics['score']} score):"]
    for group in ("dataset", "method"):
        for name, values in breakdown_metrics[group].items():
            auc = "   n/a" if values["auc"] is None else f"{values['auc']:.4f}"
            lines.append(f"  {group:<8} {name:<24} {auc}  ({values['real']} real / {values['fake']} fake)")
    return "\n".join(lines)


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


def _format_score(value):
    return repr(float(value))  # full precision: the CSV reproduces the metrics exactly


def write_predictions(records, path, kind="frame"):
    """predictions.csv; the last column holds each video's per-position scores, named by what they are
    (``frame_scores``, or ``step_scores`` / ``token_scores``: heads.SCORE_KINDS), calibrated like the head's."""
    with atomic_open(path, "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["key", "label", "score", *(f"score_{rule}" for rule in REPORTED_RULES), "dataset", "method",
                         f"{kind}_scores"])
        for record in records:
            scores = record["scores"]
            writer.writerow([record["key"], record["label"], _format_score(scores["head"]),
                             *(_format_score(scores[rule]) for rule in REPORTED_RULES), record["dataset"] or "",
                             record["method"] or "", " ".join(f"{score:.6f}" for score in record["frame_scores"])])
    return path


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
    return f"n/a ({groups_phrase(groups)})"


def groups_phrase(count):
    """``1 group``, ``3 groups``."""
    return f"{count} group{'' if count == 1 else 's'}"


def calibration_line(summary):
    """How the head's P(fake) was calibrated and what it did on these videos, in one line."""
    if summary.get("threshold_rule") == FALLBACK_RULE:
        return (f"FALLBACK, nothing fitted (temperature {summary['temperature']:.4g}, the threshold as configured; "
                f"{summary['fitted_on']}); here log-loss {format_fixed(summary['log_loss'])}, ECE "
                f"{format_fixed(summary['ece'])}; fit one with dfdtrain calibrate on validation shards holding 2 "
                "videos of each class or more")
    if not summary.get("fitted_on"):
        return (f"none (temperature 1; log-loss {format_fixed(summary['log_loss'])}, ECE "
                f"{format_fixed(summary['ece'])}); fit one with dfdtrain calibrate")
    return (f"temperature {summary['temperature']:.4g} ({summary['fitted_on']}); here log-loss "
            f"{format_fixed(summary['log_loss_raw'])} raw -> {format_fixed(summary['log_loss'])} calibrated, "
            f"ECE {format_fixed(summary['ece_raw'])} -> {format_fixed(summary['ece'])}")


def perturbation_line(summary):
    """What every video went through (``metrics["perturbation"]``), in one line: ``jpeg:3 on every video
    (down-then-up resize divisor (JPEG) = 4)``."""
    if summary["level"] == 0:
        return f"{summary['spec']} (level 0: the identity, the clean videos)"
    return f"{summary['spec']} on every video ({summary['parameter']} = {summary['value']:g})"


def write_report(metrics, plot_files, path):
    lines = [
        "# Evaluation report", "",
        f"- checkpoint: `{metrics['checkpoint']}`",
        f"- shards: {len(metrics['shards'])} (`{metrics['shards'][0]}`{' ...' if len(metrics['shards']) > 1 else ''})",
        f"- videos: {metrics['videos']} ({metrics['labels']['real']} real, {metrics['labels']['fake']} fake), "
        f"frames: {metrics['frames']}",
        f"- accounted for: {_accounting_summary(metrics['accounting'])}",
        f"- threshold: {metrics['threshold']:g}, video loss (head BCE): {format_fixed(metrics['loss'])}",
        f"- calibration: {calibration_line(metrics['calibration'])}",
        *([f"- perturbation: {perturbation_line(metrics['perturbation'])}"] if "perturbation" in metrics else []),
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
                             f"{format_fixed(values['auc'])} |")
        lines.append("")
    lines += ["## Plots", ""]
    for title, file_name in plot_files:
        lines += [f"### {title}", "", f"[{file_name}]({file_name})", "", f"![{title}]({file_name})", ""]
    with atomic_open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path
