"""The shard stage: manifest -> WebDataset tars ``<split>-%06d.tar`` + DALI index files + index.json.

Each sample is ``<key>.<ext>`` holding the original video bytes, untouched, and ``<key>.json`` holding the
manifest row (label, dataset, group, split, probe fields) and, with a face detector, per-frame face boxes.
With ``store="faces"`` a sample instead holds each face track as a short-GOP square clip (``<key>.mp4`` for
track 0, ``<key>.track1.mp4``...; see ``dfdtrain.data.faces.store``) and the json maps it back to the source;
index.json then aggregates the clips' fidelity, and videos skipped for having no face are named with
reason ``no-face``; with a landmark model (``FaceClipOptions.landmarks``) each track's json entry holds its
points per frame and index.json's ``landmarks`` names the model and its versions (``faces.landmarks``).

A run holds per video only what the plan needs (``manifest_rows``: ~100 bytes, where a row as a dict is ~2 KB) and
reads whole rows back from the manifest a shard at a time, so its memory barely grows with the manifest.
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

Here: ``write_shards``, the stage itself, and a one-process run; the rest of it is by concern in this folder
(``manifest_rows``: the manifest as a run holds it, ``plan``, ``samples``: the per-video work, ``tars``, ``pending``:
the shards a run writes, ``folder``: its bookkeeping, ``summary``: index.json, ``parts``: partitioned runs and their
merge, ``remote``: s3:// output).
"""

import dataclasses
import os
import time
from pathlib import Path

from dfdtrain.data import storage
from dfdtrain.data.shards.folder import (RECORDS_FOLDER, earlier_records, remove_leftover_temp_files, remove_records,
                                         remove_stale_shards)
from dfdtrain.data.shards.manifest_rows import ManifestRows
from dfdtrain.data.shards.parts import merge_parts, refuse_while_parts_are_open, write_part
from dfdtrain.data.shards.pending import VideoWork, write_pending
from dfdtrain.data.shards.plan import DEFAULT_TARGET_BYTES, plan_shards
from dfdtrain.data.shards.remote import RemoteShardFolder
from dfdtrain.data.shards.samples import Compute
from dfdtrain.data.shards.summary import build_index, earlier_runs, run_summary
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import check_output_folder, write_json
from dfdtrain.core.locks import DirectoryLock

STORES = ("original", "faces")


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
        from dfdtrain.data.faces.clip_options import FaceClipOptions

        face_clips = face_clip_options or FaceClipOptions()
        face_detector = face_detector or "mtcnn"
    # per video its key, split and bytes and where its row is: whole rows are read a shard at a time (~2 KB each)
    rows = ManifestRows.read(manifest) if isinstance(manifest, (str, os.PathLike)) else ManifestRows.of(list(manifest))
    source = rows.source
    leaks = rows.leaking_groups()
    if leaks and not allow_leakage:
        group, splits = next(iter(leaks.items()))
        raise DfdError(f"{source}: {len(leaks)} group(s) are in more than one split (e.g. {group} in "
                       f"{'/'.join(splits)}); re-index, or pass --allow-leakage to shard it anyway")
    if target_bytes <= 0:
        raise DfdError(f"target shard size must be positive, not {target_bytes}")
    remote = None
    if storage.is_url(out_dir):
        if part is not None and part.count > 1:
            raise DfdError(f"{storage.redact(out_dir)}: parts (--part, torchrun, srun) write into one shared folder "
                           "and lock it; shard into a folder every node sees, or run one process with --workers N")
        remote = RemoteShardFolder(str(out_dir), staging)
        out_dir = remote.staging
    out_dir = Path(out_dir)
    check_output_folder(out_dir)
    options = {"seed": seed, "target_bytes": target_bytes, "face_detector": face_detector,
               "face_frames": face_frames if face_detector and store == "original" else None, "store": store}
    if face_clips is not None:
        options["face_clips"] = dataclasses.asdict(face_clips)  # in the plan hash: new settings rewrite shards
        # the landmark model: named only when used (so the plan hashes of runs without it stay as they were), with
        # its packages' versions (new versions rewrite shards: points from two versions never mix in a folder)
        if options["face_clips"].pop("landmarks", None):
            from dfdtrain.data.faces.landmarks import describe

            options["landmarks"] = describe(face_clips.landmarks)
    plan = plan_shards(rows, target_bytes, seed)
    hashes = plan.hashes(options)  # one read of the manifest; every comparison with earlier runs uses these
    work = VideoWork(face_detector, face_frames, face_clips, compute, progress)
    try:
        if part is not None and part.count > 1:
            record = write_part(plan, hashes, out_dir, options, source, part, work)
            return merge_parts(out_dir, wait=True, progress=progress) if merge_when_done else record
        return _write_whole(plan, hashes, out_dir, options, source, work, remote)
    except OSError as error:
        if storage.is_no_space(error):  # a write outside a shard (a record, index.json): the folder is named
            raise DfdError(storage.no_space_line(error.filename or out_dir, error)) from None
        raise


def _write_whole(plan, hashes, out_dir, options, source, work, remote):
    """A one-process run: every shard of the plan, kept or written, and index.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(out_dir, "shard") as lock:
        refuse_while_parts_are_open(out_dir, "a one-process run")
        notes = [lock.takeover_message()] if lock.takeover_message() else []
        started = time.time()
        notes += remove_leftover_temp_files(out_dir, set(plan.names))
        if remote:
            remote.fetch_records()
        earlier = earlier_records(out_dir, plan)
        records, resumed, counts = write_pending(plan, hashes, out_dir, options, earlier, work, remote)
        planned = set(plan.names)
        notes += remove_stale_shards(out_dir, planned, set(earlier))
        if remote:
            notes += remote.remove_stale_shards(planned)
        this_run = run_summary(time.time() - started, len(plan) - resumed, resumed, counts)
        runs = earlier_runs(out_dir, resumed, options) + [this_run]
        index = build_index(plan.names, records, options, source, runs)
        if notes:
            index["notes"] = notes  # what this run cleaned up or took over; the command prints them
        write_json(out_dir / "index.json", index)
        if remote:
            remote.publish_index(out_dir / "index.json", planned)
        remove_records(out_dir / RECORDS_FOLDER)  # index.json holds them now
        return index
