"""Face detection at shard time: a few frames per video, boxes stored next to the video in the shard.

``detect_faces(source, num_frames, detector, frame_count)`` samples ``num_frames`` frames uniformly (the
evaluation sampler's frames),
detects faces on them and returns a JSON-ready dict. Detectors live in the ``FACE_DETECTORS`` registry
and share one API: ``detector.detect(frames)`` takes uint8 RGB frames [T,H,W,3] and returns, per frame,
a list of faces, largest and surest first, each ``[x1, y1, x2, y2, score]`` in the original frame's pixels
followed by its 5 landmarks as 10 numbers where the detector gives them (MTCNN: left eye, right eye, nose,
left and right mouth corner, x then y; ``tracks.landmarks_sane`` checks them).
``detector.detection_size(width, height)`` says at what size it looks at such frames, so that a caller that
decodes anyway can hand it frames already scaled there (``detect(small, source_size=(width, height))``: boxes
still come back in source pixels) instead of full-size copies.

``SharedDetector`` runs one detector in the main process for every worker process (a GPU one: ``shard --device
cuda``): workers hold a ``DetectorClient`` with the same ``detect`` API, and the service batches the frames of
every waiting request of one size into one call, so frames from several videos share each batch.
"""

import queue
import threading

import numpy as np
from PIL import Image

from dfdtrain.data.decode.decoders import build_decoder
from dfdtrain.data.decode.sampler import uniform_indices
from dfdtrain.data.faces.tracks import best_track_boxes
from dfdtrain.core.errors import DfdError
from dfdtrain.core.registry import Registry

FACE_DETECTORS = Registry("face detector")


def build_face_detector(name="mtcnn", device="cpu", **options):
    """Build a registered face detector, e.g. ``build_face_detector("mtcnn", max_side=640)``."""
    return FACE_DETECTORS.get(name)(device=device, **options)


def detect_faces(source, num_frames, detector, frame_count):
    """Detect faces on ``num_frames`` frames of a video (path or bytes) with ``frame_count`` frames.

    Returns ``{"detector", "frames": [indices], "boxes": [per frame: [face] or []], "frames_without_face": n}``:
    on each frame the face of the video's best track (``tracks.best_track_boxes``), so a false face never stands
    in for the person; a frame without it keeps its place as an empty list.
    """
    indices = uniform_indices(frame_count, num_frames)
    # the loaders' decoder: boxes are in the same (upright) pixel coordinates the crops will use
    frames = build_decoder("pyav").read(source, indices)
    boxes = best_track_boxes(indices, detector.detect(frames), frame_count, (frames.shape[2], frames.shape[1]))
    return {
        "detector": detector.name,
        "frames": indices,
        "boxes": boxes,
        "frames_without_face": sum(1 for faces in boxes if not faces),
    }


def _check_frames(frames):
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a uint8 array [T,H,W,3], got {frames.dtype} {list(frames.shape)}")
    return frames


def _downscale(frames, max_side):
    """Resize every frame so its longer side is at most ``max_side`` (PIL bilinear, antialiased)."""
    height, width = frames.shape[1:3]
    if not max_side or max(height, width) <= max_side:
        return frames
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL wants (width, height)
    return np.stack([np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR)) for frame in frames])


def auto_contrast(frames, low=0.5, high=99.5, max_gain=4.0):
    """Each frame's levels stretched so that its ``low``..``high`` percentiles span 0..255 (gain at most
    ``max_gain``, so that a black frame's noise is not blown up). A dim room is where MTCNN misses faces: on the
    DFDC fixture abofeumbvv (mean level 34/255) it finds the face on 4 of 19 frames as decoded and on 19 of 19
    stretched, and on the well-lit fixtures the stretch is close to the identity and finds the same faces."""
    out = np.empty_like(frames)
    levels = np.arange(256, dtype=np.float64)
    for number, frame in enumerate(frames):
        lowest, highest = np.percentile(frame[::4, ::4], (low, high))  # a 1/16 sample is plenty for percentiles
        gain = min(max_gain, 255.0 / max(highest - lowest, 1.0))
        out[number] = np.clip((levels - lowest) * gain, 0, 255).round().astype(np.uint8)[frame]
    return out


def _clean_faces(boxes, scores, points, width, height, min_score, min_size):
    """Clip boxes to the frame, drop unsure or tiny ones, sort by area * score (largest, surest first); each face
    [x1, y1, x2, y2, score, *landmarks] (landmarks as given, in the same pixels)."""
    faces = []
    for (x1, y1, x2, y2), score, landmarks in zip(boxes, scores, points):
        x1, x2 = np.clip([x1, x2], 0, width)
        y1, y2 = np.clip([y1, y2], 0, height)
        if score < min_score or min(x2 - x1, y2 - y1) < min_size:
            continue
        faces.append((float(x1), float(y1), float(x2), float(y2), float(score),
                      [round(float(value), 1) for value in np.ravel(landmarks)]))
    faces.sort(key=lambda face: (face[2] - face[0]) * (face[3] - face[1]) * face[4], reverse=True)
    return [[round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1), round(score, 4), *landmarks]
            for x1, y1, x2, y2, score, landmarks in faces]


@FACE_DETECTORS.register("mtcnn")
class MtcnnDetector:
    """facenet-pytorch's MTCNN, run on a downscaled copy of the frames (1080p MTCNN on CPU is slow).

    Options: ``max_side`` (longer side of the detection copy, None = full resolution), ``min_face`` (the
    smallest face MTCNN's pyramid looks for, in pixels of that copy: 40 is 120 px in a 1080p frame, 53 px in
    a 480p one; facenet's own 20 costs 1.8x the time on the fixtures, for only low-score boxes of under 70 px
    more), ``min_score`` (drop less sure faces), ``min_size`` (drop faces whose shorter side is under this many
    original pixels).
    """

    name = "mtcnn"

    def __init__(self, device="cpu", max_side=640, min_face=40, min_score=0.9, min_size=20, auto_contrast=True):
        try:
            from facenet_pytorch import MTCNN
        except ImportError:
            raise DfdError("face detector 'mtcnn' needs facenet-pytorch: pip install 'dfdtrain[faces]'") from None
        self.model = MTCNN(keep_all=True, device=device, min_face_size=min_face)
        self.max_side = max_side
        self.min_score = min_score
        self.min_size = min_size
        self.auto_contrast = auto_contrast

    def detection_size(self, width, height):
        """(width, height) of the copy MTCNN looks at for a width x height frame."""
        if not self.max_side or max(width, height) <= self.max_side:
            return width, height
        scale = self.max_side / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def detect(self, frames, source_size=None):
        """Faces per frame. ``source_size=(width, height)``: the frames are copies of frames of that size (at
        ``detection_size``, say), and boxes are given, and filtered by ``min_size``, in the source's pixels."""
        frames = _check_frames(frames)
        if len(frames) == 0:
            return []
        width, height = source_size or (frames.shape[2], frames.shape[1])
        small = _downscale(frames, self.max_side) if source_size is None else frames
        # Per-axis factors: rounding the small size makes x and y scale differ slightly.
        scale_x, scale_y = width / small.shape[2], height / small.shape[1]
        if self.auto_contrast:
            small = auto_contrast(small)
        # One batch of equal-size frames: MTCNN runs each pyramid level for all frames at once.
        batch_boxes, batch_scores, batch_points = self.model.detect(small, landmarks=True)
        results = []
        for boxes, scores, points in zip(batch_boxes, batch_scores, batch_points):
            if boxes is None:  # MTCNN gives None (and scores [None]) for a frame without a face
                results.append([])
                continue
            boxes = np.asarray(boxes, dtype=np.float64) * [scale_x, scale_y, scale_x, scale_y]
            points = np.asarray(points, dtype=np.float64) * [scale_x, scale_y]
            scores = np.asarray(scores, dtype=np.float64)
            results.append(_clean_faces(boxes, scores, points, width, height, self.min_score, self.min_size))
        return results


# ------------------------------------------------------------------------------ one detector for many workers
class DetectorClient:
    """A worker's handle on a ``SharedDetector``: ``detect(frames, source_size)`` sends the frames and waits
    for the boxes. Picklable into spawned worker processes (it holds only queues)."""

    name = "shared"

    def __init__(self, requests, replies, worker, detection_sizes):
        self.requests, self.replies, self.worker = requests, replies, worker
        self.detection_sizes = detection_sizes  # {(width, height): detection size}, filled on demand
        self.number = 0

    def detection_size(self, width, height):
        if (width, height) not in self.detection_sizes:
            self.detection_sizes[(width, height)] = self._ask("size", (width, height))
        return self.detection_sizes[(width, height)]

    def detect(self, frames, source_size=None):
        frames = _check_frames(frames)
        if len(frames) == 0:
            return []
        return self._ask("detect", (frames, source_size))

    def _ask(self, kind, payload):
        self.number += 1
        self.requests.put((self.worker, self.number, kind, payload))
        number, ok, answer = self.replies.get()
        assert number == self.number, "replies out of order"
        if not ok:
            raise DfdError(f"shared face detector: {answer}")
        return answer


class SharedDetector:
    """Serve ``detector`` to ``workers`` processes from a thread of this one, batching their frames.

    Requests wait in one queue; the service takes every waiting request (up to ``batch_frames`` frames), groups
    them by (frame size, source size) and runs each group as one ``detect`` call: on a GPU the batch, not the
    video, sets the throughput. Worker i's handle is ``DetectorClient(requests, replies[i], i, {})``;
    ``close()`` stops the thread.
    """

    def __init__(self, detector, workers, context, batch_frames=64):
        self.detector, self.batch_frames = detector, batch_frames
        self.requests = context.Queue()
        self.replies = [context.Queue() for _ in range(workers)]
        self.batches = self.frames = 0  # how the batching went, for the run's report
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="shared-face-detector", daemon=True)
        self._thread.start()

    def _waiting(self):
        """The requests waiting now: at least one (blocking briefly), then whatever else is queued."""
        pending = [self.requests.get(timeout=0.2)]
        frames = len(pending[0][3][0]) if pending[0][2] == "detect" else 0
        while frames < self.batch_frames:
            try:
                request = self.requests.get_nowait()
            except queue.Empty:
                break
            pending.append(request)
            frames += len(request[3][0]) if request[2] == "detect" else 0
        return pending

    def _serve(self):
        while not self._stop.is_set():
            try:
                pending = self._waiting()
            except queue.Empty:
                continue
            except (OSError, ValueError, EOFError):  # the queue was closed under us: shutting down
                return
            groups = {}
            for worker, number, kind, payload in pending:
                if kind == "size":
                    self._answer(worker, number, lambda: self.detector.detection_size(*payload))
                    continue
                frames, source_size = payload
                groups.setdefault((frames.shape[1:], source_size), []).append((worker, number, frames))
            for (_, source_size), members in groups.items():
                self._detect_group(members, source_size)

    def _detect_group(self, members, source_size):
        try:
            found = self.detector.detect(np.concatenate([frames for _, _, frames in members]),
                                         source_size=source_size)
        except Exception as error:  # one line back to every waiting worker, never a silent hang
            for worker, number, _ in members:
                self.replies[worker].put((number, False, f"{type(error).__name__}: {error}"))
            return
        self.batches += 1
        start = 0
        for worker, number, frames in members:
            self.replies[worker].put((number, True, found[start:start + len(frames)]))
            start += len(frames)
        self.frames += start

    def _answer(self, worker, number, compute):
        try:
            self.replies[worker].put((number, True, compute()))
        except Exception as error:
            self.replies[worker].put((number, False, f"{type(error).__name__}: {error}"))

    def close(self):
        self._stop.set()
        self._thread.join()
