"""The shard stage: manifest -> WebDataset tars ``<split>-%06d.tar`` + DALI index files + index.json.

Each sample is ``<key>.<ext>`` holding the original video bytes, untouched, and ``<key>.json`` holding the
manifest row (label, dataset, group, split, probe fields) and, with a face detector, per-frame face boxes.
With ``store="faces"`` a sample instead holds each face track as a short-GOP square clip (``<key>.mp4`` for
track 0, ``<key>.track1.mp4``...; see ``dfdtrain.data.faces.store``) and the json maps it back to the source;
index.json then aggregates the clips' fidelity, and videos skipped for having no face are named with
reason ``no-face``.

The plan (which video goes into which shard) depends only on the manifest, the seed and the target size,
so a re-run resumes: a shard whose tar and record exist with the same plan is kept, anything else is
(re)written. A shard's record is written to ``.parts/<shard>.json`` as the shard is finished (what an interrupted
run resumes from); a run that finishes writes every record into index.json's shard entries and removes
``.parts/``, and a later run reads them from there. Tars, DALI indexes, records and index.json are all written
atomically.
A run holds the folder's lock (``dfdtrain.core.locks``) throughout: two runs into one folder would each remove or
overwrite the other's shards. Under the lock it removes what earlier runs left: temp files of an interrupted
write, and shards named like ours (``<split>-NNNNNN.tar``) that its plan does not list. Each shard's record
and index.json entry lists its sample keys in tar order, so a reader can name every sample a bad tar lost.
Every video is re-checked from the bytes that go into the tar; a bad one is skipped and named with its
reason in index.json (unreadable, zero-length, undecodable, truncated).
The folder always matches its index.json: a part (``--part I/N``) is refused in a folder whose index.json describes
another run (other options or manifest), since it would rewrite shards that index lists. A full file system is one
line naming the shard and what the shards left need; the cut shard's temp file is removed.
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
import socket
import sys
import tarfile
import threading
import time
from pathlib import Path

from tqdm import tqdm

from dfdtrain import __version__
from dfdtrain.data import storage
from dfdtrain.data.decode.dali_tar_index import dali_index_path, write_dali_index
from dfdtrain.data.shards.catalog import entry_problem
from dfdtrain.data.shards.work import predicted_seconds
from dfdtrain.data.ingest.splits import SPLITS, leaking_groups
from dfdtrain.data.decode.video import probe
from dfdtrain.core.errors import BadVideo, DfdError
from dfdtrain.core.fileio import atomic_open, check_output_folder, read_json, read_jsonl, write_json
from dfdtrain.core.locks import DirectoryLock

REQUIRED_FIELDS = ("key", "path", "root", "label", "dataset", "group", "split")
DEFAULT_TARGET_BYTES = 1 << 30
RECORDS_FOLDER = ".parts"
STORES = ("original", "faces")
STAGES = ("decode", "detect", "track", "encode", "verify")  # a face-clip video's seconds, as make_face_clips counts
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
@dataclasses.dataclass
class Compute:
    """How a run does its per-video work (none of it changes a sample, so none of it is in the plan hash).

    ``workers`` processes; the face detector on ``device`` ("cpu", "cuda", "cuda:N"); ``shared_detector``: one
    detector in the main process batching every worker's frames (``faces.SharedDetector``; None = when the
    device is a GPU and there are several workers); ``frame_cache_bytes``: per worker, a video whose frames fit
    is decoded once for faces and clips, a larger one twice.
    """

    workers: int = 1
    device: str = "cpu"
    shared_detector: bool = None
    frame_cache_bytes: int = None

    def __post_init__(self):
        from dfdtrain.data.faces.store import DEFAULT_FRAME_CACHE_BYTES

        if self.workers < 1:
            raise DfdError(f"workers must be at least 1, not {self.workers}")
        if self.frame_cache_bytes is None:
            self.frame_cache_bytes = DEFAULT_FRAME_CACHE_BYTES
        if self.shared_detector is None:
            self.shared_detector = self.device.startswith("cuda") and self.workers > 1
        self.shared_detector = self.shared_detector and self.workers > 1  # one worker: its own detector is as good


_FACE_DETECTOR = None
_DEVICE = "cpu"
_FRAME_CACHE_BYTES = None


def _face_detector(name):
    global _FACE_DETECTOR
    if _FACE_DETECTOR is None:
        from dfdtrain.data.faces.detect import build_face_detector

        _FACE_DETECTOR = build_face_detector(name, device=_DEVICE)
    return _FACE_DETECTOR


# Source frames the face-clip work has been through, [scanned for faces, cropped and encoded], added to as each
# frame is done: a 1080p video takes minutes, and the bar itself only moves per video. A shared array that the
# workers get from _worker_init (the main process shows it, see _Postfix), or None: not counted.
_FRAME_COUNTS = None
_FRAME_STAGES = {"scan": 0, "encode": 1}


def _worker_init(frame_counts=None, device="cpu", frame_cache_bytes=None, detector_service=None):
    """A worker process's start: one torch thread, the shared counters, and the face detector's device, or a
    client of the main process's shared detector (``detector_service``: its queues and a worker counter)."""
    global _FRAME_COUNTS, _DEVICE, _FRAME_CACHE_BYTES, _FACE_DETECTOR
    import torch

    torch.set_num_threads(1)  # one process per core; and MTCNN's boxes depend on the thread count (_write_pending)
    _FRAME_COUNTS, _DEVICE, _FRAME_CACHE_BYTES = frame_counts, device, frame_cache_bytes
    if detector_service is not None:
        from dfdtrain.data.faces.detect import DetectorClient

        requests, replies, counter = detector_service
        with counter.get_lock():
            worker, counter.value = counter.value, counter.value + 1
        _FACE_DETECTOR = DetectorClient(requests, replies[worker], worker, {})


def _count_frames(stage, frames):
    if _FRAME_COUNTS is not None:
        with _FRAME_COUNTS.get_lock():
            _FRAME_COUNTS[_FRAME_STAGES[stage]] += frames


def prepare_sample(row, face_detector=None, face_frames=16, face_clips=None):
    """Read and re-check one video; returns {key, members: [(extension, bytes)], meta, stats} or a skip record.

    ``face_clips`` (FaceClipOptions): store the video's face tracks as short-GOP clips instead of its bytes;
    ``stats`` then holds the seconds per stage (see ``make_face_clips``).
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
            from dfdtrain.data.faces.store import SkipVideo, make_face_clips

            stats = {}
            cache = {} if _FRAME_CACHE_BYTES is None else {"frame_cache_bytes": _FRAME_CACHE_BYTES}
            try:
                members, fields = make_face_clips(data, path, info, _face_detector(face_detector or "mtcnn"),
                                                  face_clips, progress=_count_frames, stats=stats, **cache)
            except SkipVideo as skip:
                return {"skip": {"key": row["key"], "path": path, "reason": skip.reason, "detail": skip.detail}}
            return {"key": row["key"], "members": members, "meta": {**meta, **fields}, "stats": stats}
        if face_detector:
            from dfdtrain.data.faces.detect import detect_faces

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
        try:
            self._tar.addfile(info, io.BytesIO(data))
        except OSError as error:
            raise self._named(error)

    def _named(self, error):
        """An OSError of a write into the shard, with the shard's path on it (a write has no file name)."""
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(self.path)
        return error

    def __exit__(self, kind, error, traceback):
        failed = None
        try:
            self._tar.close()  # the end-of-archive blocks: a full disk can refuse them too
        except OSError as close_error:
            if kind is None:
                kind, error, traceback = type(close_error), close_error, close_error.__traceback__
                failed = close_error
        try:
            self._atomic.__exit__(kind, error, traceback)  # on an error: removes the temp file
        except OSError as exit_error:  # the flush or fsync of the last bytes
            raise self._named(exit_error)
        if failed is not None:
            raise self._named(failed)
        if kind is None:
            self.bytes, self.sha256 = self._hashing.size, self._hashing.sha256.hexdigest()
            if self.members:
                write_dali_index(self.path, dali_index_path(self.path))
            else:  # every video of the shard was skipped: DALI refuses an empty index; its loader skips the tar
                Path(dali_index_path(self.path)).unlink(missing_ok=True)
        return False


def write_shards(manifest, out_dir, target_bytes=DEFAULT_TARGET_BYTES, seed=0, workers=1, face_detector=None,
                 face_frames=16, allow_leakage=False, progress=True, store="original", face_clip_options=None,
                 compute=None, part=None, merge_when_done=False, staging=None):
    """Write the shards of ``manifest`` (path or rows) into ``out_dir``; returns the index.json dict.

    ``out_dir`` may be ``s3://bucket/prefix``: the run then works in a local ``staging`` folder and uploads each
    finished shard (``RemoteShardFolder``).
    ``store``: "original" (the video's bytes, untouched) or "faces" (its face tracks as short-GOP clips, see
    ``dfdtrain.data.faces.store``; ``face_clip_options`` a FaceClipOptions, default settings if None).
    ``compute``: a ``Compute`` (workers, detector device, frame cache); ``workers`` is a shorthand for it.
    ``part``: a ``Part`` (I of N) writes only its share of the shards and a part record, and returns that record
    (``merge_parts`` then writes index.json), or with ``merge_when_done`` waits for the other parts and merges.
    """
    if store not in STORES:
        raise DfdError(f"store must be one of {', '.join(STORES)}, not {store!r}")
    compute = compute or Compute(workers=workers)
    face_clips = None
    if store == "faces":
        from dfdtrain.data.faces.store import FaceClipOptions

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
    remote = None
    if storage.is_url(out_dir):
        if part is not None and part.count > 1:
            raise DfdError(f"{storage.mask(out_dir)}: parts (--part, torchrun, srun) write into one shared folder "
                           "and lock it; shard into a folder every node sees, or run one process with --workers N")
        remote = RemoteShardFolder(str(out_dir), staging)
        out_dir = remote.staging
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    options = {"seed": seed, "target_bytes": target_bytes, "face_detector": face_detector,
               "face_frames": face_frames if face_detector and store == "original" else None, "store": store}
    if face_clips is not None:
        options["face_clips"] = dataclasses.asdict(face_clips)  # in the plan hash: new settings rewrite shards
    plan = plan_shards(rows, target_bytes, seed)
    work = _Work(face_detector, face_frames, face_clips, compute, progress)
    try:
        if part is not None and part.count > 1:
            record = _write_part(plan, out_dir, options, source, part, work)
            return merge_parts(out_dir, wait=True, progress=progress) if merge_when_done else record
        return _write_whole(plan, out_dir, options, source, work, remote)
    except OSError as error:
        if storage.is_no_space(error):  # a write outside a shard (a record, index.json): the folder is named
            raise DfdError(storage.no_space_line(error.filename or out_dir, error)) from None
        raise


def _write_whole(plan, out_dir, options, source, work, remote):
    """A one-process run: every shard of the plan, kept or written, and index.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(out_dir, "shard") as lock:
        _refuse_while_parts_are_open(out_dir, "a one-process run")
        notes = [lock.takeover_message()] if lock.takeover_message() else []
        started = time.time()
        notes += _remove_leftover_temp_files(out_dir, {name for name, _, _ in plan})
        if remote:
            remote.fetch_records()
        earlier = _earlier_records(out_dir, plan)
        records, resumed, counts = _write_pending(plan, out_dir, options, earlier, work, remote)
        planned = {name for name, _, _ in plan}
        notes += _remove_stale_shards(out_dir, planned, set(earlier))
        if remote:
            notes += remote.remove_stale_shards(planned)
        this_run = run_summary(time.time() - started, len(plan) - resumed, resumed, counts)
        runs = earlier_runs(out_dir, resumed, options) + [this_run]
        index = _build_index([name for name, _, _ in plan], records, options, source, runs)
        if notes:
            index["notes"] = notes  # what this run cleaned up or took over; the command prints them
        write_json(out_dir / "index.json", index)
        if remote:
            remote.publish_index(out_dir / "index.json", planned)
        _remove_records(out_dir / RECORDS_FOLDER)  # index.json holds them now
        return index


class RemoteShardFolder:
    """``shard --out s3://bucket/prefix``: the run works in a local staging folder (its lock, temp files and
    shard records, as for a local folder) and uploads each shard as soon as it is written: the tar, its DALI
    index, then its record to ``prefix/.parts/`` (so a record in the bucket means its shard is whole there), and
    deletes the local copies (the staging folder holds a few shards at a time, not the data set). index.json
    goes up last. S3 shows an object only once its upload is complete, so a reader never sees part of a shard.

    Resume: a rerun (on this machine or another) takes the bucket's index.json and records as the earlier
    records, and keeps every shard whose record matches and whose object has the recorded size. The staging
    folder is locked against a second run on this machine; two machines writing one prefix are not detected.
    """

    def __init__(self, url, staging=None):
        if not url.startswith("s3://"):
            raise DfdError(f"{storage.mask(url)}: shards can be written to a local folder or s3://bucket/prefix")
        self.url = url.rstrip("/")
        bucket, prefix = storage.s3_parts(self.url)
        if not prefix:
            raise DfdError(f"{self.url}: give a prefix inside the bucket (s3://{bucket}/PREFIX), not the bucket root")
        storage.check_bucket(self.url)  # a wrong bucket is one line now, not after the first shard's hour
        self.staging = Path(staging or Path(storage.cache_root()) / "staging" / bucket / prefix)

    def sizes(self):
        return storage.list_sizes(self.url)

    def fetch_records(self):
        """The bucket's index.json and shard records into the staging folder, where the run looks for the
        records of earlier runs (the bucket's are newer than any left in staging by a run elsewhere)."""
        remote_records = {name for name in storage.list_sizes(f"{self.url}/{RECORDS_FOLDER}") if name.endswith(".tar.json")}
        for name, local in [("index.json", self.staging / "index.json"),
                            *((f"{RECORDS_FOLDER}/{name}", self.staging / RECORDS_FOLDER / name)
                              for name in sorted(remote_records))]:
            data = storage.read_bytes(f"{self.url}/{name}")
            if data is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                with atomic_open(local, "wb") as handle:
                    handle.write(data)

    def upload_shard(self, tar_path):
        """Upload a finished shard, its DALI index and its record; then drop the local shard and index."""
        index_path = Path(dali_index_path(tar_path))
        record_path = tar_path.parent / RECORDS_FOLDER / f"{tar_path.name}.json"
        storage.upload(tar_path, f"{self.url}/{tar_path.name}", metadata={"sha256": read_json(record_path)["sha256"]})
        if index_path.is_file():
            storage.upload(index_path, f"{self.url}/{index_path.name}")
        storage.upload(record_path, f"{self.url}/{RECORDS_FOLDER}/{record_path.name}")
        tar_path.unlink()
        index_path.unlink(missing_ok=True)

    def remove_stale_shards(self, planned):
        """Delete the bucket's shards named like ours (and their indexes and records) that the plan does not
        list; [one line] or []."""
        stale = set()
        for name in self.sizes():
            tar_name = name[:-len(".idx")] + ".tar" if name.endswith(".idx") else name
            if SHARD_FILE.match(name) and tar_name not in planned:
                stale.add(tar_name)
                storage.delete(f"{self.url}/{name}")
        for name in storage.list_sizes(f"{self.url}/{RECORDS_FOLDER}"):
            if name.endswith(".tar.json") and name[:-len(".json")] not in planned:
                stale.add(name[:-len(".json")])
                storage.delete(f"{self.url}/{RECORDS_FOLDER}/{name}")
        if not stale:
            return []
        return [f"removed {len(stale)} shard(s) of an earlier run from {self.url} that this plan does not list: "
                f"{_name_some(sorted(stale))}"]

    def publish_index(self, index_path, planned):
        """index.json up last, and its local copy goes (staging is a work area; a rerun fetches the bucket's);
        then the shard records go (index.json holds them)."""
        storage.upload(index_path, f"{self.url}/index.json")
        Path(index_path).unlink(missing_ok=True)
        for name in storage.list_sizes(f"{self.url}/{RECORDS_FOLDER}"):
            if name.endswith(".tar.json") and name[:-len(".json")] in planned:
                storage.delete(f"{self.url}/{RECORDS_FOLDER}/{name}")


@dataclasses.dataclass
class _Work:
    """What each video goes through, and how: the per-sample settings, the Compute, the progress bar."""

    face_detector: str
    face_frames: int
    face_clips: object
    compute: Compute
    progress: bool


def _write_pending(plan, out_dir, options, earlier, work, remote=None):
    """Keep each planned shard whose earlier record matches, write the others (each record also to
    ``.parts/<shard>.json`` as it is finished, and with ``remote`` each shard uploaded); returns ({name: record},
    shards kept, counts: the written videos' seconds per stage and the shared detector's batches and frames)."""
    global _FRAME_COUNTS, _DEVICE, _FRAME_CACHE_BYTES, _FACE_DETECTOR
    records_dir = out_dir / RECORDS_FOLDER
    records_dir.mkdir(parents=True, exist_ok=True)
    present = remote.sizes() if remote else None  # a remote run keeps what is in the bucket
    records, pending = {}, []
    for name, split, members in plan:
        digest = plan_hash(members, options)
        record = _kept_record(out_dir / name, earlier.get(name), digest, present)
        if record is None:
            pending.append((name, split, members, digest))
        else:
            records[name] = record
            if not (records_dir / f"{name}.json").is_file():  # kept from index.json: a merge reads .parts/
                write_json(records_dir / f"{name}.json", record)
    jobs = [(row, work.face_detector, work.face_frames, work.face_clips) for _, _, members, _ in pending
            for row in members]
    compute = work.compute
    bar = tqdm(total=len(jobs), desc="shard", unit="video", disable=not work.progress, mininterval=0.5)
    context = multiprocessing.get_context("spawn")
    frame_counts = context.Array("q", len(_FRAME_STAGES)) if work.face_clips is not None and jobs else None
    parallel = compute.workers > 1 and jobs
    service = None
    if parallel and compute.shared_detector and work.face_detector:
        from dfdtrain.data.faces.detect import SharedDetector, build_face_detector

        service = SharedDetector(build_face_detector(work.face_detector, device=compute.device), compute.workers,
                                 context)
    detector_service = (service.requests, service.replies, context.Value("i", 0)) if service else None
    pool = context.Pool(compute.workers, _worker_init,
                        (frame_counts, compute.device, compute.frame_cache_bytes, detector_service)) if parallel else None
    threads = None
    if pool is None:  # one worker: the work runs in this process
        _FRAME_COUNTS, _DEVICE, _FRAME_CACHE_BYTES = frame_counts, compute.device, compute.frame_cache_bytes
        if work.face_detector and jobs:
            import torch

            # one thread, as in each worker process: MTCNN's boxes differ in the last digit with the thread count,
            # and the shards must be the same bytes whoever wrote them (one process, workers, parts); a process
            # per core (--workers, --part) is how sharding uses a machine, never oversubscribing it
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
    postfix = _Postfix(bar, frame_counts)
    counts = collections.Counter()  # seconds per stage, frames detected, the shared detector's batches
    try:
        results = pool.imap(_prepare, jobs, chunksize=1) if pool else map(_prepare, jobs)
        for done, (name, split, members, digest) in enumerate(pending):
            postfix.show(name)
            try:
                records[name] = _write_one_shard(out_dir / name, split, members, digest, results, bar)
                counts.update(records[name].get("stage_seconds", {}))
                write_json(records_dir / f"{name}.json", records[name])
                if remote:
                    remote.upload_shard(out_dir / name)
            except OSError as error:
                if not storage.is_no_space(error):
                    raise
                raise DfdError(_no_space_for_shards(out_dir / name, error, pending[done:], options)) from None
    finally:
        postfix.close()
        bar.close()
        if pool:
            pool.close()
            pool.join()
        if service:
            service.close()
            counts.update(detector_batches=service.batches, detector_frames=service.frames)
        if pool is None:
            _FRAME_COUNTS, _FRAME_CACHE_BYTES = None, None
            if threads is not None:
                torch.set_num_threads(threads)
            if _DEVICE != "cpu":
                _FACE_DETECTOR = None  # a GPU detector is not kept for the next run
            _DEVICE = "cpu"
    return records, len(plan) - len(pending), dict(counts)


def _no_space_for_shards(tar_path, error, left, options):
    """The one line of a shard write that hit a full file system (its temp file is gone again): the shard, the
    free space and what the shards left (this one included) need: their videos' bytes for the original store,
    at most that for face clips."""
    needed = sum(row.get("bytes") or 0 for _, _, members, _ in left for row in members)
    bound = "about" if options.get("store") == "original" else "at most"
    return storage.no_space_line(tar_path, error, f"the {len(left)} shard(s) left need {bound} "
                                                  f"{storage.megabytes(needed)} MB; free space and run again: "
                                                  "finished shards are kept")


# ---------------------------------------------------------------------------------------- parts and merge
PART_RECORD = re.compile(r"^part-(\d+)-of-(\d+)\.json$")
PART_FORMAT = "dfdtrain-shard-part/1"


@dataclasses.dataclass(frozen=True)
class Part:
    """Part ``index`` (0-based) of ``count`` cooperating shard runs into one folder."""

    index: int
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise DfdError(f"part {self.index}/{self.count}: the part must be I/N with 0 <= I < N")

    def __str__(self):
        return f"{self.index}/{self.count}"

    @property
    def record_name(self):
        return f"part-{self.index:05d}-of-{self.count:05d}.json"

    @property
    def lock_name(self):
        return f".dfdtrain-part-{self.index:05d}-of-{self.count:05d}.lock"

    @classmethod
    def parse(cls, text):
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match:
            raise DfdError(f"--part {text!r}: expected I/N, e.g. 0/4 (0-based I)")
        return cls(int(match.group(1)), int(match.group(2)))


def shard_work(members, options):
    """One core's predicted seconds to write a shard of these manifest rows (``shard_work.predicted_seconds``)."""
    return sum(predicted_seconds(row, options) for row in members)


def assign_parts(plan, count, options):
    """{part index: [shard names]}: whole shards, balanced by predicted work (``shard_work``: largest first to
    the part with the least work so far, ties to the lowest index), so a shard is written by exactly one part,
    whatever the part count, and the shards are those a one-process run writes."""
    loads = [(0.0, index) for index in range(count)]
    assigned = {index: [] for index in range(count)}
    by_work = sorted(((shard_work(members, options), name) for name, _, members in plan),
                     key=lambda item: (-item[0], item[1]))
    for work, name in by_work:
        load, index = min(loads)
        assigned[index].append(name)
        loads[index] = (load + work, index)
    order = {name: position for position, (name, _, _) in enumerate(plan)}
    return {index: sorted(names, key=order.get) for index, names in assigned.items()}


def run_hash(plan, options):
    """What a run writes, in one digest: every shard's plan hash, in plan order (parts of one run share it)."""
    return hashlib.sha256(json.dumps([plan_hash(members, options) for _, _, members in plan]).encode()).hexdigest()


def _part_records(out_dir):
    """{(index, count): record} of the part records in ``.parts/`` (an unreadable one maps to {})."""
    records = {}
    for path in sorted((out_dir / RECORDS_FOLDER).glob("part-*-of-*.json")):
        match = PART_RECORD.match(path.name)
        if match:
            try:
                records[(int(match.group(1)), int(match.group(2)))] = read_json(path)
            except (OSError, ValueError):
                records[(int(match.group(1)), int(match.group(2)))] = {}
    return records


def _running_parts(out_dir):
    """{(part index, part count): lock owner} of the parts whose lock a live process holds."""
    running = {}
    for path in sorted(out_dir.glob(".dfdtrain-part-*-of-*.lock")):
        match = re.fullmatch(r"\.dfdtrain-part-(\d+)-of-(\d+)\.lock", path.name)
        if match:
            owner = DirectoryLock(out_dir, "shard", name=path.name).live_owner()
            if owner:
                running[(int(match.group(1)), int(match.group(2)))] = owner
    return running


def _refuse_while_parts_are_open(out_dir, what, count=None):
    """Refuse ``what`` (a one-process run: ``count`` None, or a part of ``count``) while parts of a run of
    another part count are running or unmerged here; one line naming them."""
    running = [index for index, n in _running_parts(out_dir) if n != count]
    if running:
        raise DfdError(f"{out_dir}: part(s) {_name_some([str(i) for i in sorted(running)])} of a partitioned shard "
                       f"run of another part count are running here; {what} would overwrite their shards")
    other = sorted({n for _, n in _part_records(out_dir)} - {count})
    if other:
        n = other[0]
        finished = sorted(i for i, c in _part_records(out_dir) if c == n)
        missing = [str(i) for i in range(n) if i not in finished]
        raise DfdError(f"{out_dir}: holds an unmerged {n}-part run (finished parts: "
                       f"{_name_some([str(i) for i in finished]) or 'none'}; missing: {_name_some(missing) or 'none'});"
                       f" finish it with --part I/{n} and 'dfdtrain shard --merge --out {out_dir}', or remove "
                       f"{out_dir / RECORDS_FOLDER} to start over; {what} cannot mix part counts")


def _refuse_over_another_index(out_dir, plan, options, part):
    """Refuse part ``part`` in a folder whose index.json describes another run (other options, another manifest:
    other shards or plan hashes). The part would rewrite shards that index lists and the folder would stop
    matching its index until every part ran again and merged; a part of the very run the index describes only
    keeps or restores shards (the same bytes), which is allowed."""
    path = out_dir / "index.json"
    if not path.exists():
        return
    try:
        index = read_json(path)
        listed = [(entry["name"], entry.get("plan_hash")) for entry in index["shards"]]
        made = index.get("options")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        listed, made = None, None
    if listed == [(name, plan_hash(members, options)) for name, _, members in plan]:
        return
    if listed is None:
        why = "an index.json this version cannot read"
    elif made != options:
        changed = sorted(key for key in {*options, *(made if isinstance(made, dict) else {})}
                         if not isinstance(made, dict) or made.get(key) != options.get(key))
        why = f"index.json of a run with other options ({', '.join(changed)})"
    else:
        why = "index.json of a run from another manifest"
    raise DfdError(f"{out_dir}: holds a finished shard run ({why}); part {part} would rewrite shards that index "
                   f"lists and the folder would no longer match it. Use another --out, rerun with that run's "
                   f"options, or remove {path} to re-shard this folder with parts")


def _write_part(plan, out_dir, options, source, part, work):
    """Part ``part`` of a run: its shards (``assign_parts``), kept or written, and its part record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(out_dir, f"shard --part {part}", name=part.lock_name) as lock:
        whole = DirectoryLock(out_dir, "shard").live_owner()
        if whole:
            raise DfdError(f"{out_dir}: a one-process shard run (pid {whole.get('pid', '?')} on "
                           f"{whole.get('host', '?')}) is writing here; part {part} would overwrite its shards")
        _refuse_while_parts_are_open(out_dir, f"part {part}", count=part.count)
        this_run = run_hash(plan, options)
        others = sorted(i for (i, n), record in _part_records(out_dir).items()
                        if n == part.count and i != part.index and record.get("run") != this_run)
        if others:
            raise DfdError(f"{out_dir}: part(s) {_name_some([str(i) for i in others])} of {part.count} here were made "
                           f"from another manifest or other options; rerun part {part} with their command, or "
                           f"remove {out_dir / RECORDS_FOLDER} to start over")
        _refuse_over_another_index(out_dir, plan, options, part)
        started = time.time()
        mine = set(assign_parts(plan, part.count, options)[part.index])
        own_plan = [item for item in plan if item[0] in mine]
        notes = [lock.takeover_message()] if lock.takeover_message() else []
        notes += _remove_leftover_temp_files(out_dir, mine, only_planned=True)
        (out_dir / RECORDS_FOLDER / part.record_name).unlink(missing_ok=True)  # not finished until rewritten
        earlier = _earlier_records(out_dir, own_plan)
        records, resumed, counts = _write_pending(own_plan, out_dir, options, earlier, work)
        record = {"format": PART_FORMAT, "part": part.index, "parts": part.count,
                  "run": this_run, "plan": [name for name, _, _ in plan],
                  "plan_hashes": [plan_hash(members, options) for _, _, members in plan],
                  "shards": [name for name, _, _ in own_plan], "options": options, "manifest": source,
                  "host": socket.gethostname(), "pid": os.getpid(), "started": started, "finished": time.time(),
                  "resumed_shards": resumed, "counts": counts, "notes": notes,
                  "predicted_seconds": round(sum(shard_work(members, options) for _, _, members in own_plan), 2),
                  "samples": sum(records[name]["samples"] for name in mine)}
        write_json(out_dir / RECORDS_FOLDER / part.record_name, record)
        return record


def merge_parts(out_dir, wait=False, progress=False, poll_seconds=2.0, grace_seconds=120.0):
    """index.json from the part records of a partitioned run in ``out_dir``; returns the index.

    Refused with one line when parts are missing or unfinished, of different runs, or running (``wait=True``:
    wait for running parts instead, as rank 0 of a torchrun job does, and give up with one line when a missing
    part is neither finished nor running for ``grace_seconds``). Shards named like ours that the plan does not
    list are removed, and ``.parts/`` with them."""
    if storage.is_url(out_dir):
        raise DfdError(f"{storage.mask(out_dir)}: parts are merged in the shared folder they were written to")
    out_dir = Path(out_dir)
    parts = _wait_for_parts(out_dir, progress, poll_seconds, grace_seconds) if wait else _part_records(out_dir)
    if not parts:
        raise DfdError(f"{out_dir}: no finished part to merge ({out_dir / RECORDS_FOLDER} holds no part record); "
                       f"run 'dfdtrain shard --part I/N' first")
    counts = sorted({count for _, count in parts})
    if len(counts) != 1:
        raise DfdError(f"{out_dir}: part records of {len(counts)} part counts ({', '.join(map(str, counts))}); "
                       f"remove {out_dir / RECORDS_FOLDER} and shard again")
    count = counts[0]
    running = [index for index, n in _running_parts(out_dir) if n == count]
    if running:
        raise DfdError(f"{out_dir}: cannot merge while part(s) {_name_some([str(i) for i in sorted(running)])} of "
                       f"{count} are running")
    missing = [str(index) for index in range(count) if not parts.get((index, count))]
    if missing:
        raise DfdError(f"{out_dir}: cannot merge: part(s) {_name_some(missing)} of {count} are missing or "
                       f"unfinished; run them with --part I/{count}, then merge")
    records_by_part = [parts[(index, count)] for index in range(count)]
    runs = collections.Counter(record["run"] for record in records_by_part)
    if len(runs) > 1:
        common = runs.most_common(1)[0][0]
        odd = [str(record["part"]) for record in records_by_part if record["run"] != common]
        raise DfdError(f"{out_dir}: cannot merge: part(s) {_name_some(odd)} of {count} were made from another "
                       f"manifest or other options than the rest; rerun them with the same command")
    first = records_by_part[0]
    with DirectoryLock(out_dir, "shard --merge") as lock:
        notes = [lock.takeover_message()] if lock.takeover_message() else []
        shard_records, expected = {}, dict(zip(first["plan"], first["plan_hashes"]))
        owners = {name: record["part"] for record in records_by_part for name in record["shards"]}
        for name in first["plan"]:
            rerun = f"rerun part {owners.get(name, '?')}/{count}, then merge"
            try:
                shard_records[name] = read_json(out_dir / RECORDS_FOLDER / f"{name}.json")
            except (OSError, ValueError):
                raise DfdError(f"{out_dir}: cannot merge: the record of {name} is missing; {rerun}") from None
            if shard_records[name].get("plan_hash") != expected[name]:
                raise DfdError(f"{out_dir}: cannot merge: {name} was written from another manifest or other "
                               f"options; {rerun}")
            tar = out_dir / name
            if not tar.is_file() or tar.stat().st_size != shard_records[name].get("bytes"):
                raise DfdError(f"{out_dir}: cannot merge: {name} is missing or not the size its record says; "
                               f"{rerun}")
        planned = set(first["plan"])
        earlier = set(_earlier_records(out_dir, [])) | set(shard_records)
        for record in records_by_part:
            notes += record.get("notes", [])
        notes += _remove_stale_shards(out_dir, planned, earlier)
        counts = collections.Counter()
        for record in records_by_part:
            counts.update(record.get("counts", {}))
        seconds = max(record["finished"] for record in records_by_part) - min(record["started"]
                                                                             for record in records_by_part)
        resumed = sum(record["resumed_shards"] for record in records_by_part)
        runs = earlier_runs(out_dir, resumed, first["options"]) + [
            run_summary(seconds, len(first["plan"]) - resumed, resumed, counts, parts=count)]
        index = _build_index(first["plan"], shard_records, first["options"], first["manifest"], runs)
        index["parts"] = [{"part": record["part"], "host": record["host"], "shards": len(record["shards"]),
                           "samples": record["samples"], "resumed_shards": record["resumed_shards"],
                           "seconds": round(record["finished"] - record["started"], 2)} for record in records_by_part]
        if notes:
            index["notes"] = notes
        write_json(out_dir / "index.json", index)
        for name in (*first["plan"], *(Part(i, count).record_name[:-len(".json")] for i in range(count))):
            (out_dir / RECORDS_FOLDER / f"{name}.json").unlink(missing_ok=True)
        _remove_records(out_dir / RECORDS_FOLDER)
        for index_number in range(count):
            lock_path = out_dir / Part(index_number, count).lock_name
            if not DirectoryLock(out_dir, "shard", name=lock_path.name).live_owner():
                lock_path.unlink(missing_ok=True)  # a killed part's lock: nothing holds it now
        return index


def _wait_for_parts(out_dir, progress, poll_seconds, grace_seconds):
    """The part records once every part of the run has finished (rank 0's wait under torchrun/srun)."""
    announced = False
    absent_since = {}
    while True:
        parts = _part_records(out_dir)
        counts = {count for _, count in parts}
        if len(counts) == 1:
            count = counts.pop()
            missing = [index for index in range(count) if not parts.get((index, count))]
            if not missing:
                return parts
            running = {index for index, n in _running_parts(out_dir) if n == count}
            now = time.monotonic()
            for index in missing:
                if index in running:
                    absent_since.pop(index, None)
                elif now - absent_since.setdefault(index, now) > grace_seconds:
                    raise DfdError(f"{out_dir}: part {index}/{count} is neither finished nor running; run it "
                                   f"with --part {index}/{count}, then 'dfdtrain shard --merge --out {out_dir}'")
            if progress and not announced:
                print(f"shard: waiting for part(s) {_name_some([str(i) for i in missing])} of {count} to finish",
                      file=sys.stderr)
                announced = True
        else:
            return parts  # merge_parts names the problem
        time.sleep(poll_seconds)


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
            # an index.json of a version before records moved into it has no plan_hash: nothing to resume from;
            # a wrongly typed entry (a hand-edited index) is not trusted either: its shard is written again
            if entry.get("plan_hash") and _is_plain_tar_name(name) and entry_problem(entry) is None:
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


def _kept_record(tar_path, record, digest, present=None):
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
    stage_seconds, detector_frames = collections.Counter(), 0
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
            stage_seconds.update({stage: value for stage, value in result.get("stats", {}).items()
                                  if stage in STAGES})
            detector_frames += result.get("stats", {}).get("detections", 0)
            if result["meta"].get("store") == "faces":
                face_samples.append(face_clip_summary(result["meta"]))
    record = {"name": tar_path.name, "split": split, "plan_hash": digest, "samples": len(keys),
              "labels": dict(sorted(labels.items())), "bytes": shard.bytes, "sha256": shard.sha256,
              "dali_index": os.path.basename(dali_index_path(tar_path)) if shard.members else None,
              "keys": keys, "skipped": skipped}
    if face_samples:
        record["face_clips"] = face_clip_totals(face_samples)
    if stage_seconds:
        record["stage_seconds"] = {stage: round(value, 3) for stage, value in stage_seconds.items()}
        record["detector_frames"] = detector_frames
    return record


def face_clip_summary(meta):
    """What index.json keeps of one face-clip sample: sizes, tracks, fidelity (vs the source crops), whether its
    face is doubtful and the tracks dropped, by reason."""
    return {"key": meta["key"], "path": os.path.join(meta.get("root", ""), meta.get("path", "")),
            "source_bytes": meta["source"]["bytes"], "clip_bytes": meta["bytes"], "tracks": len(meta["tracks"]),
            "no_face": meta["no_face"], "doubtful": meta.get("doubtful"),
            "dropped_tracks": meta.get("dropped_track_reasons", {}), **meta["fidelity"]}


def face_clip_totals(summaries):
    """One shard's face-clip totals, from its samples' summaries: what its record and index.json entry keep (a
    resumed shard adds them to the run's without reading its samples)."""
    worst = max(summaries, key=lambda item: item["mean_abs_error"])
    dropped = collections.Counter()
    for item in summaries:
        dropped.update(item.get("dropped_tracks", {}))
    return {"videos": len(summaries), "no_face": sum(item["no_face"] for item in summaries),
            "tracks": sum(item["tracks"] for item in summaries),
            "source_bytes": sum(item["source_bytes"] for item in summaries),
            "clip_bytes": sum(item["clip_bytes"] for item in summaries),
            "psnr_db_sum": sum(item["psnr_db"] for item in summaries),
            "psnr_db_min": min(item["psnr_db"] for item in summaries),
            "mean_abs_error_sum": sum(item["mean_abs_error"] for item in summaries),
            "mean_abs_error_max": worst["mean_abs_error"], "worst_key": worst["key"],
            "dropped_tracks": dict(sorted(dropped.items())),
            "doubtful": [{"key": item["key"], "path": item.get("path"), "reason": item["doubtful"]}
                         for item in summaries if item.get("doubtful")]}


def aggregate_face_clips(shard_totals):
    """index.json's ``face_clips``: totals and the fidelity of the stored clips vs the decoded source crops, over
    the shards' ``face_clip_totals`` (per video it is in each sample's json)."""
    if not shard_totals:
        return None
    videos = sum(item["videos"] for item in shard_totals)
    worst = max(shard_totals, key=lambda item: item["mean_abs_error_max"])
    dropped = collections.Counter()
    for item in shard_totals:
        dropped.update(item.get("dropped_tracks", {}))
    return {"videos": videos, "no_face": sum(item["no_face"] for item in shard_totals),
            "doubtful": sum(len(item.get("doubtful", [])) for item in shard_totals),
            "tracks": sum(item["tracks"] for item in shard_totals),
            "dropped_tracks": dict(sorted(dropped.items())),
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


def _remove_leftover_temp_files(out_dir, planned_names, only_planned=False):
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


def _build_index(names, records, options, source, runs):
    """index.json of the shards ``names`` (plan order) from their records; ``runs``: what each run that made the
    folder did (``run_summary``), the last one this run."""
    # each shard's record but its skipped videos (all in "skipped"): what a re-run resumes from
    shards = [{key: value for key, value in records[name].items() if key != "skipped"} for name in names]
    skipped = [item for name in names for item in records[name]["skipped"]]
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
        # seconds: every run's wall seconds, added up; resumed_shards: what the last run kept
        "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards),
                   "bytes": sum(s["bytes"] for s in shards), "skipped": len(skipped),
                   "resumed_shards": runs[-1]["resumed_shards"],
                   "seconds": round(sum(run["seconds"] for run in runs), 2)},
        "runs": runs,
        "skipped": skipped,
    }
    shard_face_clips = [records[name]["face_clips"] for name in names if records[name].get("face_clips")]
    face_clips = aggregate_face_clips(shard_face_clips)
    if face_clips:
        index["face_clips"] = face_clips
        # the videos whose best face track is not to be trusted unseen: 'dfdtrain preview FOLDER --doubtful'
        index["doubtful_faces"] = [item for totals in shard_face_clips for item in totals.get("doubtful", [])]
    # what the shards cost to write, whichever run wrote them (each shard's record keeps its own)
    stage_seconds = collections.Counter()
    for name in names:
        stage_seconds.update(records[name].get("stage_seconds", {}))
    if stage_seconds:  # where the seconds of the videos went, summed over workers and runs
        index["totals"]["stage_seconds"] = {stage: round(stage_seconds[stage], 2) for stage in STAGES
                                            if stage_seconds.get(stage)}
    detector_frames = sum(records[name].get("detector_frames", 0) for name in names)
    if detector_frames:  # frames the face detector saw
        index["totals"]["detector_frames"] = detector_frames
    shared = runs[-1].get("shared_detector")
    if shared:
        index["totals"]["shared_detector"] = shared
    return index


def run_summary(seconds, written, resumed, counts, parts=None):
    """One run's entry in index.json's ``runs``: wall seconds, shards written and kept, the written videos'
    seconds per stage, and the shared detector's batching (``counts`` from ``_write_pending``)."""
    summary = {"seconds": round(seconds, 2), "written_shards": written, "resumed_shards": resumed,
               "stage_seconds": {stage: round(counts[stage], 2) for stage in STAGES if counts.get(stage)}}
    if counts.get("detector_batches"):
        summary["shared_detector"] = {
            "batches": counts["detector_batches"], "frames": counts["detector_frames"],
            "frames_per_batch": round(counts["detector_frames"] / counts["detector_batches"], 1)}
    if parts:
        summary["parts"] = parts
    return summary


def earlier_runs(out_dir, resumed, options):
    """The ``runs`` of the index.json this run replaces, when this run kept shards and that index was made with
    the same options (else its runs made what is gone); an index.json of a version before ``runs`` stands as one
    run of its totals."""
    if not resumed:
        return []
    try:
        index = read_json(out_dir / "index.json")
        if index.get("options") != options:
            return []
        runs = index.get("runs")
        if isinstance(runs, list) and all(isinstance(run, dict) and isinstance(run.get("seconds"), (int, float))
                                          for run in runs):
            return runs
        totals = index["totals"]
        return [run_summary(float(totals["seconds"]), int(totals["shards"]) - int(totals["resumed_shards"]),
                            int(totals["resumed_shards"]), totals.get("stage_seconds", {}))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


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
                     f"(worst {face_clips['mean_abs_error_max']:.2f}); {face_clips['no_face']} without a face, "
                     f"{face_clips.get('doubtful', 0)} doubtful")
        if face_clips.get("dropped_tracks"):
            lines.append(f"face tracks dropped: {sum(face_clips['dropped_tracks'].values())} (" + ", ".join(
                f"{reason} {count}" for reason, count in face_clips["dropped_tracks"].items()) + ")")
        doubtful = index.get("doubtful_faces") or []
        if doubtful:
            lines.append(f"doubtful faces: {len(doubtful)} video(s) whose best face track is not to be trusted unseen "
                         f"(look at them: dfdtrain preview SHARD_FOLDER --doubtful --out doubtful.png):")
            lines += [f"  {item['key']}: {item['reason']}" for item in doubtful[:10]]
            if len(doubtful) > 10:
                lines.append(f"  ... ({len(doubtful) - 10} more in index.json's doubtful_faces)")
    stage_seconds = index["totals"].get("stage_seconds")
    if stage_seconds:  # the written videos' seconds, summed over processes: where a faster run must save
        total = sum(stage_seconds.values()) or 1
        lines.append("seconds per stage: " + ", ".join(f"{stage} {value:.1f} ({value / total:.0%})"
                                                       for stage, value in stage_seconds.items()))
    shared = index["totals"].get("shared_detector")
    if shared:
        lines.append(f"shared face detector: {shared['frames']} frames in {shared['batches']} batches "
                     f"({shared['frames_per_batch']} per batch)")
    if index.get("parts"):
        lines.append(f"merged from {len(index['parts'])} parts: " + ", ".join(
            f"{part['part']} ({part['samples']} videos, {part['seconds']:.0f} s on {part['host']})"
            for part in index["parts"][:8]) + (", ..." if len(index["parts"]) > 8 else ""))
    if index["skipped"]:
        lines.append(f"skipped {len(index['skipped'])}:")
        lines += [f"  {item['path']}: {item['reason']}" + (f" ({item['detail']})" if item["detail"] else "")
                  for item in index["skipped"][:10]]
    return "\n".join(lines)
