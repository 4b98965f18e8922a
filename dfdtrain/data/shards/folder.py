"""A shard folder's bookkeeping: the per-shard records in ``.parts/``, which finished shards a run keeps, and
what earlier runs left that a run removes (temp files of an interrupted write, shards its plan does not list).

Every function here runs under the folder's lock (``dfdtrain.core.locks``).
"""

import os
import re
import tarfile
from pathlib import Path

from dfdtrain.data.decode.dali_tar_index import dali_index_path
from dfdtrain.data.shards.catalog import entry_problem
from dfdtrain.data.shards.summary import face_clip_totals
from dfdtrain.data.shards.tars import tar_keys
from dfdtrain.core.fileio import read_json

RECORDS_FOLDER = ".parts"
# what plan_shards names (and the DALI index beside it); split names with other characters are still ours
# when this plan lists them, but a file of another run is only recognised by this pattern
SHARD_FILE = re.compile(r"^[A-Za-z0-9_]+-\d{6,}\.(?:tar|idx)$")
# atomic_open's temp files: .<target name>.<random>.tmp
TEMP_FILE = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp$")


def earlier_records(out_dir, plan=None):
    """{shard name: record} that earlier runs left: index.json's shard entries (a finished run), overlaid by the
    records in ``.parts/`` (a run that stopped before writing its index.json: newer than that index).

    An index.json entry holds the record but its skipped videos, which are in index.json's ``skipped``: a
    shard's are those of its videos in ``plan`` (a ShardPlan; a record of another plan is not kept anyway).
    """
    records = {}
    index = _readable_index(out_dir)
    try:
        skipped = {item["key"]: item for item in index.get("skipped", [])} if index else {}
    except (KeyError, TypeError, AttributeError):  # a hand-edited index: none of its shards is kept
        index, skipped = None, {}
    planned = {shard.name: shard for shard in plan or []}
    for entry in _resumable_entries(index):
        keys = plan.keys(planned[entry["name"]]) if skipped and entry["name"] in planned else []
        records[entry["name"]] = {**entry, "skipped": [skipped[key] for key in keys if key in skipped]}
    for record_path in sorted((out_dir / RECORDS_FOLDER).glob("*.tar.json")):
        try:
            records[record_path.name[:-len(".json")]] = read_json(record_path)
        except (OSError, ValueError):
            records[record_path.name[:-len(".json")]] = {}  # unreadable: the shard is written again
    return records


def earlier_record_names(out_dir):
    """The shard names of ``earlier_records``, without reading the records in ``.parts/`` (a merge needs only the
    names, and every record holds its shard's keys)."""
    return ({entry["name"] for entry in _resumable_entries(_readable_index(out_dir))}
            | {path.name[:-len(".json")] for path in (out_dir / RECORDS_FOLDER).glob("*.tar.json")})


def _readable_index(out_dir):
    """The folder's index.json, or None: none there, or none we can read (its shards are written again, or kept
    by their .parts records)."""
    try:
        index = read_json(out_dir / "index.json")
        return index if isinstance(index, dict) and isinstance(index.get("shards"), list) else None
    except (OSError, ValueError):
        return None


def _resumable_entries(index):
    """The shard entries of ``index`` a run may keep: an index.json of a version before records moved into it has
    no plan_hash (nothing to resume from); a wrongly typed entry (a hand-edited index) is not trusted either."""
    return [entry for entry in (index or {}).get("shards", [])
            if entry_problem(entry) is None and entry.get("plan_hash") and _is_plain_tar_name(entry["name"])]


def kept_record(tar_path, record, digest, present=None):
    """The record of a finished shard that this plan keeps as it is, or None: the shard is written again.
    ``present``: {file name: bytes} of a remote folder, where the shard must be instead of at ``tar_path``."""
    if not isinstance(record, dict) or record.get("plan_hash") != digest or entry_problem(record) is not None:
        return None  # another plan, or a wrongly typed (hand-edited) record: the shard is written again
    if not isinstance(record.get("skipped", []), list) or not all(isinstance(item, dict)
                                                                  for item in record.get("skipped", [])):
        return None
    index_name = os.path.basename(dali_index_path(tar_path))
    if present is None:
        present = {path.name: path.stat().st_size for path in (tar_path, Path(dali_index_path(tar_path)))
                   if path.is_file()}
    # the size too: a tar another run wrote under the same name does not match this record; a shard whose every
    # video was skipped has no DALI index
    if present.get(tar_path.name) != record.get("bytes") or (record.get("samples") != 0 and index_name not in present):
        return None
    record = dict(record)
    if "keys" not in record:  # a record of an earlier version: the tar's member names give them
        try:
            record["keys"] = tar_keys(tar_path)
        except (OSError, tarfile.TarError):
            return None
    if isinstance(record.get("face_clips"), list):  # an earlier version kept a summary per video
        record["face_clips"] = face_clip_totals(record["face_clips"])
    return record


def remove_records(records_dir):
    """The per-shard records of a finished run (index.json holds them): ``.parts/`` goes, unless something not
    ours is in it."""
    for path in records_dir.glob("*.tar.json"):
        path.unlink(missing_ok=True)
    try:
        records_dir.rmdir()
    except OSError:
        pass


def name_some(names, limit=10):
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _is_shard_name(name):
    """A tar name the shard stage writes: ``<split>-NNNNNN.tar``."""
    return name.endswith(".tar") and bool(SHARD_FILE.match(name))


def _is_plain_tar_name(name):
    """A tar file name in the folder itself: a name read from index.json must not point elsewhere."""
    return isinstance(name, str) and name.endswith(".tar") and os.path.basename(name) == name


def remove_leftover_temp_files(out_dir, planned_names, only_planned=False):
    """Temp files of our atomic writes that an interrupted run left (up to a shard each); [one line] or [].

    Only called under the lock, so no run is writing them. Only ours: the target is a shard (planned or named
    like one), its DALI index, its record or index.json; with ``only_planned`` (a part, beside other parts that
    may be writing) only the planned shards' files.
    """
    def ours(target, folder):
        if folder != out_dir:  # the records folder: <shard>.json
            return target.endswith(".json") and ours(target[:-len(".json")], out_dir)
        tar_name = target[:-len(".idx")] + ".tar" if target.endswith(".idx") else target
        if only_planned:
            return tar_name in planned_names
        return target == "index.json" or tar_name in planned_names or _is_shard_name(tar_name)

    removed, freed = 0, 0
    for folder in (out_dir, out_dir / RECORDS_FOLDER):
        for path in sorted(folder.glob(".*.tmp")):
            match = TEMP_FILE.match(path.name)
            if match and path.is_file() and ours(match.group("target"), folder):
                freed += path.stat().st_size
                path.unlink()
                removed += 1
    if not removed:
        return []
    return [f"removed {removed} temp file(s) left by an interrupted run, freeing {freed:,} bytes"]


def remove_stale_shards(out_dir, planned_names, recorded_names):
    """Shards of an earlier run that this plan does not list: named like ours (<split>-NNNNNN.tar, its .idx) or
    with a record of ours (``recorded_names``: in index.json or .parts/). Left beside the new ones they would be
    read as part of the data set."""
    stale = {}  # shard name -> its files
    for path in out_dir.iterdir():
        if SHARD_FILE.match(path.name) and path.is_file():
            name = path.name[:-len(".idx")] + ".tar" if path.name.endswith(".idx") else path.name
            if name not in planned_names:
                stale.setdefault(name, []).append(path)
    for name in recorded_names - planned_names:
        paths = [out_dir / RECORDS_FOLDER / f"{name}.json", out_dir / name, Path(dali_index_path(out_dir / name))]
        existing = [path for path in paths if path.is_file()]
        if existing:
            stale.setdefault(name, []).extend(existing)
    for paths in stale.values():
        for path in paths:
            path.unlink(missing_ok=True)
    if not stale:
        return []
    names = sorted(stale)
    return [f"removed {len(names)} shard(s) of an earlier run that this plan does not list: {name_some(names)}"]
