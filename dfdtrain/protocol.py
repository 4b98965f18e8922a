"""The protocol: one checkpoint evaluated on every test set a suite names, as one table with intervals.

    suite = load_suite("configs/protocols/ffpp_c23_cross.yaml", root="shards")
    table = run_protocol("runs/ffpp/checkpoints/best", suite, "protocol/ffpp")   # rank 0: table.json's dict

A suite is YAML: ``name``, optional ``description`` and ``root`` (relative shard patterns are joined to it;
``--root`` overrides), and ``test_sets``: display name -> a shard pattern (or a list of them), or a mapping
``{shards: ..., note: ...}``. Each test set is one ``run_evaluation`` (distributed like ``evaluate``, every
video accounted for, the detector's calibration applied) written to ``DIR/sets/<name>/``; the table
(``table.json``, ``table.md``, ``protocol.png``) puts their video- and frame-level metrics side by side, each
with its 95% bootstrap interval over groups, and the per-method AUC where a set has methods.

Model selection never sees these sets: the checkpoint and its threshold and temperature come from training's
validation (or ``dfdtrain calibrate`` on validation shards), and ``train`` refuses validation shards that
overlap a test split.
"""

import os
import re
from pathlib import Path

import numpy as np

from dfdtrain.data import storage
from dfdtrain.data.storage import expand_shards
from dfdtrain.engine.distributed import barrier
from dfdtrain.errors import DfdError
from dfdtrain.evaluation import _new_figure, _save, format_interval, run_evaluation
from dfdtrain.fileio import atomic_open, read_yaml_mapping, write_json

SUITE_KEYS = ("name", "description", "root", "test_sets")
TEST_SET_KEYS = ("shards", "note")
TABLE_FILES = ("table.json", "table.md", "protocol.png")
# the table's metric columns: key -> header
COLUMNS = {"auc": "AUC", "ap": "AP", "eer": "EER", "log_loss": "log-loss", "ece": "ECE", "accuracy": "accuracy"}


class TestSet:
    def __init__(self, name, shards, note=""):
        self.name, self.shards, self.note = name, shards, note
        self.folder = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "set"


class Suite:
    def __init__(self, name, test_sets, description="", path=None):
        self.name, self.test_sets, self.description, self.path = name, test_sets, description, path


def _patterns(value, where):
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not patterns or not all(isinstance(item, str) and item for item in patterns):
        raise DfdError(f"{where}: shards must be a shard pattern or a list of them, not {value!r}")
    return patterns


def _joined(pattern, root):
    if root is None or "://" in pattern or pattern.startswith("pipe:") or os.path.isabs(pattern):
        return pattern
    return os.path.join(root, pattern)


def load_suite(path, root=None, only=()):
    """The Suite in YAML file ``path``; ``root`` overrides its ``root``; ``only`` keeps the named test sets.
    Every problem is one line naming the file and the key."""
    values = read_yaml_mapping(path, "suite")
    unknown = sorted(set(values) - set(SUITE_KEYS))
    if unknown:
        raise DfdError(f"{path}: unknown suite key {unknown[0]!r} (known: {', '.join(SUITE_KEYS)})")
    name, sets = values.get("name"), values.get("test_sets")
    if not isinstance(name, str) or not name:
        raise DfdError(f"{path}: 'name' must be a non-empty string")
    if not isinstance(sets, dict) or not sets:
        raise DfdError(f"{path}: 'test_sets' must map a display name to shards")
    root = root if root is not None else values.get("root")
    test_sets, folders = {}, set()
    for set_name, value in sets.items():
        where = f"{path}: test_sets.{set_name}"
        options = value if isinstance(value, dict) else {"shards": value}
        unknown = sorted(set(options) - set(TEST_SET_KEYS))
        if unknown:
            raise DfdError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(TEST_SET_KEYS)})")
        patterns = [_joined(pattern, root) for pattern in _patterns(options.get("shards"), where)]
        test_set = TestSet(str(set_name), patterns, str(options.get("note") or ""))
        if test_set.folder in folders:
            raise DfdError(f"{where}: its folder name {test_set.folder!r} clashes with another test set's")
        folders.add(test_set.folder)
        test_sets[test_set.name] = test_set
    missing = [name for name in only if name not in test_sets]
    if missing:
        raise DfdError(f"{path}: no test set {missing[0]!r} (known: {', '.join(test_sets)})")
    if only:
        test_sets = {name: test_sets[name] for name in only}
    return Suite(name, test_sets, str(values.get("description") or ""), str(path))


def check_shards(suite):
    """Every test set's shards exist: else one line naming the set and its pattern (before any scoring)."""
    for test_set in suite.test_sets.values():
        try:
            expand_shards(test_set.shards)
        except DfdError as error:
            raise DfdError(f"test set {test_set.name!r} of {suite.path}: {error} (choose sets with --only, or set "
                           "--root)") from None


# ---------------------------------------------------------------------------------------------- the table


def _level(values, intervals):
    return {key: value for name in COLUMNS
            for key, value in ((name, values[name]), (f"{name}_ci", (intervals or {}).get(name)))}


def table_entry(metrics, folder, note=""):
    """What the table keeps of one test set's evaluation."""
    intervals = metrics.get("intervals") or {}
    calibration = metrics["calibration"]
    video = {**_level(metrics["video"]["head"], intervals.get("video")),
             "log_loss_raw": calibration["log_loss_raw"], "ece_raw": calibration["ece_raw"]}
    methods = {name: {"auc": values["auc"], "real": values["real"], "fake": values["fake"]}
               for name, values in (metrics.get("breakdown") or {}).get("method", {}).items()}
    return {"videos": metrics["videos"], "real": metrics["labels"]["real"], "fake": metrics["labels"]["fake"],
            "groups": intervals.get("groups"), "frames": metrics["frames"], "shards": len(metrics["shards"]),
            "not_scored": metrics["accounting"]["skipped"] + metrics["accounting"]["missing"],
            "threshold": metrics["threshold"], "note": note, "video": video,
            "frame": _level(metrics["frame"], intervals.get("frame")), "methods": methods,
            "evaluation": f"sets/{folder}"}


def write_table_markdown(table, path):
    bootstrap = table["bootstrap"]
    lines = [f"# {table['suite']}", ""]
    if table.get("description"):
        lines += [table["description"], ""]
    lines += [f"- checkpoint: `{table['checkpoint']}`",
              f"- calibration: {table['calibration']}",
              f"- intervals: 95% bootstrap (percentile, bias-corrected), {bootstrap['resamples']} resamples of whole "
              "groups (identities / source pairs)" if bootstrap["resamples"] else "- intervals: none (--bootstrap 0)",
              "- every figure is value [95% interval]; accuracy at the detector's threshold", ""]
    for level, title in (("video", "Video level (temporal head, calibrated P(fake))"),
                         ("frame", "Frame level (every frame with its video's label)")):
        count = "videos (real / fake)" if level == "video" else "frames"
        lines += [f"## {title}", "", f"| test set | {count} | " + " | ".join(COLUMNS.values()) + " |",
                  "|---|---:|" + "---:|" * len(COLUMNS)]
        for name, entry in table["test_sets"].items():
            values = entry[level]
            cells = [format_interval(values[key], values[f"{key}_ci"]) for key in COLUMNS]
            if level == "video":
                cells[list(COLUMNS).index("log_loss")] += f" (raw {_number(values['log_loss_raw'])})"
                cells[list(COLUMNS).index("ece")] += f" (raw {_number(values['ece_raw'])})"
            counted = (f"{entry['videos']} ({entry['real']} / {entry['fake']})" if level == "video"
                       else str(entry["frames"]))
            lines.append(f"| [{name}]({entry['evaluation']}/report.md) | {counted} | " + " | ".join(cells) + " |")
        lines.append("")
    methods = [(name, method, values) for name, entry in table["test_sets"].items()
               for method, values in entry["methods"].items()]
    if methods:
        lines += ["## Video AUC per manipulation method (its fakes against the set's reals)", "",
                  "| test set | method | real | fake | AUC |", "|---|---|---:|---:|---:|"]
        lines += [f"| {name} | {method} | {values['real']} | {values['fake']} | {_number(values['auc'])} |"
                  for name, method, values in methods]
        lines.append("")
    notes = [(name, entry) for name, entry in table["test_sets"].items() if entry["note"] or entry["not_scored"]]
    if notes:
        lines += ["## Notes", ""]
        for name, entry in notes:
            unscored = (f" {entry['not_scored']} promised video(s) not scored (named in {entry['evaluation']}/"
                        "metrics.json)." if entry["not_scored"] else "")
            lines.append(f"- {name}: {entry['note']}{unscored}".rstrip())
        lines.append("")
    lines += ["![test sets compared](protocol.png)", ""]
    with atomic_open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path


def _number(value):
    return "-" if value is None else f"{value:.3f}"


def plot_protocol(table, path):
    """The test sets side by side: video and frame AUC, log-loss and ECE (raw and calibrated), with intervals."""
    names = list(table["test_sets"])
    entries = [table["test_sets"][name] for name in names]
    positions = np.arange(len(names))
    figure, axes = _new_figure(12.0, max(3.2, 0.6 * len(names) + 2.0), columns=3, sharey=True)
    panels = [
        (axes[0], "AUC (95% interval)", [("video", "auc", "video", "#1f77b4"), ("frame", "auc", "frame", "#ff7f0e")],
         (0, 1.0)),
        (axes[1], "log-loss, video", [("video", "log_loss_raw", "raw", "0.6"),
                                      ("video", "log_loss", "calibrated", "#2ca02c")], None),
        (axes[2], "ECE, video", [("video", "ece_raw", "raw", "0.6"), ("video", "ece", "calibrated", "#9467bd")],
         None),
    ]
    height = 0.38
    for panel, title, bars, limits in panels:
        right = 0.0
        for offset, (level, key, label, color) in enumerate(bars):
            values = [entry[level][key] for entry in entries]
            shown = [value if value is not None else 0.0 for value in values]
            where = positions + (offset - 0.5) * height
            intervals = [entry[level].get(f"{key}_ci") for entry in entries]
            errors = np.array([[value - ci[0], ci[1] - value] if ci and value is not None else [0, 0]
                               for value, ci in zip(shown, intervals)]).T
            panel.barh(where, shown, height=height * 0.92, color=color, label=label,
                       xerr=np.clip(errors, 0, None) if any(intervals) else None, capsize=3,
                       error_kw={"elinewidth": 1, "ecolor": "black"})
            for y, value, interval in zip(where, values, intervals):
                end = max(value or 0.0, interval[1] if interval else 0.0)  # right of the interval's whisker
                panel.text(end, y, f" {_number(value) if value is not None else 'n/a'}", va="center", fontsize=7)
                right = max(right, end)
        # room on the right for the value labels
        panel.set_xlim(0, (limits[1] if limits and limits[1] else max(right, 1e-3)) * 1.2)
        if title.startswith("AUC"):
            panel.axvline(0.5, color="0.5", linestyle="--", linewidth=1, zorder=0)
            panel.set_xticks(np.linspace(0, 1, 6))
        panel.set_title(title, fontsize=10)
        panel.grid(axis="x", alpha=0.3)
        panel.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    axes[0].set_yticks(positions, [f"{name}\n({entry['videos']} videos)" for name, entry in zip(names, entries)])
    axes[0].invert_yaxis()
    figure.suptitle(table["suite"], fontsize=11)
    return _save(figure, path)


# ---------------------------------------------------------------------------------------------- the run


def run_protocol(checkpoint, suite, out_dir, context, bootstrap=1000, batch_size=8, workers=2, decoder="pyav",
                 verify=True, threshold=None, progress=print):
    """Evaluate ``checkpoint`` on every test set of ``suite`` into ``out_dir`` (all ranks take part in each);
    returns the table dict on rank 0 and None on the other ranks."""
    check_shards(suite)
    out_dir = Path(out_dir)
    entries, calibration = {}, None
    for number, test_set in enumerate(suite.test_sets.values(), 1):
        metrics = run_evaluation(checkpoint, test_set.shards, out_dir / "sets" / test_set.folder, threshold=threshold,
                                 batch_size=batch_size, workers=workers, decoder=decoder, context=context,
                                 verify=verify, bootstrap=bootstrap)
        if metrics is None:  # not rank 0
            continue
        entries[test_set.name] = table_entry(metrics, test_set.folder, test_set.note)
        calibration = metrics["calibration"]["description"]
        video = entries[test_set.name]["video"]
        progress(f"[{number}/{len(suite.test_sets)}] {test_set.name}: {metrics['videos']} videos, video AUC "
                 f"{format_interval(video['auc'], video['auc_ci'])}, log-loss {_number(video['log_loss'])}")
    barrier()
    if not context.is_main:
        return None
    table = {"suite": suite.name, "description": suite.description, "suite_file": suite.path,
             "checkpoint": str(checkpoint), "calibration": calibration,
             "bootstrap": {"resamples": bootstrap, "confidence": 0.95, "by": "group"},
             "shards": {name: [storage.mask(pattern) for pattern in test_set.shards]
                        for name, test_set in suite.test_sets.items()},
             "test_sets": entries}
    write_json(out_dir / "table.json", table)
    write_table_markdown(table, out_dir / "table.md")
    plot_protocol(table, out_dir / "protocol.png")
    return table
