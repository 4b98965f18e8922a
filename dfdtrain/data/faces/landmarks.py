"""Facial landmarks at shard time (``dfdtrain shard --store faces --landmarks dlib68``): per stored frame of each
kept face track, the points of a landmark model, for the synthesis stages (SBI/VB masks) to read from the shards.

The models live in the ``LANDMARK_MODELS`` registry; one today:
  dlib68  dlib's 68-point shape predictor (iBUG 300-W markup: jaw 0-16, eyebrows 17-26, nose 27-35, eyes 36-47,
          mouth 48-67), run by ``dlib-bin`` (a prebuilt dlib) on the ``shape_predictor_68_face_landmarks.dat`` that
          the ``face-recognition-models`` package installs (no download at run time; ``pip install
          'dfdtrain[faces]'``). Licences: dlib is under the Boost Software License and face-recognition-models under
          MIT, but the 68-point model was trained on the iBUG 300-W data set, whose licence excludes commercial use
          (dlib's model README says so): landmarks made with it are for research use.
          SBI's official code uses an 81-point dlib model (68 + 13 forehead points) that no package ships: its
          convex-hull mask covers the forehead, while a 68-point hull stops at the eyebrows, so a blend made from
          these landmarks leaves the forehead (and the boundary a face swap leaves there) outside the mask.
The predictor is loaded once per process, at its first use (~0.3 s); it costs ~0.5 ms a face on an idle core
(1-1.5 ms on the 2 busy cores measured, ~2 ms a stored frame with its RGB copy).

Where the points are (``track_landmarks``): in the **stored clip's pixels**, the frames a loader decodes from the
track's clip (x right, y down, 0..size-1 at pixel centres; a point may lie just outside, e.g. a chin at the
crop's edge). Each track's frame is cut at its window and scaled to the clip's side (``clip_encoding``); the
predictor runs on that very frame (before the codec), from a face box that is the MTCNN face square (the window
shrunk by its margin) shrunk to ``BOX_SCALE``. A source pixel maps there as x_clip = (x_source - window_x1 + 0.5)
* size / window_side - 0.5 (``window_to_clip``; the window is the track's stored ``windows`` entry). On the
fixtures the points found at source resolution and mapped so lie within 0.5 px (mean) of these at 256 px, and
cost a copy of the whole window in RGB (~2.5 ms a frame at 400 px, against ~0.3 ms at 256). dlib's points are
whole pixels, stored as ints.

Where they are stored: a face-clip sample's ``landmarks.npz`` member (``MEMBER``) holds, per track, a float32
array [stored frames, 68, 2] of (x, y), NaN rows where there is none (every frame of a video's no-face centre
track), named by the track's id; deflated with fixed zip dates (the same input, the same bytes), ~0.1 KB a frame
(a 414-frame track: 41 KB). Each track's json entry points at it (``landmarks``: {"member", "array", "frames":
the frames with points}) and gets ``landmark_offset``: how far the points lie from MTCNN's 5 (``detector_offset``;
a track whose face the model lost scores high). Not in the json itself: 68 [x, y] lists a frame made the json ~0.7
KB a frame (a 414-frame track: 300 KB, as large as its video) and cost every sample ~25 ms of parsing in the
loader, synthesis or not. Shards of the first version (the lists inline in ``landmarks``) are still read.
index.json records ``landmarks``: {"model", "points", "version": {package: version}, "coordinates": "clip",
"member"} (``describe``). Original-video shards (``--store original --faces mtcnn``) keep boxes on a few sampled
frames only, so they get no landmarks.

For other code (the synthesis): ``landmarks_available(index)`` says whether a shard folder's index.json has them,
``missing_landmarks_line(where)`` is the one-line refusal naming the option that adds them, and
``track_points(sample, track)`` one track's points as an array, or None.
"""

import functools
import importlib.util
import io
import math
import os
import zipfile

import numpy as np

from dfdtrain.core.errors import BadVideo, DfdError
from dfdtrain.core.registry import Registry

LANDMARK_MODELS = Registry("landmark model")
OPTION = "--landmarks"
MEMBER = "landmarks.npz"  # a face-clip sample's landmarks: one float32 [frames, points, 2] per track, NaN: none
MAX_POINTS = 256  # a bound on a model's points, for reading untrusted members
# dlib's HOG face boxes (which its predictor was trained with) measured against MTCNN's on 29 frames of the real
# fixtures: side 0.85 (sd 0.08) of the MTCNN box's longer side, centre 0.06 of it lower. With this box (centred:
# moving it lower did not help) the points are within 1.1% of the face side (mean) of those from dlib's own box.
BOX_SCALE = 0.85


def _dlib():
    try:
        import dlib
    except ImportError:
        raise DfdError(f"{OPTION} dlib68: dlib is not installed (pip install 'dfdtrain[faces]': dlib-bin)") from None
    return dlib


def _dlib68_path():
    path = os.path.join(_package_folder("face_recognition_models"), "models", "shape_predictor_68_face_landmarks.dat")
    if not os.path.isfile(path):
        raise DfdError(f"{path}: dlib's 68-point model is missing (reinstall face-recognition-models)")
    return path


@functools.lru_cache(maxsize=None)
def _dlib68_predictor():
    """(dlib, its 68-point shape predictor), loaded once per process."""
    dlib = _dlib()
    return dlib, dlib.shape_predictor(_dlib68_path())


def _package_folder(name):
    # found, not imported: face_recognition_models' __init__ imports pkg_resources, which setuptools >= 81 lacks
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DfdError(f"{OPTION} dlib68: {name} is not installed (pip install 'dfdtrain[faces]': "
                       f"face-recognition-models)")
    return list(spec.submodule_search_locations)[0]


@LANDMARK_MODELS.register("dlib68")
class Dlib68:
    """dlib's 68-point predictor: ``self(rgb, box)`` -> 68 (x, y) in ``rgb``'s pixels (whole pixels: dlib's)."""

    points = 68

    @staticmethod
    def versions():
        """{package: version} of what makes the points; refused (one line) when either package is missing."""
        from importlib.metadata import PackageNotFoundError, version

        dlib = _dlib()
        _dlib68_path()
        try:
            models = version("face-recognition-models")
        except PackageNotFoundError:
            models = "unknown"
        return {"dlib": dlib.__version__, "face_recognition_models": models}

    def __call__(self, rgb, box):
        dlib, predictor = _dlib68_predictor()
        x1, y1, x2, y2 = (int(round(value)) for value in box)
        shape = predictor(np.ascontiguousarray(rgb), dlib.rectangle(x1, y1, x2, y2))
        return [(point.x, point.y) for point in shape.parts()]


@functools.lru_cache(maxsize=None)
def landmark_model(name):
    """The registered model ``name``, one instance per process (its weights load at its first call)."""
    return LANDMARK_MODELS.get(name)()


def describe(name):
    """What index.json records of the landmarks a run stores: model, points, package versions, coordinates."""
    model = landmark_model(name)
    return {"model": name, "points": model.points, "version": model.versions(), "coordinates": "clip",
            "member": MEMBER}


def face_box(side, margin):
    """The box the predictor gets in a ``side``-pixel track window grown by ``margin`` per side: the face square
    (side / (1 + 2 margin), centred) shrunk to ``BOX_SCALE``."""
    half = side / (1 + 2 * margin) * BOX_SCALE / 2
    return (side / 2 - half, side / 2 - half, side / 2 + half, side / 2 + half)


def window_to_clip(points, side, size):
    """Points in a ``side``-pixel window's pixels (source pixels minus the window's corner) -> the ``size``-pixel
    clip's pixels (pixel centres kept: the scaler's mapping)."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * (size / side) - 0.5


def track_landmarks(name, rgb, margin):
    """One stored frame's points: the model on the frame as the clip stores it (uint8 RGB [size, size, 3], the
    track's window scaled to the clip's side), from the face box ``face_box`` places in it, as [[x, y]] in its
    pixels (whole pixels as ints, as dlib gives them; else rounded to 0.1 px); [] where the model gives nothing
    usable (non-finite points)."""
    points = [[_compact(x), _compact(y)] for x, y in landmark_model(name)(rgb, face_box(rgb.shape[0], margin))]
    return points if all(math.isfinite(value) for point in points for value in point) else []


def _compact(value):
    value = round(float(value), 1)
    return int(value) if value.is_integer() else value


# dlib68's points that match MTCNN's 5 (left eye, right eye, nose tip, left and right mouth corner, image left first)
FIVE_POINTS = {"dlib68": (range(36, 42), range(42, 48), (30,), (48,), (54,))}


def detector_offset(name, landmarks, track, size, margin):
    """How far the model's points lie from the face detector's 5 landmarks on the track's detection frames: the
    median over those frames of the mean distance between the 5 pairs (eye centres, nose tip, mouth corners), as
    a share of the face's side in the clip (size / (1 + 2 margin)), rounded to 0.001; None without a pair. On
    the fixtures' frontal faces 0.01-0.02; on FF++ 585's second person (small, dark, turned; dlib's eyes ~12% of
    the clip off MTCNN's) 0.10: a synthesis may pass by a track that scores high."""
    groups = FIVE_POINTS.get(name)
    first = track["source_frames"][0] if track["source_frames"] else 0
    offsets = []
    for detection in track["detections"]:
        position = int(detection[0]) - first
        if groups is None or len(detection) < 16 or not 0 <= position < len(landmarks) or not landmarks[position]:
            continue
        x1, y1, x2, _ = track["windows"][position]
        detector = window_to_clip(np.asarray(detection[6:16], dtype=float).reshape(5, 2) - (x1, y1), x2 - x1, size)
        points = np.asarray(landmarks[position], dtype=float)
        model = np.stack([points[list(group)].mean(axis=0) for group in groups])
        offsets.append(float(np.linalg.norm(model - detector, axis=1).mean()))
    if not offsets:
        return None
    return round(float(np.median(offsets)) / (size / (1 + 2 * margin)), 3)


def landmarks_available(index):
    """Whether a shard folder's index.json (a dict) says its face tracks carry landmarks of a known model."""
    landmarks = index.get("landmarks") if isinstance(index, dict) else None
    return isinstance(landmarks, dict) and landmarks.get("model") in LANDMARK_MODELS


def missing_landmarks_line(where, need="facial landmarks"):
    """The one-line refusal for shards without landmarks (``where``: the folder or its index.json), naming the
    option that adds them: what a caller raises (as a DfdError) when ``landmarks_available`` is False."""
    return (f"{where}: its shards hold no facial landmarks, which {need} needs; shard the videos again with "
            f"'dfdtrain shard --store faces {OPTION} dlib68'")


def landmarks_member(points_by_track, points):
    """The ``MEMBER`` bytes of a sample: ``points_by_track`` {track id: per stored frame, ``points`` [x, y] or []}
    as float32 arrays [frames, points, 2] (NaN rows where none), deflated, with fixed zip dates."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for track_id, frames in points_by_track.items():
            array = np.full((len(frames), points, 2), np.nan, dtype=np.float32)
            for position, frame in enumerate(frames):
                if len(frame):
                    array[position] = frame
            npy = io.BytesIO()
            np.save(npy, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{track_id}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, npy.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def track_points(sample, track):
    """Face track ``track``'s (its json entry's) landmarks in a sample: float32 [stored frames, points, 2] (NaN
    rows where none), or None when it has none. Read from the sample's ``MEMBER`` without pickle, its size checked
    before it is inflated (a sample comes from other people); a member that is missing or does not fit the track
    is a BadVideo naming the sample. Shards of the first version keep the points inline in the json: read too."""
    entry = track.get("landmarks") if isinstance(track, dict) else None
    if entry is None:
        return None
    key, frames = sample.get("__key__", "sample"), int(track.get("frames", 0))
    if isinstance(entry, list):  # the first version: a list of [x, y] (or []) per frame
        width = max((len(frame) for frame in entry), default=0)
        array = np.full((len(entry), width, 2), np.nan, dtype=np.float32)
        for position, frame in enumerate(entry):
            if len(frame):
                array[position] = frame
        return array
    try:
        archive = zipfile.ZipFile(io.BytesIO(sample[entry["member"]]))
        name = f"{entry['array']}.npy"
        if archive.getinfo(name).file_size > frames * MAX_POINTS * 2 * 4 + 1024:
            raise ValueError(f"{name} inflates to {archive.getinfo(name).file_size} bytes, more than "
                             f"{frames} frames of landmarks")
        array = np.load(io.BytesIO(archive.read(name)), allow_pickle=False)
    except (KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile) as error:
        raise BadVideo(key, "unreadable", f"{MEMBER}: {type(error).__name__}: {error}") from None
    if array.dtype != np.float32 or array.ndim != 3 or array.shape[0] != frames or array.shape[2] != 2:
        raise BadVideo(key, "unreadable", f"{MEMBER}: track {track.get('id')}'s landmarks are {array.dtype} "
                                          f"{list(array.shape)}, not float32 [{frames}, points, 2]")
    return array
