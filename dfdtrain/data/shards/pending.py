"""Writing the shards a plan still needs: each planned shard whose earlier record matches is kept, the others are
written from their videos' samples (made in this process or in a pool of worker processes, with the face
detector in each or one shared), each with its record in ``.parts/`` and, for a remote folder, uploaded.

The workers get the videos a shard at a time (``_shard_samples``): the shard being written and the next one, so
memory holds two shards' manifest rows, never the whole manifest's.
"""

import collections
import dataclasses
import json
import multiprocessing
import os
import threading

from tqdm import tqdm

from dfdtrain.data import storage
from dfdtrain.data.decode.dali_tar_index import dali_index_path
from dfdtrain.data.shards.folder import RECORDS_FOLDER, kept_record
from dfdtrain.data.shards.samples import FRAME_STAGES, Compute, SampleWorker, prepare_in_worker, start_worker
from dfdtrain.data.shards.summary import STAGES, face_clip_summary, face_clip_totals
from dfdtrain.data.shards.tars import TarShardWriter
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import write_json


@dataclasses.dataclass
class VideoWork:
    """What each video goes through, and how: the per-sample settings, the Compute, the progress bar."""

    face_detector: str
    face_frames: int
    face_clips: object
    compute: Compute
    progress: bool


def write_pending(plan, hashes, out_dir, options, earlier, work, remote=None, with_keys=True):
    """Keep each shard of ``plan`` (a ShardPlan) whose earlier record matches its plan hash (``hashes``: {name:
    plan_hash}), write the others (each record also to ``.parts/<shard>.json`` as it is finished, and with
    ``remote`` each shard uploaded); returns ({name: record}, shards kept, counts: the written videos' seconds per
    stage and the shared detector's batches and frames). ``with_keys=False``: the records written here are
    returned without their ``keys`` (a part's record needs none, and the merge reads them from ``.parts/``), so
    memory holds no string per video."""
    records_dir = out_dir / RECORDS_FOLDER
    records_dir.mkdir(parents=True, exist_ok=True)
    present = remote.sizes() if remote else None  # a remote run keeps what is in the bucket
    records, pending = {}, []
    for shard in plan:
        record = kept_record(out_dir / shard.name, earlier.get(shard.name), hashes[shard.name], present)
        if record is None:
            pending.append(shard)
        else:
            records[shard.name] = record
            if not (records_dir / f"{shard.name}.json").is_file():  # kept from index.json: a merge reads .parts/
                write_json(records_dir / f"{shard.name}.json", record)
    compute = work.compute
    bar = tqdm(total=sum(len(shard.positions) for shard in pending), desc="shard", unit="video",
               disable=not work.progress, mininterval=0.5)
    context = multiprocessing.get_context("spawn")
    frame_counts = context.Array("q", len(FRAME_STAGES)) if work.face_clips is not None and pending else None
    parallel = compute.workers > 1 and pending
    service = None
    if parallel and compute.shared_detector and work.face_detector:
        from dfdtrain.data.faces.detect import SharedDetector, build_face_detector

        service = SharedDetector(build_face_detector(work.face_detector, device=compute.device), compute.workers,
                                 context)
    detector_service = (service.requests, service.replies, context.Value("i", 0)) if service else None
    faces = bool(work.face_detector) or work.face_clips is not None
    pool = context.Pool(compute.workers, start_worker, (frame_counts, compute.device, compute.frame_cache_bytes,
                                                        detector_service, faces)) if parallel else None
    threads = None
    if pool is None:  # one worker: the work runs in this process
        worker = SampleWorker(compute.device, compute.frame_cache_bytes, frame_counts)
        if work.face_detector and pending:
            import torch

            # one thread, as in each worker process: MTCNN's boxes differ in the last digit with the thread count,
            # and the shards must be the same bytes whoever wrote them (one process, workers, parts); a process
            # per core (--workers, --part) is how sharding uses a machine, never oversubscribing it
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
    postfix = _Postfix(bar, frame_counts)
    counts = collections.Counter()  # seconds per stage, frames detected, the shared detector's batches
    try:
        samples_of_shards = _shard_samples(plan, pending, work, pool, None if pool else worker)
        for done, (shard, samples) in enumerate(zip(pending, samples_of_shards)):
            postfix.show(shard.name)
            try:
                records[shard.name] = _write_one_shard(out_dir / shard.name, shard.split, hashes[shard.name],
                                                       samples, bar)
                counts.update(records[shard.name].get("stage_seconds", {}))
                write_json(records_dir / f"{shard.name}.json", records[shard.name])
                if not with_keys:
                    del records[shard.name]["keys"]
                if remote:
                    remote.upload_shard(out_dir / shard.name)
            except OSError as error:
                if not storage.is_no_space(error):
                    raise
                raise DfdError(_no_space_for_shards(out_dir / shard.name, error, plan, pending[done:],
                                                    options)) from None
    finally:
        postfix.close()
        bar.close()
        if pool:
            pool.close()
            pool.join()
        if service:
            service.close()
            counts.update(detector_batches=service.batches, detector_frames=service.frames)
        if threads is not None:
            torch.set_num_threads(threads)
    return records, len(plan) - len(pending), dict(counts)


def _shard_samples(plan, pending, work, pool, worker):
    """Per pending shard, an iterator of its videos' samples in tar order (from ``pool``, or made by ``worker``
    in this process as they are asked for). The pool is handed the next shard's videos while this shard is
    written, so no worker waits at a shard boundary, and at most two shards' rows are in memory at once (all
    rows at once would be ~2 KB a video)."""
    def start(shard):
        jobs = [(row, work.face_detector, work.face_frames, work.face_clips) for row in plan.rows(shard)]
        return pool.imap(prepare_in_worker, jobs, chunksize=1) if pool else (worker.prepare(*job) for job in jobs)

    upcoming = start(pending[0]) if pending else None
    for number in range(len(pending)):
        current = upcoming
        upcoming = start(pending[number + 1]) if number + 1 < len(pending) else None
        yield current


def _no_space_for_shards(tar_path, error, plan, left, options):
    """The one line of a shard write that hit a full file system (its temp file is gone again): the shard, the
    free space and what the shards left (this one included) need: their videos' bytes for the original store,
    at most that for face clips."""
    needed = sum(plan.video_bytes(shard) for shard in left)
    bound = "about" if options.get("store") == "original" else "at most"
    return storage.no_space_line(tar_path, error, f"the {len(left)} shard(s) left need {bound} "
                                                  f"{storage.megabytes(needed)} MB; free space and run again: "
                                                  "finished shards are kept")


def _write_one_shard(tar_path, split, digest, samples, bar):
    labels = collections.Counter()
    skipped, keys, face_samples = [], [], []
    stage_seconds, detector_frames = collections.Counter(), 0
    with TarShardWriter(tar_path) as shard:
        for result in samples:
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
