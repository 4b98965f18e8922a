"""The index stage (``dfdtrain index``): dataset folder -> manifest.jsonl (one row per usable video) + a summary;
and ``load_manifest``, the one reader of a manifest, for the shard stage and the test-split checks.

"Index" here is the command that indexes a dataset folder into a manifest; a shard folder's ``index.json`` is
read by ``dfdtrain.data.shards.catalog``, and DALI's per-tar index files are ``dfdtrain.data.decode.dali_tar_index``.

Row fields: key, path (relative to root), root, label (0 real / 1 fake), dataset, group, split, the
dataset's own fields (method, compression, original, ...) and the probe (frames, fps, width, height,
codec, duration, rotation, bytes). Rows carry their root so manifests of several datasets can be
concatenated and sharded together.
"""

import collections
import hashlib
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

from tqdm import tqdm

from dfdtrain.data.ingest.datasets import DATASETS, IndexOptions
from dfdtrain.data.ingest.face_boxes import FaceBoxFile, upright_size
from dfdtrain.data.ingest.found import random_split
from dfdtrain.data.ingest.splits import assign_splits, empty_splits, enforce_no_leakage
from dfdtrain.data.decode.video import probe
from dfdtrain.core.errors import BadVideo, DfdError
from dfdtrain.core.fileio import atomic_open, read_jsonl, write_json, write_jsonl


def _probe_entry(job):
    path, entry = job
    try:
        return entry, probe(path), None
    except BadVideo as error:
        return entry, None, (error.reason, error.detail)


def probe_entries(jobs, total, workers=1, progress=True, description="probe"):
    """Probe ``jobs`` ((path, entry) pairs, an iterable read as the workers need it) in parallel processes;
    yields (entry, info or None, (reason, detail) or None) in order."""
    bar = tqdm(total=total, desc=description, unit="video", disable=not progress, mininterval=0.5)
    try:
        if workers > 1 and total > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for result in pool.imap(_probe_entry, jobs, chunksize=4):
                    bar.update()
                    yield result
        else:
            for job in jobs:
                result = _probe_entry(job)
                bar.update()
                yield result
    finally:
        bar.close()


def unique_key(entry, duplicates):
    """Keys are made from relative paths; sanitising can collide (a.b vs a-b): suffix a path hash then."""
    if entry["key"] in duplicates:
        return entry["key"] + "-" + hashlib.sha1(entry["path"].encode()).hexdigest()[:8]
    return entry["key"]


def build_manifest(dataset, root, options=None, val_fraction=0.1, test_fraction=0.1, seed=0,
                   leakage="error", workers=1, progress=True, face_boxes=None):
    """Index ``root`` as ``dataset``; returns (rows, summary dict). ``index_dataset`` without the files: for
    small folders (the demo, tests); the command streams to its manifest instead."""
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "manifest.jsonl"
        summary = index_dataset(dataset, root, manifest, options, val_fraction, test_fraction, seed, leakage,
                                workers, progress, face_boxes)
        return (read_jsonl(manifest) if manifest.exists() else []), summary


class SplitRow:
    """What the splits, the leakage policy and the summary read and write of one video (``row["split"]``, as of a
    manifest row's dict), and ``line``, its row's line in the probed file: ~80 bytes where a dict of the same
    fields is ~250 and a whole row ~2 KB. ``group`` and ``dataset`` are shared strings."""

    __slots__ = ("group", "label", "split", "dataset", "line", "leak")

    def __init__(self, group, label, split, dataset, line):
        self.group, self.label, self.split, self.dataset, self.line = group, label, split, dataset, line

    def __getitem__(self, name):
        return getattr(self, name)

    def __setitem__(self, name, value):
        setattr(self, name, value)

    def get(self, name, default=None):
        return getattr(self, name, default)


def index_dataset(dataset, root, out, options=None, val_fraction=0.1, test_fraction=0.1, seed=0,
                  leakage="error", workers=1, progress=True, face_boxes=None):
    """Index ``root`` as ``dataset`` into the manifest ``out`` (and its summary, ``summary_path``), each written
    atomically; returns the summary. With no usable video, nothing is written (the summary's ``videos`` is 0).
    ``face_boxes``: a face-box file (``face_boxes.FaceBoxFile``) whose boxes go into the rows as ``faces``.

    Streamed: the indexer's entries wait in a temporary file (``Found``), each probed row goes to a temporary
    file beside ``out`` as its probe returns, and memory keeps a ``SplitRow`` per video for the splits; a second
    pass writes the manifest, each row with its split."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise DfdError(f"{root}: dataset root is not a folder")
    box_file = FaceBoxFile(face_boxes) if face_boxes is not None else None  # a bad line stops us before the walk
    indexer = DATASETS.get(dataset)
    found = indexer(root, options or IndexOptions())
    probed_path = Path(f"{out}.probed")
    try:
        name = found.dataset or dataset  # what the rows say (folder --name celeb: "celeb"); the layout is ``dataset``
        skipped = list(found.skipped)
        duplicates = found.duplicate_keys()
        missing = set()  # entries (by position) whose file is gone: named before any probe failure, as found
        for position, entry in enumerate(found.entries()):
            path = root / entry["path"]
            if path.exists():
                continue
            missing.add(position)
            if path.is_symlink():  # a link to nothing: the file it names is what is missing
                skipped.append({"path": entry["path"], "reason": "missing file",
                                "detail": f"dangling symlink to {os.readlink(path)}"})
            else:  # removed while the folder was walked
                skipped.append({"path": entry["path"], "reason": "missing file", "detail": "gone since the walk"})

        def jobs():
            for position, entry in enumerate(found.entries()):
                if position not in missing:
                    yield os.path.join(root, entry["path"]), entry

        Path(out).parent.mkdir(parents=True, exist_ok=True)
        rows, boxed = [], 0  # boxed: the rows that got face boxes from box_file
        shared = {}  # group and dataset names: one string for all the rows that name it
        with open(probed_path, "w") as probed:
            for entry, info, problem in probe_entries(jobs(), found.count - len(missing), workers, progress):
                if problem:
                    skipped.append({"path": entry["path"], "reason": problem[0], "detail": problem[1]})
                    continue
                if box_file is not None:
                    faces, problem = box_file.faces_of(entry["path"], *upright_size(info))
                    if problem:
                        skipped.append({"path": entry["path"], "reason": "bad face boxes", "detail": problem})
                        continue
                    if faces:
                        info = {**info, "faces": faces}
                        boxed += 1
                entry["key"] = unique_key(entry, duplicates)
                probed.write(json.dumps({**entry, "root": str(root), **info}) + "\n")
                rows.append(SplitRow(shared.setdefault(entry["group"], entry["group"]), entry["label"],
                                     entry["split"], shared.setdefault(entry["dataset"], entry["dataset"]),
                                     len(rows)))
        del shared

        fractions = {"train": 1.0 - val_fraction - test_fraction, "val": val_fraction, "test": test_fraction}
        if any(row["split"] == "test" for row in rows):  # an official test set exists: split the rest
            fractions = {"train": 1.0 - val_fraction, "val": val_fraction}
        # where the splits come from, said once: a missing split file must not pass for an official split
        split_source = {**(found.split_source or random_split(None, f"the {dataset} indexer reads no official split")),
                        "seed": seed, "official_videos": sum(row["split"] is not None for row in rows),
                        "random_groups": len({row["group"] for row in rows if row["split"] is None})}
        assign_splits(rows, fractions, seed)
        rows, excluded, leaks = enforce_no_leakage(rows, leakage, source=f"{name} index of {root}")
        excluded_rows = _probed_rows(probed_path, {row.line for row in excluded})
        for row in excluded:
            skipped.append({"path": excluded_rows[row.line]["path"], "reason": "leaking group",
                            "detail": f"group {row['group']} is also in {'/'.join(leaks[row['group']])}"})
        summary = summarise(rows, skipped, leaks, dataset=name, layout=dataset, root=str(root),
                            split_source=split_source, excluded=found.excluded,
                            empty_splits=empty_splits(rows, fractions) if rows else [])
        if box_file is not None:
            unused, example = box_file.unused()
            boxed -= sum("faces" in row for row in excluded_rows.values())  # the rows kept
            summary["face_boxes"] = {"file": box_file.path, "entries": len(box_file), "videos": boxed,
                                     "videos_without": len(rows) - boxed, "unmatched_entries": unused,
                                     "example_unmatched": example}
        if rows:
            write_manifest_rows(out, probed_path, rows)
            write_json(summary_path(out), summary)
        return summary
    except OSError as error:
        if not error.filename:  # a write to the open probed file names none: the manifest is what failed
            error.filename = str(out)
        raise
    finally:
        found.close()
        if box_file is not None:
            box_file.close()
        probed_path.unlink(missing_ok=True)


def _probed_rows(probed_path, lines):
    """{line: row} of the probed file's ``lines`` (the rows the leakage policy excluded)."""
    if not lines:
        return {}
    with open(probed_path) as probed:
        return {number: json.loads(line) for number, line in enumerate(probed) if number in lines}


def write_manifest_rows(out, probed_path, rows):
    """The manifest ``out``, atomically: the probed file's lines named by ``rows`` (``line``, ascending), each with
    the row's split (and ``leak`` mark, ``--leakage report``), its fields in manifest order."""
    wanted = iter(rows)
    row = next(wanted, None)
    with open(probed_path) as probed, atomic_open(out, "w") as manifest:
        for line_number, line in enumerate(probed):
            if row is None or row.line != line_number:  # excluded by the leakage policy
                continue
            full = {**json.loads(line), "split": row["split"], **({"leak": True} if row.get("leak") else {})}
            manifest.write(json.dumps(_ordered(full)) + "\n")
            row = next(wanted, None)


# every row has these (load_manifest refuses a row without one), first and in this order
REQUIRED_FIELDS = ("key", "path", "root", "label", "dataset", "group", "split")


def _ordered(row):
    return {**{name: row[name] for name in REQUIRED_FIELDS},
            **{k: v for k, v in row.items() if k not in REQUIRED_FIELDS}}


def summarise(rows, skipped, leaks, **about):
    table = collections.Counter((row["split"], row["dataset"], row["label"]) for row in rows)
    return {
        **about,
        "videos": len(rows),
        "groups": len({row["group"] for row in rows}),
        "counts": [{"split": split, "dataset": dataset, "label": label, "videos": count}
                   for (split, dataset, label), count in sorted(table.items())],
        "skipped": skipped,
        "skipped_by_reason": dict(collections.Counter(item["reason"] for item in skipped)),
        "leaking_groups": leaks,
    }


def format_summary(summary):
    """A plain-text table: videos per split x dataset x label, then skipped counts by reason."""
    lines = [f"{summary['videos']} videos in {summary['groups']} groups from {summary.get('root', '?')}"]
    if summary.get("split_source"):
        lines.append(format_split_source(summary["split_source"]))
    if split_warning(summary):
        lines.append(split_warning(summary))
    lines.append(f"{'split':<6} {'dataset':<9} {'real':>7} {'fake':>7}")
    per = collections.defaultdict(lambda: [0, 0])
    for item in summary["counts"]:
        per[(item["split"], item["dataset"])][item["label"]] += item["videos"]
    order = {split: rank for rank, split in enumerate(("train", "val", "test"))}
    for (split, dataset), (real, fake) in sorted(per.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0])):
        lines.append(f"{split:<6} {dataset:<9} {real:>7} {fake:>7}")
    if summary["skipped"]:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(summary["skipped_by_reason"].items()))
        lines.append(f"skipped {len(summary['skipped'])} ({reasons})")
        for item in summary["skipped"][:10]:
            lines.append(f"  {item['path']}: {item['reason']}" + (f" ({item['detail']})" if item["detail"] else ""))
        if len(summary["skipped"]) > 10:
            lines.append(f"  ... {len(summary['skipped']) - 10} more in the summary JSON")
    if summary["leaking_groups"]:
        lines.append(f"leaking groups (reported, kept): {len(summary['leaking_groups'])}")
    lines += [format_excluded(by, counts) for by, counts in (summary.get("excluded") or {}).items()]
    if summary.get("face_boxes"):
        lines.append(format_face_boxes(summary["face_boxes"]))
    return "\n".join(lines)


def format_face_boxes(boxes):
    """One line: how many videos got boxes from --face-boxes, how many did not, and the file's unused entries."""
    line = f"face boxes from {boxes['file']}: {boxes['videos']} videos"
    if boxes["videos_without"]:
        line += f"; {boxes['videos_without']} without an entry (cropped at the centre unless shard --faces detects)"
    if boxes["unmatched_entries"]:
        line += (f"; {boxes['unmatched_entries']} entries name no indexed video "
                 f"(e.g. {boxes['example_unmatched']!r})")
    return line


def format_excluded(by, counts):
    """One line for videos left out on purpose: 'excluded by --compression: 24 videos (c40: 12, raw: 12)'."""
    total = sum(counts.values())
    detail = ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))
    return f"excluded by --{by}: {total} video{'' if total == 1 else 's'} ({detail})"


def format_split_source(source):
    """One line: official split lists (and from where) or a seeded random split by group (and why)."""
    if source["kind"] != "official":
        return f"split: seeded random by group (seed {source['seed']}) because {source['reason']}"
    line = f"split: official lists at {source['path']} ({source['official_videos']} videos)"
    if source["random_groups"]:
        line += f"; the other {source['random_groups']} groups split at random (seed {source['seed']})"
    return line


def split_warning(summary):
    """One line when a split asked for (fraction > 0) ended up without videos, else None."""
    if not summary.get("empty_splits"):
        return None
    return (f"warning: no videos in {' or '.join(summary['empty_splits'])}: "
            f"{summary['split_source']['random_groups']} group(s) to split are too few to give every requested "
            "split one (see --val-fraction, --test-fraction)")


def summary_path(manifest_path):
    return os.fspath(manifest_path) + ".summary.json"


def load_manifest(path):
    """The rows of a manifest.jsonl; one line naming the file (and the row) when it has no rows, a row is not an
    object or lacks a required field, or a key appears twice. (A shard run holds far less per row:
    ``dfdtrain.data.shards.manifest_rows`` reads the same lines with the same checks.)"""
    rows = [row for _, row in manifest_lines(path)]
    if not rows:
        raise DfdError(f"{path}: manifest has no rows")
    for number, row in enumerate(rows, 1):
        problem = manifest_row_problem(path, number, row)
        if problem:
            raise DfdError(problem)
    counts = collections.Counter(row["key"] for row in rows)
    problem = duplicate_keys_problem(path, [key for key, count in counts.items() if count > 1])
    if problem:
        raise DfdError(problem)
    return rows


def manifest_lines(path):
    """Yields (byte offset of its line, row) for each row of a manifest.jsonl, in file order, one line at a time
    (blank lines are skipped); a line that is not JSON, or a file that is not UTF-8, is one line naming the file
    (and the line), as ``read_jsonl`` says it."""
    offset = 0
    with open(path, "rb") as handle:  # bytes: the offsets are where a later read seeks to
        for number, line in enumerate(handle, 1):
            start, offset = offset, offset + len(line)
            try:
                text = line.decode("utf-8")
                row = json.loads(text) if text.strip() else None
            except json.JSONDecodeError as error:
                raise DfdError(f"{path}:{number}: not a JSON line ({error.msg})") from None
            except UnicodeDecodeError as error:
                raise DfdError(f"{path}: not a UTF-8 text file ({error.reason})") from None
            if text.strip():
                yield start, row


def manifest_row_problem(path, number, row):
    """The one line refusing row ``number`` (1-based, counting rows) of a manifest, or None when it is usable."""
    if not isinstance(row, dict):
        return f"{path}:{number}: manifest row is not a JSON object"
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    if missing:
        return f"{path}:{number}: manifest row lacks {', '.join(missing)}"
    if not isinstance(row["key"], str):
        return f"{path}:{number}: manifest row's key is not a string ({json.dumps(row['key'])})"
    return None


def duplicate_keys_problem(path, duplicated):
    """The one line refusing a manifest in which the keys ``duplicated`` (in the order they first appear) are each
    on more than one row, or None when there is none."""
    if duplicated:
        return f"{path}: {len(duplicated)} key(s) appear more than once, e.g. {duplicated[0]!r}"
    return None


def write_manifest(path, rows, summary):
    """manifest.jsonl and its summary (manifest.jsonl.summary.json), each written atomically."""
    write_jsonl(path, rows)
    write_json(summary_path(path), summary)
