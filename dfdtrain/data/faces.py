"""Face detection at shard time: a few frames per video, boxes stored next to the video in the shard.

``detect_faces(source, num_frames, detector, frame_count)`` samples ``num_frames`` frames uniformly (the
evaluation sampler's frames),
detects faces on them and returns a JSON-ready dict. Detectors live in the ``FACE_DETECTORS`` registry
and share one API: ``detector.detect(frames)`` takes uint8 RGB frames [T,H,W,3] and returns, per frame,
a list of ``[x1, y1, x2, y2, score]`` in the original frame's pixels, largest and surest face first.
"""

import numpy as np
from PIL import Image

from dfdtrain.data.decoders import build_decoder
from dfdtrain.data.sampler import uniform_indices
from dfdtrain.errors import DfdError
from dfdtrain.registry import Registry

FACE_DETECTORS = Registry("face detector")


def build_face_detector(name="mtcnn", device="cpu", **options):
    """Build a registered face detector, e.g. ``build_face_detector("mtcnn", max_side=640)``."""
    return FACE_DETECTORS.get(name)(device=device, **options)


def detect_faces(source, num_frames, detector, frame_count):
    """Detect faces on ``num_frames`` frames of a video (path or bytes) with ``frame_count`` frames.

    Returns ``{"detector", "frames": [indices], "boxes": [per frame: [[x1, y1, x2, y2, score], ...]],
    "frames_without_face": n}``; a frame without a face keeps its place as an empty list.
    """
    indices = uniform_indices(frame_count, num_frames)
    # the loaders' decoder: boxes are in the same (upright) pixel coordinates the crops will use
    frames = build_decoder("pyav").read(source, indices)
    boxes = detector.detect(frames)
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


def _clean_faces(boxes, scores, width, height, min_score, min_size):
    """Clip boxes to the frame, drop unsure or tiny ones, sort by area * score (largest, surest first)."""
    faces = []
    for (x1, y1, x2, y2), score in zip(boxes, scores):
        x1, x2 = np.clip([x1, x2], 0, width)
        y1, y2 = np.clip([y1, y2], 0, height)
        if score < min_score or min(x2 - x1, y2 - y1) < min_size:
            continue
        faces.append((float(x1), float(y1), float(x2), float(y2), float(score)))
    faces.sort(key=lambda face: (face[2] - face[0]) * (face[3] - face[1]) * face[4], reverse=True)
    return [[round(x1, 1), round(y1, 1), round(x2, 1), round(y2, 1), round(score, 4)]
            for x1, y1, x2, y2, score in faces]


@FACE_DETECTORS.register("mtcnn")
class MtcnnDetector:
    """facenet-pytorch's MTCNN, run on a downscaled copy of the frames (1080p MTCNN on CPU is slow).

    Options: ``max_side`` (longer side of the detection copy, None = full resolution; faces under about
    20 px at that scale are missed), ``min_score`` (drop less sure faces), ``min_size`` (drop faces whose
    shorter side is under this many original pixels).
    """

    name = "mtcnn"

    def __init__(self, device="cpu", max_side=640, min_score=0.9, min_size=20):
        try:
            from facenet_pytorch import MTCNN
        except ImportError:
            raise DfdError("face detector 'mtcnn' needs facenet-pytorch: pip install 'dfdtrain[faces]'") from None
        self.model = MTCNN(keep_all=True, device=device)
        self.max_side = max_side
        self.min_score = min_score
        self.min_size = min_size

    def detect(self, frames):
        frames = _check_frames(frames)
        if len(frames) == 0:
            return []
        height, width = frames.shape[1:3]
        small = _downscale(frames, self.max_side)
        # Per-axis factors: rounding the small size makes x and y scale differ slightly.
        scale_x, scale_y = width / small.shape[2], height / small.shape[1]
        # One batch of equal-size frames: MTCNN runs each pyramid level for all frames at once.
        batch_boxes, batch_scores = self.model.detect(small)
        results = []
        for boxes, scores in zip(batch_boxes, batch_scores):
            if boxes is None:  # MTCNN gives None (and scores [None]) for a frame without a face
                results.append([])
                continue
            boxes = np.asarray(boxes, dtype=np.float64) * [scale_x, scale_y, scale_x, scale_y]
            scores = np.asarray(scores, dtype=np.float64)
            results.append(_clean_faces(boxes, scores, width, height, self.min_score, self.min_size))
        return results
