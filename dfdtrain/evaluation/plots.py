"""The figures of an evaluation (ROC, precision-recall, reliability diagram, confusion matrix, score histogram, AUC
per dataset and method) and the two calls every figure of the package is made with: ``new_figure`` and
``save_figure`` (the protocol's comparison plot uses them too). Figures are built with matplotlib's object API
(no pyplot): no global state, no display needed (Agg)."""

import numpy as np

from dfdtrain.core.fileio import atomic_open
from dfdtrain.metrics import (CALIBRATION_BINS, REPORTED_RULES, calibration_bin_index, expected_calibration_error,
                              precision_recall_curve, roc_curve)

SCORE_NAMES = ("head", *REPORTED_RULES)  # the video scores compared everywhere: the temporal head, then each rule
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


def new_figure(width=5.5, height=5.0, rows=1, columns=1, **subplot_options):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    axes = figure.subplots(rows, columns, **subplot_options)
    return figure, axes


def save_figure(figure, path):
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
    figure, axes = new_figure()
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
    return save_figure(figure, path)


def plot_precision_recall(records, metrics, path):
    figure, axes = new_figure()
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
    return save_figure(figure, path)


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
    figure, (reliability, counts) = new_figure(5.5, 6.2, rows=2, sharex=True,
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
    return save_figure(figure, path)


def plot_confusion(metrics, path, threshold, name="head"):
    confusion = metrics["video"][name]["confusion"]
    matrix = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    figure, axes = new_figure(4.8, 4.2)
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
    return save_figure(figure, path)


def plot_histogram(records, path, threshold, name="head"):
    labels, scores = _labels_and_scores(records, name)
    figure, axes = new_figure(6.0, 4.2)
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
    return save_figure(figure, path)


def plot_breakdown(breakdown_metrics, path):
    groups = [("dataset", breakdown_metrics["dataset"]), ("method", breakdown_metrics["method"])]
    groups = [(title, values) for title, values in groups if values]
    heights = [max(1.6, 0.45 * len(values) + 1.0) for _, values in groups]
    figure, axes_list = new_figure(6.5, sum(heights), rows=len(groups), squeeze=False,
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
    return save_figure(figure, path)

