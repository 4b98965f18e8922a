"""``curves.png`` in the run directory: the training curves, drawn from ``metrics.jsonl``.

    write_curves(run_dir)    # rank 0, after every evaluation (the trainer calls it at the end of each epoch)

Four panels: the training loss at every logged step, the learning rate per step (head, and backbone where
logged), the training and validation loss per epoch, and the validation AUC per epoch (video level from the
temporal head, frame level). Epoch boundaries are marked in the per-step panels. The PNG is written
atomically, so a viewer never sees half a file.
"""

import json
import math
import os

import numpy as np

from dfdtrain.core.text import format_number
from dfdtrain.training.run_logger import METRICS_FILE
from dfdtrain.core.fileio import atomic_open

CURVES_FILE = "curves.png"
TRAIN_COLOR, VAL_COLOR, BACKBONE_COLOR = "#1f77b4", "#d62728", "#2ca02c"
EPOCH_SHADE = "0.94"
NO_STEPS = "no training step logged yet\n(one every train.log_every optimizer steps)"


def read_rows(metrics_path):
    """(train rows by step, eval rows by epoch) of metrics.jsonl. A resumed run may have logged a step or an
    epoch's evaluation twice: the later row wins. Lines that are not JSON (a kill mid-write) are skipped."""
    train, evaluations = {}, {}
    with open(metrics_path, encoding="utf-8") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            if row.get("kind") == "train" and isinstance(row.get("loss"), (int, float)):
                train[row["step"]] = row
            elif row.get("kind") == "eval" and row.get("epoch") is not None:
                evaluations[row["epoch"]] = row
    return [train[step] for step in sorted(train)], [evaluations[epoch] for epoch in sorted(evaluations)]


def _value(row, *path):
    for part in path:
        if not isinstance(row, dict):
            return None
        row = row.get(part)
    return row if isinstance(row, (int, float)) and not isinstance(row, bool) else None


def _number(value):
    return float("nan") if value is None else value  # a gap in the line


def _moving_average(values, window):
    kernel = np.ones(window) / window
    return np.convolve(values, kernel, mode="valid")


def _no_data_note(axes, text):
    axes.set_xticks([])
    axes.set_yticks([])
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="0.4")


def _mark_epochs(axes, evaluations):
    """Every other epoch shaded, and the epochs numbered on a top axis: the per-step panels show where each
    epoch (and its evaluation) ends."""
    if not evaluations:
        return
    bounds = [0] + [row["step"] for row in evaluations]
    for index in range(1, len(evaluations), 2):
        axes.axvspan(bounds[index], bounds[index + 1], color=EPOCH_SHADE, linewidth=0, zorder=0)
    every = math.ceil(len(evaluations) / 12)  # at most ~12 numbers, so they never overlap
    shown = range(len(evaluations) - 1, -1, -every)  # always the last epoch
    top = axes.secondary_xaxis("top")
    top.set_xticks([(bounds[index] + bounds[index + 1]) / 2 for index in shown],
                   labels=[str(evaluations[index]["epoch"]) for index in shown])
    top.tick_params(length=0, labelsize="small", labelcolor="0.4")
    top.set_xlabel("epoch", fontsize="small", color="0.4")


def _step_panel(axes, title, ylabel, train, evaluations):
    """Title, labels and epoch marks of a per-step panel; False (with a note) when no step was logged."""
    axes.set_title(title)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel(ylabel)
    if not train:
        _no_data_note(axes, NO_STEPS)
        return False
    _mark_epochs(axes, evaluations)
    return True


def _plot_train_loss(axes, train, evaluations):
    if not _step_panel(axes, "training loss per logged step", "loss (BCE)", train, evaluations):
        return
    steps = np.array([row["step"] for row in train])
    losses = np.array([row["loss"] for row in train], dtype=float)
    if len(losses) >= 20:  # noisy per-step losses: a faint line, and their moving average on top
        window = max(5, len(losses) // 20)
        axes.plot(steps, losses, color=TRAIN_COLOR, alpha=0.3, linewidth=0.8, label="per step")
        axes.plot(steps[window - 1:], _moving_average(losses, window), color=TRAIN_COLOR, linewidth=2,
                  label=f"mean of {window} steps")
        axes.legend(loc="upper right", fontsize="small")
    else:
        axes.plot(steps, losses, color=TRAIN_COLOR, marker="o", markersize=3, linewidth=1.4)


def _plot_learning_rate(axes, train, evaluations):
    if not _step_panel(axes, "learning rate", "learning rate", train, evaluations):
        return
    steps = [row["step"] for row in train]
    marker = "o" if len(train) < 20 else None
    head = [_number(row.get("lr")) for row in train]
    backbone = [_number(row.get("lr_backbone")) for row in train]
    apart = any(row.get("lr_backbone") is not None for row in train) and not np.allclose(head, backbone,
                                                                                          equal_nan=True)
    axes.plot(steps, head, color=TRAIN_COLOR, linewidth=1.6, marker=marker, markersize=3,
              label="head" if apart else "head and backbone")
    if apart:  # one line when they are the same (finetune.backbone_lr_scale 1, nothing frozen)
        axes.plot(steps, backbone, color=BACKBONE_COLOR, linewidth=1.6, linestyle="--", marker=marker,
                  markersize=3, label="backbone")
    axes.legend(loc="upper right", fontsize="small")
    axes.set_ylim(bottom=0)
    from matplotlib.ticker import FuncFormatter

    # each tick its own short number: a shared "1e-3" multiplier sits on the epoch labels at the top
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))


def _per_epoch(axes, evaluations, series, ylabel, title):
    """Lines of (label, values, style) per epoch, each point marked; None values are left out."""
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.xaxis.get_major_locator().set_params(integer=True)
    drawn = False
    for label, values, style in series:
        points = [(row["epoch"], value) for row, value in zip(evaluations, values) if value is not None]
        if points:
            epochs, numbers = zip(*points)
            axes.plot(epochs, numbers, marker="o", markersize=5, label=label, **style)
            drawn = True
    if evaluations:
        last = evaluations[-1]["epoch"]
        axes.set_xlim(0.5, max(last, 2) + 0.5)
    if drawn:
        axes.legend(loc="best", fontsize="small")
    return drawn


def _with_best(label, evaluations, values, pick):
    """``label`` with the best value (``pick``: min or max) and its epoch, for the legend."""
    points = [(value, row["epoch"]) for row, value in zip(evaluations, values) if value is not None]
    if not points:
        return label
    value, epoch = pick(points, key=lambda point: point[0])
    return f"{label}: best {format_number(value)} (epoch {epoch})"


def _plot_epoch_losses(axes, train, evaluations):
    train_mean = []
    for row in evaluations:  # the mean of the training losses logged during that epoch
        losses = [item["loss"] for item in train if item.get("epoch") == row["epoch"]]
        train_mean.append(float(np.mean(losses)) if losses else None)
    val_loss = [_value(row, "val", "loss") for row in evaluations]
    series = [("train (mean of the logged steps)", train_mean, {"color": TRAIN_COLOR, "linewidth": 1.6}),
              (_with_best("validation", evaluations, val_loss, min), val_loss, {"color": VAL_COLOR, "linewidth": 2})]
    if not _per_epoch(axes, evaluations, series, "loss (BCE)", "loss per epoch"):
        _no_data_note(axes, "no evaluation yet")


def _plot_auc(axes, evaluations):
    video = [_value(row, "val", "video", "head", "auc") for row in evaluations]
    series = [(_with_best("video (the model's own score)", evaluations, video, max), video,
               {"color": VAL_COLOR, "linewidth": 2}),
              ("frame", [_value(row, "val", "frame", "auc") for row in evaluations],
               {"color": "#ff7f0e", "linewidth": 1.4, "linestyle": "--"})]
    axes.axhline(0.5, color="0.6", linestyle=":", linewidth=1, zorder=0, label="chance")
    drawn = _per_epoch(axes, evaluations, series, "ROC-AUC", "validation AUC per epoch")
    axes.set_ylim(0, 1.02)
    if not drawn:
        _no_data_note(axes, "no AUC yet (needs both classes)" if evaluations else "no evaluation yet")


def write_curves(run_dir, title=None):
    """Draw ``run_dir/metrics.jsonl`` into ``run_dir/curves.png`` (atomically); returns the PNG's path."""
    from matplotlib.figure import Figure

    train, evaluations = read_rows(os.path.join(run_dir, METRICS_FILE))
    figure = Figure(figsize=(11, 7.5), dpi=110, layout="constrained")
    (loss_axes, lr_axes), (epoch_axes, auc_axes) = figure.subplots(2, 2)
    _plot_train_loss(loss_axes, train, evaluations)
    _plot_learning_rate(lr_axes, train, evaluations)
    _plot_epoch_losses(epoch_axes, train, evaluations)
    _plot_auc(auc_axes, evaluations)
    for axes in (loss_axes, lr_axes, epoch_axes, auc_axes):
        axes.grid(True, color="0.92", linewidth=0.8)
        axes.set_axisbelow(True)
    epochs = f"{len(evaluations)} epoch{'s' if len(evaluations) != 1 else ''}"
    steps = max([row["step"] for row in train[-1:] + evaluations[-1:]], default=0)
    figure.suptitle(f"{title or os.path.basename(os.path.abspath(run_dir))}: training curves ({epochs}, {steps} "
                    "steps)", fontsize="large")
    path = os.path.join(run_dir, CURVES_FILE)
    with atomic_open(path, "wb") as handle:
        figure.savefig(handle, format="png")
    return path
