"""Every metric of a detector's scored videos in one dict (``evaluate_predictions``: the temporal head, every
reported aggregation rule and the frame level), and that dict as a plain-text table (``format_metrics_table``);
``synthetic_metrics``: real videos against their synthetic twins, reported apart."""

import numpy as np

from dfdtrain.core.text import format_fixed
from dfdtrain.metrics.aggregation import AGGREGATIONS, REPORTED_RULES, aggregate_many
from dfdtrain.metrics.binary import binary_metrics
from dfdtrain.metrics.inputs import as_scores

# The columns of format_metrics_table: header -> key of binary_metrics.
TABLE_COLUMNS = {
    "auc": "auc", "log_loss": "log_loss", "ece": "ece", "ap": "ap", "eer": "eer", "acc": "accuracy",
    "prec": "precision",
    "rec": "recall", "spec": "specificity", "npv": "npv", "f1": "f1", "mcc": "mcc",
}


def evaluate_predictions(records, threshold=0.5, rules=REPORTED_RULES):
    """Video- and frame-level metrics of a detector's predictions, as a JSON-ready dict.

    ``records``: one dict per video, ``{"key", "label" (0 real / 1 fake), "video_score" (the temporal head's
    P(fake); absent or None without one), "frame_scores" (P(fake) of each real frame, at least one)}``.

    Returns ``{"video": {"head": ..., rule: ... for each rule}, "frame": ..., "videos": n, "frames": n}`` where
    each value under "video" and "frame" is ``binary_metrics`` at ``threshold``: "head" scores the videos by
    ``video_score`` (present only when every record has one; a mix raises ValueError, since comparing the head
    with the rules on different videos would mislead), each rule by its aggregate of the frame scores (at
    ``threshold``: the frames vote there in ``majority``), and "frame" scores every frame with its video's label
    (so videos with more frames weigh more). The frame scores must be on the scale of ``threshold`` and of the
    head's score (calibrated when the threshold was chosen on calibrated scores).
    """
    for rule in rules:
        AGGREGATIONS.get(rule)  # an unknown rule fails before any work, with the known names
    keys, labels, frame_score_arrays, video_scores = [], [], [], []
    for record in records:
        key = record.get("key")
        if record.get("label") not in (0, 1):
            raise ValueError(f"video {key!r}: label must be 0 (real) or 1 (fake), got {record.get('label')!r}")
        frame_scores = as_scores(record.get("frame_scores", []), f"video {key!r}: frame_scores")
        if frame_scores.size == 0:
            raise ValueError(f"video {key!r}: no frame scores")
        keys.append(key)
        labels.append(int(record["label"]))
        frame_score_arrays.append(frame_scores)
        video_scores.append(record.get("video_score"))

    video_metrics = {}
    with_head = [score is not None for score in video_scores]
    if any(with_head) and not all(with_head):
        missing = keys[with_head.index(False)]
        raise ValueError(f"video {missing!r} has no video_score while others have one: "
                         f"give every video a head score or none")
    if records and all(with_head):
        video_metrics["head"] = binary_metrics(labels, as_scores(video_scores, "video_score"), threshold)
    for rule in rules:
        video_metrics[rule] = binary_metrics(labels, aggregate_many(frame_score_arrays, rule, threshold=threshold),
                                             threshold)

    frame_counts = [scores.size for scores in frame_score_arrays]
    frame_labels = np.repeat(np.array(labels, dtype=np.int64), frame_counts)
    frame_scores = np.concatenate(frame_score_arrays) if frame_score_arrays else np.zeros(0)
    return {
        "video": video_metrics,
        "frame": binary_metrics(frame_labels, frame_scores, threshold),
        "videos": len(labels),
        "frames": int(sum(frame_counts)),
    }


def synthetic_metrics(records, twins, threshold=0.5):
    """How well the detector tells real videos from synthetic fakes made of real ones (``data.val_synthesis``):
    the real videos of ``records`` (label 0) against ``twins`` (label 1), each by the temporal head's score (the
    mean of its frame scores without one), as ``binary_metrics`` plus the counts: ``{"videos": twins, "reals":
    n, "method": "sbi", auc, accuracy, ...}``. Kept apart from the real data's metrics, which the twins never
    enter."""
    reals = [record for record in records if record["label"] == 0]

    def score(record):
        head = record.get("video_score")
        return float(np.mean(record["frame_scores"])) if head is None else head

    labels = [0] * len(reals) + [1] * len(twins)
    values = binary_metrics(labels, as_scores([score(record) for record in reals + twins]), threshold)
    methods = ", ".join(sorted({str(record.get("synthesis") or "") for record in twins} - {""}))
    return {"videos": len(twins), "reals": len(reals), "method": methods, "threshold": threshold, **values}


def format_metrics_table(metrics):
    """``evaluate_predictions``' result as a plain-text table: a row per video rule (``video/<rule>``) and the
    frame level, a column per metric (``-`` where undefined), under a line with the counts; with ``synthetic``
    (``synthetic_metrics``), a line for the twins below."""
    rows = [(f"video/{name}", values) for name, values in metrics["video"].items()]
    rows.append(("frame", metrics["frame"]))
    header = ["level", *TABLE_COLUMNS]
    body = [[name, *(format_fixed(values[key]) for key in TABLE_COLUMNS.values())]
            for name, values in rows]
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]

    def format_line(cells):
        # names left-aligned, numbers right-aligned
        numbers = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return "  ".join([cells[0].ljust(widths[0]), *numbers])

    lines = [f"{metrics['videos']} videos, {metrics['frames']} frames", format_line(header),
             "  ".join("-" * width for width in widths), *map(format_line, body)]
    if "synthetic" in metrics:  # data.val_synthesis: never in the rows above
        twins = metrics["synthetic"]
        lines.append(f"synthetic twins ({twins['method']}), apart from the above: {twins['videos']} "
                     f"against {twins['reals']} real videos, head score: AUC {format_fixed(twins['auc'])}, "
                     f"accuracy {format_fixed(twins['accuracy'])} (at {twins['threshold']:g}), "
                     f"log loss {format_fixed(twins['log_loss'])}")
    return "\n".join(lines)
