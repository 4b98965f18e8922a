"""The per-video work of a shard run: read a video, re-check it from its bytes, and make its sample (the bytes
untouched, with face boxes, or its face tracks as clips); or a skip record naming the reason.

``Compute`` says how a run does this work (processes, the detector's device, the frame cache). Each process
doing it holds one ``SampleWorker``: a worker process gets its own from ``start_worker`` (the pool's
initializer), a one-worker run makes one in its own process, and ``prepare_sample`` prepares one video here.
"""

import dataclasses
import functools
import os

from dfdtrain.data.decode.video import probe, read_source
from dfdtrain.core.errors import BadVideo, DfdError


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


# Source frames the face-clip work has been through, [scanned for faces, cropped and encoded], added to as each
# frame is done: a 1080p video takes minutes, and the bar itself only moves per video. The counters are a shared
# array each SampleWorker adds to (the main process shows it, see ``pending``), or None: not counted.
FRAME_STAGES = {"scan": 0, "encode": 1}


@functools.lru_cache(maxsize=None)
def _cpu_face_detector(name):
    """A CPU face detector, built once per process: this process's later runs and samples use it again (a GPU
    detector is built per run, and goes with it)."""
    from dfdtrain.data.faces.detect import build_face_detector

    return build_face_detector(name, device="cpu")


class SampleWorker:
    """One process's per-video work and what it keeps from one video to the next: its face detector (built on
    ``device`` at first use, or ``detector``: a client of the main process's shared detector), the frame cache
    size for face clips (None: the face store's default) and the shared frame counters it adds to
    (``frame_counts``, see ``FRAME_STAGES``; None: not counted)."""

    def __init__(self, device="cpu", frame_cache_bytes=None, frame_counts=None, detector=None):
        self.device, self.frame_cache_bytes, self.frame_counts = device, frame_cache_bytes, frame_counts
        self.detector = detector

    def face_detector(self, name):
        if self.detector is None:
            if self.device == "cpu":
                self.detector = _cpu_face_detector(name)
            else:
                from dfdtrain.data.faces.detect import build_face_detector

                self.detector = build_face_detector(name, device=self.device)
        return self.detector

    def count_frames(self, stage, frames):
        if self.frame_counts is not None:
            with self.frame_counts.get_lock():
                self.frame_counts[FRAME_STAGES[stage]] += frames

    def prepare(self, row, face_detector=None, face_frames=16, face_clips=None):
        """Read and re-check one video; returns {key, members: [(extension, bytes)], meta, stats} or a skip record.

        ``face_clips`` (FaceClipOptions): store the video's face tracks as short-GOP clips instead of its bytes;
        ``stats`` then holds the seconds per stage (see ``make_face_clips``).
        """
        path = os.path.join(row["root"], row["path"])
        ext = os.path.splitext(row["path"])[1].lower().lstrip(".") or "bin"
        try:
            data = read_source(path, path)
            info = probe(data, name=path)
            meta = {**row, **info}
            if face_clips is not None:
                from dfdtrain.data.faces.store import SkipVideo, make_face_clips

                stats = {}
                cache = {} if self.frame_cache_bytes is None else {"frame_cache_bytes": self.frame_cache_bytes}
                try:
                    members, fields = make_face_clips(data, path, info, self.face_detector(face_detector or "mtcnn"),
                                                      face_clips, progress=self.count_frames, stats=stats, **cache)
                except SkipVideo as skip:
                    return {"skip": {"key": row["key"], "path": path, "reason": skip.reason, "detail": skip.detail}}
                return {"key": row["key"], "members": members, "meta": {**meta, **fields}, "stats": stats}
            if face_detector:
                from dfdtrain.data.faces.detect import detect_faces

                meta["faces"] = detect_faces(data, face_frames, self.face_detector(face_detector), info["frames"])
        except BadVideo as error:
            return {"skip": {"key": row["key"], "path": path, "reason": error.reason, "detail": error.detail}}
        return {"key": row["key"], "members": [(ext, data)], "meta": meta}


def prepare_sample(row, face_detector=None, face_frames=16, face_clips=None):
    """One video's sample (``SampleWorker.prepare``), prepared in this process with a CPU face detector."""
    return SampleWorker().prepare(row, face_detector, face_frames, face_clips)


_worker = None  # a worker process's SampleWorker, made by start_worker


def start_worker(frame_counts=None, device="cpu", frame_cache_bytes=None, detector_service=None, faces=True):
    """A worker process's start (the pool's initializer): its SampleWorker with the shared counters and the face
    detector's device, or a client of the main process's shared detector (``detector_service``: its queues and a
    worker counter); with ``faces`` (the videos' faces are detected or stored), one torch thread. Without, torch
    is never imported: a worker that copies the original bytes stays ~60 MB instead of ~400."""
    global _worker
    if faces:
        import torch

        torch.set_num_threads(1)  # one process per core; and MTCNN's boxes depend on the thread count (write_pending)
    detector = None
    if detector_service is not None:
        from dfdtrain.data.faces.detect import DetectorClient

        requests, replies, counter = detector_service
        with counter.get_lock():
            worker, counter.value = counter.value, counter.value + 1
        detector = DetectorClient(requests, replies[worker], worker, {})
    _worker = SampleWorker(device, frame_cache_bytes, frame_counts, detector)


def prepare_in_worker(job):
    """One video's sample in a worker process: ``job`` is the arguments of ``SampleWorker.prepare``."""
    return _worker.prepare(*job)
