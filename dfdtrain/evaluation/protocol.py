"""The protocol: one checkpoint evaluated on every test set a suite names, as one table with intervals.

    suite = load_suite("configs/protocols/ffpp_c23_cross.yaml", root="shards")
    table = run_protocol("runs/ffpp/checkpoints/best", suite, "protocol/ffpp")   # rank 0: table.json's dict

A suite is YAML: ``name``, optional ``description`` and ``root`` (relative shard patterns are joined to it;
``--root`` overrides), and ``test_sets``: display name -> a shard pattern (or a list of them), or a mapping
``{shards: ..., note: ...}``. Each test set is one ``run_evaluation`` (distributed like ``evaluate``, every
video accounted for, the detector's calibration applied) written to ``DIR/sets/<name>/``; the table
(``table.json``, ``table.md``, ``protocol.png``) puts their video- and frame-level metrics side by side, each
with its 95% bootstrap interval over groups, and the per-method AUC where a set has methods. It names each set's
groups (real / fake); a set with fewer than 2 groups of a class has no intervals: ``n/a (N groups)`` in
``table.md``, null in ``table.json`` with the reason (``interval_note``).
An optional ``robustness`` block also scores every set under each perturbation at each level
(``dfdtrain.evaluation.robustness``: robustness.md, robustness.json, robustness.png beside the table).

Model selection never sees these sets: the checkpoint and its threshold and temperature come from training's
validation (or ``dfdtrain calibrate`` on validation shards), and ``train`` refuses validation shards that
overlap a test split. Nor did training: a test set that shares videos or groups with the run's training or
validation shards (its ``config.yaml``, two levels above a checkpoint) is refused before anything is scored, or,
with ``allow_overlap`` (``--allow-overlap``), scored and marked as such in the table (``find_leakage``).

A ``pipe:`` pattern runs a shell command: a suite file may name one only with ``allow_pipe`` (``--allow-pipe``).
"""

import os
import re
from pathlib import Path

import numpy as np

from dfdtrain.core.distributed import barrier
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import atomic_open, check_output_folder, read_yaml_mapping, write_json
from dfdtrain.core.text import format_fixed
from dfdtrain.data import storage
from dfdtrain.data.shards.overlap import overlap, sample_identities
from dfdtrain.data.storage import expand_shards
from dfdtrain.evaluation.evaluate import run_evaluation
from dfdtrain.evaluation.plots import new_figure, save_figure
from dfdtrain.evaluation.report import format_interval, groups_phrase
from dfdtrain.evaluation.robustness import cost_line, parse_robustness, run_robustness

SUITE_KEYS = ("name", "description", "root", "test_sets", "robustness")
TEST_SET_KEYS = ("shards", "note")
TABLE_FILES = ("table.json", "table.md", "protocol.png")
# the table's metric columns: key -> header
COLUMNS = {"auc": "AUC", "ap": "AP", "eer": "EER", "log_loss": "log-loss", "ece": "ECE", "accuracy": "accuracy"}


class TestSet:
    def __init__(self, name, shards, note=""):
        self.name, self.shards, self.note = name, shards, note
        self.folder = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "set"


class Suite:
    def __init__(self, name, test_sets, description="", path=None, robustness=None):
        self.name, self.test_sets, self.description, self.path = name, test_sets, description, path
        self.robustness = robustness  # a robustness.Robustness, or None


def _patterns(value, where):
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not patterns or not all(isinstance(item, str) and item for item in patterns):
        raise DfdError(f"{where}: shards must be a shard pattern or a list of them, not {value!r}")
    return patterns


def _joined(pattern, root):
    if root is None or "://" in pattern or pattern.startswith("pipe:") or os.path.isabs(pattern):
        return pattern
    return os.path.join(root, pattern)


def _is_pipe(text):
    return str(text).lstrip().startswith("pipe:")


def load_suite(path, root=None, only=(), allow_pipe=False):
    """The Suite in YAML file ``path``; ``root`` overrides its ``root``; ``only`` keeps the named test sets.
    A ``pipe:`` pattern (or root) in the file is refused unless ``allow_pipe``: it would run a command (``root``
    given here is the caller's own). Every problem is one line naming the file and the key."""
    values = read_yaml_mapping(path, "suite")
    unknown = sorted(set(values) - set(SUITE_KEYS), key=str)
    if unknown:
        raise DfdError(f"{path}: unknown suite key {unknown[0]!r} (known: {', '.join(SUITE_KEYS)})")
    name, sets = values.get("name"), values.get("test_sets")
    if not isinstance(name, str) or not name:
        raise DfdError(f"{path}: 'name' must be a non-empty string")
    if not isinstance(sets, dict) or not sets:
        raise DfdError(f"{path}: 'test_sets' must map a display name to shards")
    if root is None:
        root = values.get("root")
        if root is not None and (not isinstance(root, str) or not root):
            raise DfdError(f"{path}: 'root' must be a folder (a non-empty string) that relative shard patterns are "
                           f"joined to, not {root!r}")
        if root is not None and _is_pipe(root) and not allow_pipe:
            raise DfdError(f"{path}: 'root' {root!r} is a pipe: command; a suite file runs no command without "
                           "--allow-pipe")
    test_sets, folders = {}, set()
    for set_name, value in sets.items():
        where = f"{path}: test_sets.{set_name}"
        options = value if isinstance(value, dict) else {"shards": value}
        unknown = sorted(set(options) - set(TEST_SET_KEYS), key=str)
        if unknown:
            raise DfdError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(TEST_SET_KEYS)})")
        raw = _patterns(options.get("shards"), where)
        piped = [pattern for pattern in raw if _is_pipe(pattern)]
        if piped and not allow_pipe:
            raise DfdError(f"{where}: {piped[0]!r} is a pipe: command; a suite file runs no command without "
                           "--allow-pipe (or score it with dfdtrain evaluate --shards 'pipe:...')")
        patterns = [_joined(pattern, root) for pattern in raw]
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
    robustness = parse_robustness(values["robustness"], path) if "robustness" in values else None
    return Suite(name, test_sets, str(values.get("description") or ""), str(path), robustness)


def check_shards(suite):
    """Every test set's shards exist: else one line naming the set and its pattern (before any scoring)."""
    for test_set in suite.test_sets.values():
        try:
            expand_shards(test_set.shards)
        except DfdError as error:
            raise DfdError(f"test set {test_set.name!r} of {suite.path}: {error} (choose sets with --only, or set "
                           "--root)") from None


# ---------------------------------------------------------------------------------------------- leakage
def run_data(data):
    """[(config key, role, shard pattern)] of the run's data a test set is compared with (role: what the messages
    call it): ``data.train_shards`` or each ``data.train_sources`` entry's shards, and ``data.val_shards``."""
    sources = data.get("train_sources") or []
    training = [(f"train_sources[{index}].shards", "training" if len(sources) == 1 else f"training source {index}",
                 source.get("shards")) for index, source in enumerate(sources) if isinstance(source, dict)]
    if not sources:
        training = [("train_shards", "training", data.get("train_shards"))]
    return training + [("val_shards", "validation", data.get("val_shards"))]



class Leakage:
    """What the suite's test sets share with the data the checkpoint's run trained and validated on.

    ``found``: {test set name: {role: Overlap}} for each set that shares anything; ``compared``: {role: the run's
    shard pattern} it was compared with; ``unchecked``: why nothing could be compared (a bundle names no training
    data, the run's shards are not here), else None; ``unlisted``: shards whose videos could not be listed
    (pipe:, remote without an index.json), on either side."""

    def __init__(self, found=None, compared=None, unchecked=None, unlisted=()):
        self.found, self.compared, self.unchecked = found or {}, compared or {}, unchecked
        self.unlisted = list(unlisted)

    def describe(self, name):
        """'shares 4 videos (e.g. 'k') with the run's validation shards (val-*.tar)' for test set ``name``."""
        return "; ".join(f"{found.describe()} with the run's {role} shards ({self.compared[role]})"
                         for role, found in self.found[name].items())

    def summary(self):
        """One line for the table: what was compared, and the outcome."""
        if self.unchecked:
            return f"not checked: {self.unchecked}"
        compared = " and ".join(f"{role} shards ({pattern})" for role, pattern in self.compared.items())
        outcome = (f"{len(self.found)} test set(s) share data with them, marked OVERLAP below: not a measure of "
                   "generalisation" if self.found else "no test set shares a video or a group with them")
        unlisted = f"; {len(self.unlisted)} shard(s) could not be listed (pipe:, or remote without index.json)" \
            if self.unlisted else ""
        return f"test sets compared by video key and group with the run's {compared}: {outcome}{unlisted}"

    def to_json(self):
        return {"compared_with": self.compared, "unchecked": self.unchecked, "unlisted_shards": self.unlisted,
                "overlapping_sets": sorted(self.found)}


def find_leakage(checkpoint, suite):
    """The Leakage of ``suite``'s test sets against the training and validation shards of the run that
    ``checkpoint`` (a checkpoint folder, as ``settings_folder`` gives) belongs to: its ``config.yaml``, whose
    relative shard patterns are read from the current folder, as training read them."""
    checkpoint = Path(checkpoint)
    config_path = checkpoint.parent.parent / "config.yaml"
    if checkpoint.parent.name != "checkpoints" or not config_path.is_file():
        return Leakage(unchecked=f"{checkpoint} is not a checkpoint inside a run directory (a bundle names no "
                                 "training data), so the test sets were not compared with it")
    try:
        data = read_yaml_mapping(config_path, "run config").get("data")
    except (DfdError, UnicodeDecodeError) as error:
        return Leakage(unchecked=f"{config_path} unreadable ({error})")
    references, compared, unlisted = {}, {}, []
    for key, role, pattern in (run_data(data) if isinstance(data, dict) else []):
        if not pattern or not isinstance(pattern, str):
            continue
        try:
            references[role] = sample_identities(expand_shards(pattern))
        except DfdError as error:
            return Leakage(unchecked=f"the run's data.{key} ({storage.redact(pattern)}, in {config_path}) cannot be "
                                     f"read from here ({error})")
        compared[role] = storage.redact(pattern)
        unlisted += references[role].unchecked
    if not references:
        return Leakage(unchecked=f"{config_path} names no training or validation shards")
    found = {}
    for test_set in suite.test_sets.values():
        identities = sample_identities(expand_shards(test_set.shards))
        unlisted += identities.unchecked
        shared = {role: overlap(identities, reference) for role, reference in references.items()}
        shared = {role: value for role, value in shared.items() if value}
        if shared:
            found[test_set.name] = shared
    return Leakage(found, compared, None, unlisted)


def refuse_leakage(leakage, suite):
    """One line for the first test set that shares data with the run, unless there is none."""
    if not leakage.found:
        return
    name = next(iter(leakage.found))
    more = len(leakage.found) - 1
    raise DfdError(f"test set {name!r} of {suite.path} {leakage.describe(name)}"
                   + (f" (and {more} more test set(s) share data with the run)" if more else "")
                   + ": its score would not measure generalisation; drop it (--only) or pass --allow-overlap to "
                     "score it marked as OVERLAP in the table")


# ---------------------------------------------------------------------------------------------- the table


def _level(values, intervals):
    return {key: value for name in COLUMNS
            for key, value in ((name, values[name]), (f"{name}_ci", (intervals or {}).get(name)))}


def table_entry(metrics, folder, note="", overlap=None):
    """What the table keeps of one test set's evaluation; ``overlap``: what it shares with the run's data
    ({role: Overlap}), when it was scored with --allow-overlap."""
    intervals = metrics.get("intervals") or {}
    calibration = metrics["calibration"]
    video = {**_level(metrics["video"]["head"], intervals.get("video")),
             "log_loss_raw": calibration["log_loss_raw"], "ece_raw": calibration["ece_raw"]}
    methods = {name: {"auc": values["auc"], "real": values["real"], "fake": values["fake"]}
               for name, values in (metrics.get("breakdown") or {}).get("method", {}).items()}
    groups = metrics["groups"]
    return {"videos": metrics["videos"], "real": metrics["labels"]["real"], "fake": metrics["labels"]["fake"],
            "groups": groups["total"], "groups_real": groups["real"], "groups_fake": groups["fake"],
            # why the intervals are null (too few groups of a class), else None
            "interval_note": intervals.get("problem"),
            "frames": metrics["frames"], "shards": len(metrics["shards"]),
            "not_scored": metrics["accounting"]["skipped"] + metrics["accounting"]["missing"],
            "threshold": metrics["threshold"], "note": note, "video": video,
            "frame": _level(metrics["frame"], intervals.get("frame")), "methods": methods,
            "evaluation": f"sets/{folder}",
            "overlap": {role: found.to_json() for role, found in (overlap or {}).items()}}


def write_table_markdown(table, path):
    bootstrap = table["bootstrap"]
    lines = [f"# {table['suite']}", ""]
    if table.get("description"):
        lines += [table["description"], ""]
    lines += [f"- checkpoint: `{table['checkpoint']}`",
              f"- calibration: {table['calibration']}",
              f"- intervals: 95% bootstrap (percentile, bias-corrected), {bootstrap['resamples']} resamples of whole "
              "groups (identities / source pairs); a set with fewer than 2 groups of real or of fake videos has "
              "none: n/a (N groups)" if bootstrap["resamples"] else "- intervals: none (--bootstrap 0)",
              "- every figure is value [95% interval]; accuracy at the detector's threshold"]
    if table.get("leakage"):
        lines.append(f"- leakage: {table['leakage']['summary']}")
    if table.get("robustness"):
        lines.append("- robustness: every set also scored under each perturbation, in [robustness.md](robustness.md)")
    lines.append("")
    for level, title in (("video", "Video level (temporal head, calibrated P(fake))"),
                         ("frame", "Frame level (every frame with its video's label)")):
        count = "videos (real / fake)" if level == "video" else "frames"
        lines += [f"## {title}", "", f"| test set | {count} | groups (real / fake) | " + " | ".join(COLUMNS.values())
                  + " |", "|---|---:|---:|" + "---:|" * len(COLUMNS)]
        for name, entry in table["test_sets"].items():
            values = entry[level]
            withheld = entry["groups"] if entry.get("interval_note") else None
            cells = [format_interval(values[key], values[f"{key}_ci"], groups=withheld) for key in COLUMNS]
            if level == "video":
                cells[list(COLUMNS).index("log_loss")] += f" (raw {format_fixed(values['log_loss_raw'], 3)})"
                cells[list(COLUMNS).index("ece")] += f" (raw {format_fixed(values['ece_raw'], 3)})"
            counted = (f"{entry['videos']} ({entry['real']} / {entry['fake']})" if level == "video"
                       else str(entry["frames"]))
            shown = f"[{name}]({entry['evaluation']}/report.md)" + (" **OVERLAP**" if entry.get("overlap") else "")
            groups = f"{entry['groups']} ({entry['groups_real']} / {entry['groups_fake']})"
            lines.append(f"| {shown} | {counted} | {groups} | " + " | ".join(cells) + " |")
        lines.append("")
    methods = [(name, method, values) for name, entry in table["test_sets"].items()
               for method, values in entry["methods"].items()]
    if methods:
        lines += ["## Video AUC per manipulation method (its fakes against the set's reals)", "",
                  "| test set | method | real | fake | AUC |", "|---|---|---:|---:|---:|"]
        lines += [f"| {name} | {method} | {values['real']} | {values['fake']} | {format_fixed(values['auc'], 3)} |"
                  for name, method, values in methods]
        lines.append("")
    notes = [(name, entry) for name, entry in table["test_sets"].items()
             if entry["note"] or entry["not_scored"] or entry.get("overlap") or entry.get("interval_note")]
    if notes:
        lines += ["## Notes", ""]
        for name, entry in notes:
            parts = [entry["note"]]
            if entry.get("interval_note"):
                parts.append(f"No intervals: {entry['interval_note']}.")
            if entry["not_scored"]:
                parts.append(f"{entry['not_scored']} promised video(s) not scored (named in {entry['evaluation']}/"
                             "metrics.json).")
            parts += [f"OVERLAP: shares {found['videos']} video(s) (e.g. {found['example_video']!r}) and "
                      f"{found['groups']} group(s) (e.g. {found['example_group']!r}) with the run's {role} shards: "
                      "not a measure of generalisation." for role, found in entry.get("overlap", {}).items()]
            lines.append(f"- {name}: " + " ".join(part for part in parts if part))
        lines.append("")
    lines += ["![test sets compared](protocol.png)", ""]
    with atomic_open(path, "w") as handle:
        handle.write("\n".join(lines))
    return path


def plot_protocol(table, path):
    """The test sets side by side: video and frame AUC, log-loss and ECE (raw and calibrated), with intervals."""
    names = list(table["test_sets"])
    entries = [table["test_sets"][name] for name in names]
    positions = np.arange(len(names))
    figure, axes = new_figure(12.0, max(3.2, 0.6 * len(names) + 2.0), columns=3, sharey=True)
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
                panel.text(end, y, f" {format_fixed(value, 3) if value is not None else 'n/a'}", va="center", fontsize=7)
                right = max(right, end)
        # room on the right for the value labels
        panel.set_xlim(0, (limits[1] if limits and limits[1] else max(right, 1e-3)) * 1.2)
        if title.startswith("AUC"):
            panel.axvline(0.5, color="0.5", linestyle="--", linewidth=1, zorder=0)
            panel.set_xticks(np.linspace(0, 1, 6))
        panel.set_title(title, fontsize=10)
        panel.grid(axis="x", alpha=0.3)
        panel.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    axes[0].set_yticks(positions, [f"{name}\n({entry['videos']} videos, {groups_phrase(entry['groups'])}"
                                   f"{', OVERLAP' if entry.get('overlap') else ''})"
                                   for name, entry in zip(names, entries)])
    axes[0].invert_yaxis()
    figure.suptitle(table["suite"], fontsize=11)
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------- the run


def run_protocol(checkpoint, suite, out_dir, context, bootstrap=1000, batch_size=8, workers=2, decoder="pyav",
                 verify=True, threshold=None, progress=print, allow_overlap=False, leakage=None,
                 base_weights=None):
    """Evaluate ``checkpoint`` on every test set of ``suite`` into ``out_dir`` (all ranks take part in each);
    returns the table dict on rank 0 and None on the other ranks. A test set that shares videos or groups with
    the run's training or validation data (``leakage``: ``find_leakage``'s, found here when not given) stops
    it before anything is scored, unless ``allow_overlap``: then it is marked OVERLAP in the table."""
    check_shards(suite)
    check_output_folder(out_dir)
    if leakage is None:
        leakage = find_leakage(checkpoint, suite)
    if not allow_overlap:
        refuse_leakage(leakage, suite)
    progress(f"leakage: {leakage.summary()}")
    if suite.robustness:
        progress(cost_line(suite))
    out_dir = Path(out_dir)
    entries, calibration = {}, None
    for number, test_set in enumerate(suite.test_sets.values(), 1):
        metrics = run_evaluation(checkpoint, test_set.shards, out_dir / "sets" / test_set.folder, threshold=threshold,
                                 batch_size=batch_size, workers=workers, decoder=decoder, context=context,
                                 verify=verify, bootstrap=bootstrap, base_weights=base_weights)
        if metrics is None:  # not rank 0
            continue
        shared = leakage.found.get(test_set.name)
        entries[test_set.name] = table_entry(metrics, test_set.folder, test_set.note, shared)
        calibration = metrics["calibration"]["description"]
        video = entries[test_set.name]["video"]
        marked = f" (OVERLAP: {leakage.describe(test_set.name)})" if shared else ""
        entry = entries[test_set.name]
        withheld = entry["groups"] if entry["interval_note"] else None
        progress(f"[{number}/{len(suite.test_sets)}] {test_set.name}{marked}: {metrics['videos']} videos, "
                 f"{groups_phrase(entry['groups'])}, video AUC "
                 f"{format_interval(video['auc'], video['auc_ci'], groups=withheld)}, log-loss "
                 f"{format_fixed(video['log_loss'], 3)}")
    barrier()
    table = {"suite": suite.name, "description": suite.description, "suite_file": suite.path,
             "checkpoint": str(checkpoint), "calibration": calibration,
             "bootstrap": {"resamples": bootstrap, "confidence": 0.95, "by": "group"},
             "shards": {name: [storage.redact(pattern) for pattern in test_set.shards]
                        for name, test_set in suite.test_sets.items()},
             "leakage": {**leakage.to_json(), "allowed": bool(allow_overlap), "summary": leakage.summary()},
             "test_sets": entries, "robustness": suite.robustness.to_json() if suite.robustness else None,
             } if context.is_main else None
    if table is not None:  # the clean table first: a long robustness pass cut short leaves it
        write_json(out_dir / "table.json", table)
        write_table_markdown(table, out_dir / "table.md")
        plot_protocol(table, out_dir / "protocol.png")
    if suite.robustness:
        run_robustness(checkpoint, suite, out_dir, context, table, progress, threshold=threshold,
                       batch_size=batch_size, workers=workers, decoder=decoder, bootstrap=bootstrap,
                       base_weights=base_weights)
    return table
