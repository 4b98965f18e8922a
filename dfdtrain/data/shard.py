"""The shard stage: manifest -> WebDataset tars ``<split>-%06d.tar`` + DALI index files + index.json.

Each sample is ``<key>.<ext>`` holding the original video bytes, untouched, and ``<key>.json`` holding the
manifest row (label, dataset, group, split, probe fields) and, with a face detector, per-frame face boxes.
With ``store="faces"`` a sample instead holds each face track as a short-GOP square clip (``<key>.mp4`` for
track 0, ``<key>.track1.mp4``...; see ``dfdtrain.data.face_clips``) and the json maps it back to the source;
index.json then aggregates the clips' fidelity, and videos skipped for having no face are named with
reason ``no-face``.

The plan (which video goes into which shard) depends only on the manifest, the seed and the target size,
so a re-run resumes: a shard whose tar and record exist with the same plan is kept, anything else is
(re)written. A shard's record is written to ``.parts/<shard>.json`` as the shard is finished (what an interrupted
run resumes from); a run that finishes writes every record into index.json's shard entries and removes
``.parts/``, and a later run reads them from there. Tars, DALI indexes, records and index.json are all written
atomically.
A run holds the folder's lock (``dfdtrain.locks``) throughout: two runs into one folder would each remove or
overwrite the other's shards. Under the lock it removes what earlier runs left: temp files of an interrupted
write, and shards named like ours (``<split>-NNNNNN.tar``) that its plan does not list. Each shard's record
and index.json entry lists its sample keys in tar order, so a reader can name every sample a bad tar lost.
Every video is re-checked from the bytes that go into the tar; a bad one is skipped and named with its
reason in index.json (unreadable, zero-length, undecodable, truncated).
"""

import collections
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import random
import re
import tarfile
import threading
import time
from pathlib import Path

from tqdm import tqdm

from dfdtrain import __version__
from dfdtrain.data.dali_index import dali_index_path, write_dali_index
from dfdtrain.data.splits import SPLITS, leaking_groups
from dfdtrain.data.video import probe
from dfdtrain.errors import BadVideo, DfdError
from dfdtrain.fileio import atomic_open, read_json, read_jsonl, write_json
from dfdtrain.locks import DirectoryLock

REQUIRED_FIELDS = ("key", "path", "root", "label", "dataset", "group", "split")
DEFAULT_TARGET_BYTES = 1 << 30
RECORDS_FOLDER = ".parts"
STORES = ("original", "faces")
# what plan_shards names (and the DALI index beside it); split names with other characters are still ours
# when this plan lists them, but a file of another run is only recognised by this pattern
SHARD_FILE = re.compile(r"^[A-Za-z0-9_]+-\d{6,}\.(?:tar|idx)$")
# atomic_open's temp files: .<target name>.<random>.tmp
TEMP_FILE = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]+\.tmp$")


def load_manifest(path):
    rows = read_jsonl(path)
    if not rows:
        raise DfdError(f"{path}: manifest has no rows")
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DfdError(f"{path}:{number}: manifest row is not a JSON object")
        missing = [name for name in REQUIRED_FIELDS if name not in row]
        if missing:
            raise DfdError(f"{path}:{number}: manifest row lacks {', '.join(missing)}")
    duplicated = [key for key, count in collections.Counter(row["key"] for row in rows).items() if count > 1]
    if duplicated:
        raise DfdError(f"{path}: {len(duplicated)} key(s) appear more than once, e.g. {duplicated[0]!r}")
    return rows


def plan_shards(rows, target_bytes=DEFAULT_TARGET_BYTES, seed=0):
    """[(shard name, split, rows)]: per split, rows in seeded random order, packed up to target_bytes."""
    by_split = collections.defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    ordered_splits = [split for split in SPLITS if split in by_split] + sorted(set(by_split) - set(SPLITS))
    plan = []
    for split in ordered_splits:
        members = sorted(by_split[split], key=lambda row: row["key"])
        random.Random(f"{seed}:{split}").shuffle(members)
        current, current_bytes = [], 0
        for row in members:
            size = row.get("bytes") or 0
            if current and current_bytes + size > target_bytes:
                plan.append(current)
                current, current_bytes = [], 0
            current.append(row)
            current_bytes += size
        if current:
            plan.append(current)
    numbered = collections.Counter()
    named = []
    for members in plan:
        split = members[0]["split"]
        named.append((f"{split}-{numbered[split]:06d}.tar", split, members))
        numbered[split] += 1
    return named


def plan_hash(members, options):
    text = json.dumps([[row["key"], row["root"], row["path"], row.get("bytes")] for row in members] + [options],
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------ per-sample work (workers)
_FACE_DETECTOR = None


def _face_detector(name):
    global _FACE_DETECTOR
    if _FACE_DETECTOR is None:
        from dfdtrain.data.faces import build_face_detector

        _FACE_DETECTOR = build_face_detector(name)
    return _FACE_DETECTOR


# Source frames the face-clip work has been through, [scanned for faces, cropped and encoded], added to as each
# frame is done: a 1080p video takes minutes, and the bar itself only moves per video. A shared array that the
# workers get from _worker_init (the main process shows it, see _Postfix), or None: not counted.
_FRAME_COUNTS = None
_FRAME_STAGES = {"scan": 0, "encode": 1}


def _worker_init(frame_counts=None):
    global _FRAME_COUNTS
    import torch

    torch.set_num_threads(1)  # one process per core; threads inside would oversubscribe
    _FRAME_COUNTS = frame_counts


def _count_frames(stage, frames):
    if _FRAME_COUNTS is not None:
        with _FRAME_COUNTS.get_lock():
            _FRAME_COUNTS[_FRAME_STAGES[stage]] += frames


def prepare_sample(row, face_detector=None, face_frames=16, face_clips=None):
    """Read and re-check one video; returns {key, members: [(extension, bytes)], meta} or a skip record.

    ``face_clips`` (FaceClipOptions): store the video's face tracks as short-GOP clips instead of its bytes.
    """
    path = os.path.join(row["root"], row["path"])
    ext = os.path.splitext(row["path"])[1].lower().lstrip(".") or "bin"
    try:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise BadVideo(path, "unreadable", error.strerror or str(error)) from None
        info = probe(data, name=path)
        meta = {**row, **info}
        if face_clips is not None:
            from dfdtrain.data.face_clips import NoFace, make_face_clips

            try:
                members, fields = make_face_clips(data, path, info, _face_detector(face_detector or "mtcnn"),
                                                  face_clips, progress=_count_frames)
            except NoFace:
                return {"skip": {"key": row["key"], "path": path, "reason": "no-face",
                                 "detail": "no face track found (--no-face skip)"}}
            return {"key": row["key"], "members": members, "meta": {**meta, **fields}}
        if face_detector:
            from dfdtrain.data.faces import detect_faces

            meta["faces"] = detect_faces(data, face_frames, _face_detector(face_detector), info["frames"])
    except BadVideo as error:
        return {"skip": {"key": row["key"], "path": path, "reason": error.reason, "detail": error.detail}}
    return {"key": row["key"], "members": [(ext, data)], "meta": meta}


def _prepare(job):
    return prepare_sample(*job)


# ------------------------------------------------------------------------------------------ the writer
class _HashingFile:
    """Pass writes through to a file while hashing them (the shard's sha256 without re-reading it)."""

    def __init__(self, handle):
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0

    def write(self, data):
        self.sha256.update(data)
        self.size += len(data)
        return self.handle.write(data)

    def tell(self):
        return self.size


class TarShardWriter:
    """One tar shard written atomically, members with a fixed mtime (same input -> same bytes).

    ``with TarShardWriter(path) as shard: shard.add(key, "mp4", data)``; afterwards ``shard.bytes`` and
    ``shard.sha256`` describe the finished file, and a DALI index sits beside it.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.bytes = self.sha256 = None
        self.members = 0

    def __enter__(self):
        self._atomic = atomic_open(self.path, "wb")
        self._hashing = _HashingFile(self._atomic.__enter__())
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.PAX_FORMAT)
        return self

    def add(self, key, extension, data):
        self.members += 1
        info = tarfile.TarInfo(f"{key}.{extension}")
        info.size, info.mode, info.mtime = len(data), 0o444, 0
        self._tar.addfile(info, io.BytesIO(data))

    def __exit__(self, kind, error, traceback):
        self._tar.close()
        self._atomic.__exit__(kind, error, traceback)
        if kind is None:
            self.bytes, self.sha256 = self._hashing.size, self._hashing.sha256.hexdigest()
            if self.members:
                write_dali_index(self.path, dali_index_path(self.path))
            else:  # every video of the shard was skipped: DALI refuses an empty index; its loader skips the tar
                Path(dali_index_path(self.path)).unlink(missing_ok=True)
        return False


def write_shards(manifest, out_dir, target_bytes=DEFAULT_TARGET_BYTES, seed=0, workers=1, face_detector=None,
                 face_frames=16, allow_leakage=False, progress=True, store="original", face_clip_options=None):
    """Write the shards of ``manifest`` (path or rows) into ``out_dir``; returns the index.json dict.

    ``store``: "original" (the video's bytes, untouched) or "faces" (its face tracks as short-GOP clips, see
    ``dfdtrain.data.face_clips``; ``face_clip_options`` a FaceClipOptions, default settings if None).
    """
    if store not in STORES:
        raise DfdError(f"store must be one of {', '.join(STORES)}, not {store!r}")
    face_clips = None
    if store == "faces":
        from dfdtrain.data.face_clips import FaceClipOptions

        face_clips = face_clip_options or FaceClipOptions()
        face_detector = face_detector or "mtcnn"
    rows = load_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    source = str(manifest) if isinstance(manifest, (str, os.PathLike)) else "manifest"
    leaks = leaking_groups(rows)
    if leaks and not allow_leakage:
        group, splits = next(iter(leaks.items()))
        raise DfdError(f"{source}: {len(leaks)} group(s) are in more than one split (e.g. {group} in "
                       f"{'/'.join(splits)}); re-index, or pass --allow-leakage to shard it anyway")
    if target_bytes <= 0:
        raise DfdError(f"target shard size must be positive, not {target_bytes}")
    out_dir = Path(out_dir)
    options = {"seed": seed, "target_bytes": target_bytes, "face_detector": face_detector,
               "face_frames": face_frames if face_detector and store == "original" else None, "store": store}
    if face_clips is not None:
        options["face_clips"] = dataclasses.asdict(face_clips)  # in the plan hash: new settings rewrite shards
    plan = plan_shards(rows, target_bytes, seed)
    with DirectoryLock(out_dir, "shard") as lock:
        notes = [lock.takeover_message()] if lock.takeover_message() else []
        return _write_planned(plan, out_dir, options, source, workers, face_detector, face_frames, face_clips,
                              progress, notes)


def _write_planned(plan, out_dir, options, source, workers, face_detector, face_frames, face_clips, progress, notes):
    """write_shards' work, under the folder's lock: clean up after earlier runs, write what is missing."""
    global _FRAME_COUNTS
    started = time.time()
    records_dir = out_dir / RECORDS_FOLDER
    records_dir.mkdir(parents=True, exist_ok=True)
    planned = {name for name, _, _ in plan}
    notes += _remove_leftover_temp_files(out_dir, planned)

    earlier = _earlier_records(out_dir, plan)
    records, pending = {}, []
    for name, split, members in plan:
        digest = plan_hash(members, options)
        record = _kept_record(out_dir / name, earlier.get(name), digest)
        if record is None:
            pending.append((name, split, members, digest))
        else:
            records[name] = record
    notes += _remove_stale_shards(out_dir, planned, set(earlier))

    jobs = [(row, face_detector, face_frames, face_clips) for _, _, members, _ in pending for row in members]
    bar = tqdm(total=len(jobs), desc="shard", unit="video", disable=not progress, mininterval=0.5)
    context = multiprocessing.get_context("spawn")
    frame_counts = context.Array("q", len(_FRAME_STAGES)) if face_clips is not None and jobs else None
    pool = context.Pool(workers, _worker_init, (frame_counts,)) if workers > 1 and jobs else None
    if pool is None:
        _FRAME_COUNTS = frame_counts  # one worker: the work runs in this process
    postfix = _Postfix(bar, frame_counts)
    try:
        results = pool.imap(_prepare, jobs, chunksize=1) if pool else map(_prepare, jobs)
        for name, split, members, digest in pending:
            postfix.show(name)
            records[name] = _write_one_shard(out_dir / name, split, members, digest, results, bar)
            write_json(records_dir / f"{name}.json", records[name])
    finally:
        postfix.close()
        bar.close()
        _FRAME_COUNTS = None
        if pool:
            pool.close()
            pool.join()

    index = _build_index(plan, records, options, source, resumed=len(plan) - len(pending),
                         seconds=time.time() - started)
    if notes:
        index["notes"] = notes  # what this run cleaned up or took over; the command prints them
    write_json(out_dir / "index.json", index)
    _remove_records(records_dir)  # index.json holds them now
    return index


class _Postfix:
    """The bar's postfix: the shard being written and, for face clips, the source frames done so far, which a
    thread refreshes every half second while the workers (or this process) add to ``frame_counts``."""

    def __init__(self, bar, frame_counts):
        self.bar, self.frame_counts, self.shard = bar, frame_counts, ""
        self.stopped, self.thread = threading.Event(), None
        if frame_counts is not None and not bar.disable:
            self.thread = threading.Thread(target=self._refresh, name="shard-progress", daemon=True)
            self.thread.start()

    def show(self, shard=None):
        self.shard = shard or self.shard
        text = self.shard
        if self.frame_counts is not None:
            scanned, encoded = self.frame_counts[:]
            text += f", frames: {scanned:,} scanned for faces, {encoded:,} encoded"
        self.bar.set_postfix_str(text)

    def _refresh(self):
        while not self.stopped.wait(0.5):
            self.show()

    def close(self):
        self.stopped.set()
        if self.thread:
            self.thread.join()
            self.show()  # the final counts stay on the closed bar


def _earlier_records(out_dir, plan):
    """{shard name: record} that earlier runs left: index.json's shard entries (a finished run), overlaid by the
    records in ``.parts/`` (a run that stopped before writing its index.json: newer than that index).

    An index.json entry holds the record but its skipped videos, which are in index.json's ``skipped``: a
    shard's are those of its planned videos (a record of another plan is not kept anyway).
    """
    records = {}
    try:
        index = read_json(out_dir / "index.json")
        skipped = {item["key"]: item for item in index.get("skipped", [])}
        members = {name: rows for name, _, rows in plan}
        for entry in index["shards"]:
            name = entry["name"]
            # an index.json of a version before records moved into it has no plan_hash: nothing to resume from
            if entry.get("plan_hash") and _is_plain_tar_name(name):
                records[name] = {**entry, "skipped": [skipped[row["key"]] for row in members.get(name, [])
                                                      if row["key"] in skipped]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no index.json, or none we can read: its shards are written again (or kept by their .parts records)
    for record_path in sorted((out_dir / RECORDS_FOLDER).glob("*.tar.json")):
        try:
            records[record_path.name[:-len(".json")]] = read_json(record_path)
        except (OSError, ValueError):
            records[record_path.name[:-len(".json")]] = {}  # unreadable: the shard is written again
    return records


def _kept_record(tar_path, record, digest):
    """The record of a finished shard that this plan keeps as it is, or None: the shard is written again."""
    if not isinstance(record, dict) or record.get("plan_hash") != digest or not tar_path.is_file():
        return None
    # the size too: a tar another run wrote under the same name does not match this record; a shard whose every
    # video was skipped has no DALI index
    if tar_path.stat().st_size != record.get("bytes") or (
            record.get("samples") != 0 and not Path(dali_index_path(tar_path)).is_file()):
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


def _remove_records(records_dir):
    """The per-shard records of a finished run (index.json holds them): ``.parts/`` goes, unless something not
    ours is in it."""
    for path in records_dir.glob("*.tar.json"):
        path.unlink(missing_ok=True)
    try:
        records_dir.rmdir()
    except OSError:
        pass


def tar_keys(path):
    """The sample keys of a tar in member order (a key is a member's name up to its first dot)."""
    keys = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:  # reads the headers only: the members' data is skipped
            key = member.name.split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


def _write_one_shard(tar_path, split, members, digest, results, bar):
    labels = collections.Counter()
    skipped, keys, face_samples = [], [], []
    with TarShardWriter(tar_path) as shard:
        for _ in members:
            result = next(results)
            bar.update()
            if "skip" in result:
                skipped.append(result["skip"])
                continue
            for extension, data in result["members"]:
                shard.add(result["key"], extension, data)
            shard.add(result["key"], "json", json.dumps(result["meta"]).encode())
            labels[str(result["meta"]["label"])] += 1
            keys.append(result["key"])
            if result["meta"].get("store") == "faces":
                face_samples.append(face_clip_summary(result["meta"]))
    record = {"name": tar_path.name, "split": split, "plan_hash": digest, "samples": len(keys),
              "labels": dict(sorted(labels.items())), "bytes": shard.bytes, "sha256": shard.sha256,
              "dali_index": os.path.basename(dali_index_path(tar_path)) if shard.members else None,
              "keys": keys, "skipped": skipped}
    if face_samples:
        record["face_clips"] = face_clip_totals(face_samples)
    return record


def face_clip_summary(meta):
    """What index.json keeps of one face-clip sample: sizes, tracks and fidelity (vs the source crops)."""
    return {"key": meta["key"], "source_bytes": meta["source"]["bytes"], "clip_bytes": meta["bytes"],
            "tracks": len(meta["tracks"]), "no_face": meta["no_face"], **meta["fidelity"]}


def face_clip_totals(summaries):
    """One shard's face-clip totals, from its samples' summaries: what its record and index.json entry keep (a
    resumed shard adds them to the run's without reading its samples)."""
    worst = max(summaries, key=lambda item: item["mean_abs_error"])
    return {"videos": len(summaries), "no_face": sum(item["no_face"] for item in summaries),
            "tracks": sum(item["tracks"] for item in summaries),
            "source_bytes": sum(item["source_bytes"] for item in summaries),
            "clip_bytes": sum(item["clip_bytes"] for item in summaries),
            "psnr_db_sum": sum(item["psnr_db"] for item in summaries),
            "psnr_db_min": min(item["psnr_db"] for item in summaries),
            "mean_abs_error_sum": sum(item["mean_abs_error"] for item in summaries),
            "mean_abs_error_max": worst["mean_abs_error"], "worst_key": worst["key"]}


def aggregate_face_clips(shard_totals):
    """index.json's ``face_clips``: totals and the fidelity of the stored clips vs the decoded source crops, over
    the shards' ``face_clip_totals`` (per video it is in each sample's json)."""
    if not shard_totals:
        return None
    videos = sum(item["videos"] for item in shard_totals)
    worst = max(shard_totals, key=lambda item: item["mean_abs_error_max"])
    return {"videos": videos, "no_face": sum(item["no_face"] for item in shard_totals),
            "tracks": sum(item["tracks"] for item in shard_totals),
            "source_bytes": sum(item["source_bytes"] for item in shard_totals),
            "clip_bytes": sum(item["clip_bytes"] for item in shard_totals),
            "psnr_db_mean": round(sum(item["psnr_db_sum"] for item in shard_totals) / videos, 3),
            "psnr_db_min": min(item["psnr_db_min"] for item in shard_totals),
            "mean_abs_error_mean": round(sum(item["mean_abs_error_sum"] for item in shard_totals) / videos, 4),
            "mean_abs_error_max": worst["mean_abs_error_max"], "worst_key": worst["worst_key"]}


def _name_some(names, limit=10):
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _is_shard_name(name):
    """A tar name this module writes: ``<split>-NNNNNN.tar``."""
    return name.endswith(".tar") and bool(SHARD_FILE.match(name))


def _is_plain_tar_name(name):
    """A tar file name in the folder itself: a name read from index.json must not point elsewhere."""
    return isinstance(name, str) and name.endswith(".tar") and os.path.basename(name) == name


def _remove_leftover_temp_files(out_dir, planned_names):
    """Temp files of our atomic writes that an interrupted run left (up to a shard each); [one line] or [].

    Only called under the lock, so no run is writing them. Only ours: the target is a shard (planned or named
    like one), its DALI index, its record or index.json.
    """
    def ours(target, folder):
        if folder != out_dir:  # the records folder: <shard>.json
            return target.endswith(".json") and ours(target[:-len(".json")], out_dir)
        tar_name = target[:-len(".idx")] + ".tar" if target.endswith(".idx") else target
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


def _remove_stale_shards(out_dir, planned_names, recorded_names):
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
    return [f"removed {len(names)} shard(s) of an earlier run that this plan does not list: {_name_some(names)}"]


def _build_index(plan, records, options, source, resumed, seconds):
    # each shard's record but its skipped videos (all in "skipped"): what a re-run resumes from
    shards = [{key: value for key, value in records[name].items() if key != "skipped"} for name, _, _ in plan]
    skipped = [item for name, _, _ in plan for item in records[name]["skipped"]]
    per_split = collections.defaultdict(lambda: {"shards": 0, "samples": 0, "bytes": 0, "labels": collections.Counter()})
    for shard in shards:
        totals = per_split[shard["split"]]
        totals["shards"] += 1
        totals["samples"] += shard["samples"]
        totals["bytes"] += shard["bytes"]
        totals["labels"].update(shard["labels"])
    index = {
        "format": "dfdtrain-shards/1",
        "created_by": f"dfdtrain {__version__}",
        "manifest": source,
        "store": options["store"],
        "options": options,
        "shards": shards,
        "splits": {split: {**totals, "labels": dict(sorted(totals["labels"].items()))}
                   for split, totals in per_split.items()},
        "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards),
                   "bytes": sum(s["bytes"] for s in shards), "skipped": len(skipped),
                   "resumed_shards": resumed, "seconds": round(seconds, 2)},
        "skipped": skipped,
    }
    face_clips = aggregate_face_clips([records[name]["face_clips"] for name, _, _ in plan
                                       if records[name].get("face_clips")])
    if face_clips:
        index["face_clips"] = face_clips
    return index


def format_index(index):
    lines = list(index.get("notes", []))  # what the run cleaned up first, as it did it first
    lines.append(f"{index['totals']['samples']} videos in {index['totals']['shards']} shards, "
                 f"{index['totals']['bytes'] / 1e6:.1f} MB ({index['totals']['resumed_shards']} shards kept from an "
                 f"earlier run)")
    for split, totals in index["splits"].items():
        labels = ", ".join(f"{'fake' if label == '1' else 'real'} {count}" for label, count in totals["labels"].items())
        lines.append(f"  {split:<6} {totals['shards']:>4} shards {totals['samples']:>7} videos ({labels})")
    face_clips = index.get("face_clips")
    if face_clips:
        lines.append(f"face clips: {face_clips['tracks']} tracks, {face_clips['clip_bytes'] / 1e6:.1f} MB from "
                     f"{face_clips['source_bytes'] / 1e6:.1f} MB of source video; fidelity vs the source crops: "
                     f"PSNR {face_clips['psnr_db_mean']:.1f} dB, "
                     f"mean error {face_clips['mean_abs_error_mean']:.2f}/255 "
                     f"(worst {face_clips['mean_abs_error_max']:.2f}); {face_clips['no_face']} without a face")
    if index["skipped"]:
        lines.append(f"skipped {len(index['skipped'])}:")
        lines += [f"  {item['path']}: {item['reason']}" + (f" ({item['detail']})" if item["detail"] else "")
                  for item in index["skipped"][:10]]
    return "\n".join(lines)
