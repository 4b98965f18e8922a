"""The protocol's robustness suite (issue 35): every test set scored again under each perturbation, at each level.

A suite asks for it with ``robustness: {types: [...], levels: [...]}`` (both optional: all eight ``TYPES`` at
levels 1..5; ``robustness: {}`` or ``robustness: true`` mean the defaults, ``false`` none). ``dfdtrain protocol``
then, after the clean test sets, runs one ``run_evaluation(..., perturb="TYPE:LEVEL")`` per test set and condition
(distributed like ``evaluate``; the shards' sha256 were checked by the clean pass, so not again) into
``DIR/sets/<set>/robustness/<type>-<level>/``, and writes beside the clean table:

- ``robustness.json``: ``sets.NAME.TYPE.LEVEL.video.{auc, auc_ci, log_loss, ece}`` (LEVEL a string "1".."5";
  each ``*_ci`` the 95% bootstrap interval over groups, null when the set has too few groups), ``sets.NAME.clean``
  (the clean table's numbers), ``sets.NAME.mean_auc`` (the mean AUC over every perturbation run: the summary
  DeeperForensics-style robustness tables report) and ``mean_auc_by_type``, plus ``types``, ``levels`` and
  ``parameters`` (what each level means: ``LEVEL_PARAMETERS``);
- ``robustness.md``: a table per set, a row per type, the clean AUC then levels 1..5 and the type's mean;
- ``robustness.png``: a panel per set, AUC against level (0 = clean), a line per type, the clean AUC dashed.

The perturbations are DeeperForensics-1.0's (EndlessSora/DeeperForensics-1.0, ``perturbation/``) plus ``resize``:
``dfdtrain.data.perturb``. The cost (videos x perturbations) is printed before the protocol starts.
"""

import math
import sys
from pathlib import Path

import numpy as np

from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import atomic_open, write_json
from dfdtrain.core.text import format_fixed
from dfdtrain.data import storage
from dfdtrain.data.perturb import LEVEL_PARAMETERS, LEVELS, PERTURBATIONS, TYPES
from dfdtrain.data.shards.catalog import count_samples
from dfdtrain.evaluation.evaluate import run_evaluation
from dfdtrain.evaluation.plots import new_figure, save_figure

ROBUSTNESS_KEYS = ("types", "levels")
ROBUSTNESS_FILES = ("robustness.json", "robustness.md", "robustness.png")
VIDEO_METRICS = ("auc", "log_loss", "ece")  # each with its interval (``*_ci``)
# one colour and marker per type: eight lines in one panel stay apart
TYPE_STYLES = {
    "saturation": ("#1f77b4", "o"), "contrast": ("#ff7f0e", "s"), "block": ("#2ca02c", "^"),
    "noise": ("#d62728", "v"), "blur": ("#9467bd", "D"), "jpeg": ("#8c564b", "P"), "h264": ("#e377c2", "X"),
    "resize": ("#17becf", "*"),
}


class Robustness:
    """The conditions a suite asks for: ``types`` (in ``TYPES``' order) x ``levels`` (ascending, 1..5)."""

    def __init__(self, types=TYPES, levels=LEVELS):
        self.types, self.levels = tuple(types), tuple(levels)

    @property
    def conditions(self):
        return [(name, level) for name in self.types for level in self.levels]

    def to_json(self):
        return {"types": list(self.types), "levels": list(self.levels)}


def _listed(value):
    return value if isinstance(value, list) else [value]


def parse_robustness(value, path):
    """The suite file's ``robustness`` value as a Robustness (None for ``false``); every problem is one line
    naming the file."""
    where = f"{path}: robustness"
    if value is False:
        return None
    if value is True or value is None:
        return Robustness()
    if not isinstance(value, dict):
        raise DfdError(f"{where} must be a mapping {{types: [...], levels: [...]}} (or true for every type at levels "
                       f"1..5), not {value!r}")
    unknown = sorted(set(value) - set(ROBUSTNESS_KEYS), key=str)
    if unknown:
        raise DfdError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(ROBUSTNESS_KEYS)})")
    types = _listed(value.get("types", list(TYPES)))
    bad = [name for name in types if not isinstance(name, str) or name not in TYPES]
    if bad or not types:
        raise DfdError(f"{where}.types: " + (f"unknown perturbation {bad[0]!r}" if bad else "empty")
                       + f" (known: {', '.join(TYPES)})")
    levels = _listed(value.get("levels", list(LEVELS)))
    bad = [level for level in levels if isinstance(level, bool) or level not in LEVELS]
    if bad or not levels:
        raise DfdError(f"{where}.levels: " + (f"{bad[0]!r} is not a level" if bad else "empty")
                       + f" (levels are {', '.join(map(str, LEVELS))}; the clean score is level 0, always there)")
    return Robustness([name for name in TYPES if name in types], sorted(set(levels)))


# ---------------------------------------------------------------------------------------------- the run


def _videos(test_set):
    """The videos a test set's index.json promises (None when they cannot be counted without running a pipe:)."""
    if any(pattern.lstrip().startswith("pipe:") for pattern in test_set.shards):
        return None
    try:
        return count_samples(storage.expand_shards(test_set.shards))
    except (DfdError, OSError):
        return None


def cost_line(suite):
    """One line: videos x perturbations = video scorings, in how many evaluations (the progress bar's unit: one per
    test set and perturbation), and what h264 costs on top."""
    robustness = suite.robustness
    counts = [_videos(test_set) for test_set in suite.test_sets.values()]
    conditions = len(robustness.conditions)
    known = sum(count for count in counts if count is not None)
    unknown = sum(count is None for count in counts)
    videos = f"{known} videos" + (f" (+ {unknown} test set(s) not counted: no index)" if unknown else "")
    h264 = [level for name, level in robustness.conditions if PERTURBATIONS.get(name).stage == "video"]
    encodes = (f"; h264 re-encodes every source video {len(h264)} time(s) with libx264 before decoding "
               f"({known * len(h264)} encodes)" if h264 else "")
    return (f"robustness: {videos} x {conditions} perturbations ({len(robustness.types)} types x "
            f"{len(robustness.levels)} levels) = {known * conditions} video scorings in "
            f"{conditions * len(suite.test_sets)} evaluations after the clean pass{encodes}")


def condition_entry(metrics, folder):
    """What robustness.json keeps of one perturbed evaluation."""
    intervals = (metrics.get("intervals") or {}).get("video") or {}
    video = {key: value for name in VIDEO_METRICS
             for key, value in ((name, metrics["video"]["head"][name]), (f"{name}_ci", intervals.get(name)))}
    return {"video": video, "videos": metrics["videos"],
            "not_scored": metrics["accounting"]["skipped"] + metrics["accounting"]["missing"], "evaluation": folder}


def _mean(values):
    values = [value for value in values if value is not None and not math.isnan(value)]
    return float(np.mean(values)) if values else None


def run_robustness(checkpoint, suite, out_dir, context, table, progress=print, **scoring):
    """Score every test set of ``suite`` under each of ``suite.robustness``'s conditions (all ranks take part);
    rank 0 writes robustness.json/.md/.png beside ``table`` (its clean table, None on the other ranks) and
    returns the robustness dict; other ranks return None. ``scoring``: ``run_evaluation``'s keyword arguments
    of the clean pass (threshold, batch_size, workers, decoder, bootstrap, base_weights)."""
    from tqdm import tqdm

    out_dir, robustness = Path(out_dir), suite.robustness
    conditions = robustness.conditions
    sets = {}
    bar = tqdm(total=len(conditions) * len(suite.test_sets), desc="robustness", unit="evaluation", file=sys.stderr,
               disable=not context.is_main, mininterval=0.5)
    with bar:
        for test_set in suite.test_sets.values():
            results = {}
            for name, level in conditions:
                bar.set_postfix_str(f"{test_set.name}: {name}:{level}", refresh=False)
                folder = f"sets/{test_set.folder}/robustness/{name}-{level}"
                metrics = run_evaluation(checkpoint, test_set.shards, out_dir / folder, context=context, verify=False,
                                         perturb=f"{name}:{level}", **scoring)
                bar.update(1)
                if metrics is not None:  # rank 0
                    results.setdefault(name, {})[str(level)] = condition_entry(metrics, folder)
            if context.is_main:
                sets[test_set.name] = set_entry(table["test_sets"][test_set.name], results, robustness)
                entry = sets[test_set.name]
                with tqdm.external_write_mode(file=sys.stderr):  # the line above the bar, not through it
                    progress(f"robustness: {test_set.name}: mean AUC {format_fixed(entry['mean_auc'], 3)} over "
                             f"{len(conditions)} perturbations (clean "
                             f"{format_fixed(entry['clean']['video']['auc'], 3)})")
    if not context.is_main:
        return None
    result = {"suite": table["suite"], "checkpoint": table["checkpoint"], "calibration": table["calibration"],
              "bootstrap": table["bootstrap"], **robustness.to_json(),
              "parameters": {name: {"meaning": LEVEL_PARAMETERS[name][0],
                                    "values": {str(level): LEVEL_PARAMETERS[name][1][level - 1] for level in LEVELS}}
                             for name in robustness.types},
              "summary": "mean_auc: the mean video AUC over every (type, level) run; mean_auc_by_type: over levels",
              "sets": sets}
    write_json(out_dir / "robustness.json", result)
    write_robustness_markdown(result, out_dir / "robustness.md")
    plot_robustness(result, out_dir / "robustness.png")
    return result


def set_entry(clean, results, robustness):
    """robustness.json's entry of one test set: the clean numbers (the table's), each condition, the means."""
    entry = {"videos": clean["videos"], "groups": clean["groups"], "interval_note": clean.get("interval_note"),
             "clean": {"video": {key: clean["video"][key] for name in VIDEO_METRICS for key in (name, f"{name}_ci")},
                       "evaluation": clean["evaluation"]}}
    entry.update(results)
    entry["mean_auc_by_type"] = {name: _mean(results[name][str(level)]["video"]["auc"] for level in robustness.levels)
                                 for name in robustness.types}
    entry["mean_auc"] = _mean(results[name][str(level)]["video"]["auc"] for name, level in robustness.conditions)
    return entry


# ---------------------------------------------------------------------------------------------- the files


def write_robustness_markdown(result, path):
    levels, types = result["levels"], result["types"]
    lines = [f"# Robustness: {result['suite']}", "",
             f"- checkpoint: `{result['checkpoint']}`",
             "- video AUC (calibrated head) of each test set with every video perturbed; level 0 is the clean "
             "score (table.md); intervals, log-loss and ECE of each cell are in robustness.json",
             "- mean: over the levels of the row; the mean AUC under perturbation is over every cell of the set "
             "(the summary DeeperForensics-style robustness tables report)", ""]
    for name, entry in result["sets"].items():
        lines += [f"## {name}", "",
                  f"{entry['videos']} videos; mean AUC under perturbation {format_fixed(entry['mean_auc'], 3)} "
                  f"(clean {format_fixed(entry['clean']['video']['auc'], 3)})", "",
                  "| perturbation | clean | " + " | ".join(f"level {level}" for level in levels) + " | mean |",
                  "|---|---:|" + "---:|" * len(levels) + "---:|"]
        clean = format_fixed(entry["clean"]["video"]["auc"], 3)
        for kind in types:
            cells = [format_fixed(entry[kind][str(level)]["video"]["auc"], 3) for level in levels]
            lines.append(f"| {kind} | {clean} | " + " | ".join(cells)
                         + f" | {format_fixed(entry['mean_auc_by_type'][kind], 3)} |")
        if entry["clean"]["video"]["auc"] is None:
            lines.append("\nAUC is undefined here (`-`): the set holds videos of one class only.")
        not_scored = sum(entry[kind][str(level)]["not_scored"] for kind in types for level in levels)
        if not_scored:
            lines.append(f"\n{not_scored} video scoring(s) under perturbation failed (skipped or missing): named in "
                         "each condition's metrics.json.")
        lines.append("")
    lines += ["## What each level means", "",
              "| perturbation | parameter | " + " | ".join(f"level {level}" for level in levels) + " |",
              "|---|---|" + "---:|" * len(levels)]
    for kind in types:
        parameter = result["parameters"][kind]
        lines.append(f"| {kind} | {parameter['meaning']} | "
                     + " | ".join(str(parameter["values"][str(level)]) for level in levels) + " |")
    lines += ["", "![AUC against perturbation level](robustness.png)", ""]
    with atomic_open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path


def plot_robustness(result, path):
    """A panel per test set: video AUC against level (0 = clean), a line per type, the clean AUC dashed."""
    names = list(result["sets"])
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure, axes = new_figure(4.2 * columns + 1.6, 3.6 * rows, rows=rows, columns=columns, squeeze=False,
                              sharey=True)
    levels = [0, *result["levels"]]
    lowest = 0.5
    for panel, name in zip(axes.flat, names):
        entry = result["sets"][name]
        clean = entry["clean"]["video"]["auc"]
        if clean is not None:
            panel.axhline(clean, color="black", linestyle="--", linewidth=1.2, label="clean AUC", zorder=1)
        for kind in result["types"]:
            values = [clean, *(entry[kind][str(level)]["video"]["auc"] for level in result["levels"])]
            shown = [np.nan if value is None else value for value in values]
            lowest = min([lowest, *(value for value in shown if not np.isnan(value))])
            color, marker = TYPE_STYLES[kind]
            panel.plot(levels, shown, color=color, marker=marker, markersize=5, linewidth=1.5, label=kind, zorder=2)
        panel.axhline(0.5, color="0.7", linestyle=":", linewidth=1, zorder=0)
        if clean is None and entry["mean_auc"] is None:
            panel.text(0.5, 0.5, "AUC undefined:\nvideos of one class only", ha="center", va="center",
                       transform=panel.transAxes, color="0.4")
        panel.set_title(f"{name}\n({entry['videos']} videos; mean under perturbation "
                        f"{format_fixed(entry['mean_auc'], 3)})", fontsize=9)
        panel.set_xticks(levels, ["clean", *map(str, result["levels"])])
        panel.set_xlabel("perturbation level", fontsize=8)
        panel.grid(alpha=0.3)
    for panel in axes.flat[len(names):]:
        panel.set_visible(False)
    for panel in axes[:, 0]:
        panel.set_ylabel("video AUC", fontsize=8)
    axes.flat[0].set_ylim(max(0.0, math.floor((lowest - 0.05) * 10) / 10), 1.02)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=8, frameon=False)
    figure.suptitle(f"Robustness: {result['suite']}", fontsize=11)
    return save_figure(figure, path)
