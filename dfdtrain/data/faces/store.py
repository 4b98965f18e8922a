"""The face-clip store: each face track of a video cropped to a square and re-encoded with short GOPs.

Why: DFDC and FF++ sources have a keyframe every 250 frames, so 16 sampled frames cost decoding almost the
whole video (~0.9 s of CPU for a 1080p DFDC clip). A face track stored as its own clip, a square of at most
``size`` pixels with a keyframe every ``gop`` frames and no B-frames, decodes 16 sampled frames from a few short
GOPs.

``make_face_clips(data, name, info, detector, options, progress, frame_cache_bytes)`` does it for one video
(``progress(stage, frames)``, if given, hears of each source frame as a pass is done with it, stage "scan" or
"encode": a 1080p video takes a while):
  1. ``scan_video``: one decoding pass keeps the detector's small copies of the frames it may look at and, when
     the video's frames fit in ``frame_cache_bytes``, every frame's YUV planes;
  2. ``find_tracks``: the detector on the frames ``tracks.schedule_detections`` picks (every
     ``detect_every``-th, more where the faces change), then the tracks, chosen on evidence and best first
     (``dfdtrain.data.faces.tracks``); a video whose best track is doubtful (``tracks.doubtful_reason``) is marked
     ``doubtful``, or skipped when ``min_track_coverage`` is set;
  3. ``encode_tracks``: every frame of every kept track is cut out of the source's YUV planes at its window
     (whole pixels, even-aligned so 4:2:0 chroma is cut where it lies; zero/black outside the frame), scaled
     to the track's clip size where the window is larger (never up: a track is stored at its median window
     side, capped at ``size``) and fed to one encoder per track (PyAV: libx264 in mp4, or libvpx-vp9 in webm,
     which DALI decodes on the CPU). Frames come from the cache, or from a second decoding pass. With
     ``landmarks`` set, the landmark model runs on each cut window (``landmarks``: points in clip pixels).
The source is never converted to RGB and back: the crop stays in the source's YUV (4:2:0 sources lose nothing
before the codec). Every clip is then decoded back: its frame count must equal its track's length (else the
video is skipped as undecodable) and its fidelity, PSNR and mean absolute error against the crops a loader of the
original video would cut (``crop_window`` of the decoded RGB frame at the same window and size), is measured
on ``fidelity_frames`` frames spread over the clip. A video with no face track gets a centre-square clip
(``no_face="keep"``, marked ``no_face``) or is skipped (``no_face="skip"``, reason ``no-face``).
Skips raise ``SkipVideo`` with the reason (no-face, doubtful-face) and a detail.
The settings are ``clip_options``, the YUV planes and windows ``planes``, step 3 ``clip_encoding``.
"""

import collections
import dataclasses
import time

import av
import numpy as np

from dfdtrain.data.decode.decoders import open_video, upright
from dfdtrain.data.faces.clip_encoding import encode_tracks, member_extension
from dfdtrain.data.faces.clip_options import encode_settings
from dfdtrain.data.faces.landmarks import MEMBER as LANDMARKS_MEMBER
from dfdtrain.data.faces.landmarks import detector_offset, landmark_model, landmarks_member
from dfdtrain.data.faces.planes import frame_arena
from dfdtrain.data.faces.tracks import DOUBTFUL_COVERAGE, build_tracks, doubtful_reason, schedule_detections
from dfdtrain.data.decode.video import probe
from dfdtrain.core.errors import BadVideo

DETECTION_BATCH = 8  # frames per detector call: MTCNN batches a pyramid level over equal-size frames
DEFAULT_FRAME_CACHE_BYTES = 1 << 30  # per worker: a 300-frame 1080p DFDC video's planes are 0.93 GB


@dataclasses.dataclass
class Scan:
    """What one decoding pass of the source kept: the frame count, the upright size, the detector's copies of
    the frames it may look at ({frame: uint8 RGB [h,w,3]}) and every frame's planes if they fit the cache."""

    frame_count: int
    width: int
    height: int
    small: dict
    planes: list = None


def scan_video(data, name, info, detector, options, progress=None, frame_cache_bytes=DEFAULT_FRAME_CACHE_BYTES):
    """One decoding pass: the copies ``find_tracks`` needs and, within ``frame_cache_bytes``, every frame's planes.

    The copies are made at the detector's own size (``detector.detection_size``) by the decoder's scaler,
    straight from the frame: no full-size RGB frame is made for them.
    """
    # every frame schedule_detections may ask for: on either grid (a stored frame count can be wrong, so not
    # from it), and the last one
    every = (options.tracks.detect_every, options.tracks.refine_every)
    small, cache, count, last = {}, [], 0, None
    caching = frame_cache_bytes > 0
    arena = frame_arena(frame_cache_bytes) if caching else None
    upright_size = None
    try:
        with open_video(data, name) as container:
            for position, frame in enumerate(container.decode(container.streams.video[0])):
                count, last = position + 1, frame
                quarter_turns = round(float(frame.rotation or 0) / 90) % 4
                if upright_size is None:
                    upright_size = (frame.height, frame.width) if quarter_turns % 2 else (frame.width, frame.height)
                if any(position % step == 0 for step in every):
                    small[position] = _detector_copy(frame, detector, upright_size, quarter_turns)
                if caching:
                    planes = arena.keep(frame, options.pix_fmt)
                    if planes is None or (position == 0 and planes.nbytes * info["frames"] > arena.buffer.size):
                        caching, cache = False, []  # too big to keep: the encode pass decodes again
                    else:
                        cache.append(planes)
                if progress:
                    progress("scan", 1)
    except av.FFmpegError as error:
        raise BadVideo(name, "undecodable", str(error)) from None
    if not count:
        raise BadVideo(name, "undecodable", "no frame decoded")
    if count - 1 not in small:  # the stored count overstated the video: the real last frame is wanted too
        small[count - 1] = _detector_copy(last, detector, upright_size, round(float(last.rotation or 0) / 90) % 4)
    return Scan(count, *upright_size, small, cache if caching else None)


def _detector_copy(frame, detector, upright_size, quarter_turns):
    width, height = detector.detection_size(*upright_size)
    if quarter_turns % 2:
        width, height = height, width  # the scaler works on the stored (not yet turned) frame
    return upright(frame.reformat(width=width, height=height, format="rgb24").to_ndarray(), frame.rotation)


def find_tracks(scan, detector, options, stats=None):
    """(tracks, dropped) of a ``Scan``: the kept face tracks, best first ([] when none was found), and the dropped
    ones with their reasons (``tracks.build_tracks``); ``stats`` (a dict) gets the seconds of "detect" and
    "track", and the number of "detections" (frames the detector saw)."""
    started = time.perf_counter()
    source_size = (scan.width, scan.height)
    batch = getattr(detector, "batch_frames", DETECTION_BATCH)

    def detect(frames):
        found = []
        for start in range(0, len(frames), batch):
            copies = np.stack([scan.small[frame] for frame in frames[start:start + batch]])
            found += detector.detect(copies, source_size=source_size)
        return found

    frames, detections = schedule_detections(scan.frame_count, detect, options.tracks)
    detected = time.perf_counter()
    # A video shorter than min_detections detection frames (a 1-frame clip, a still) cannot reach that many
    # detections: there a face on every detection frame makes the track.
    track_options = dataclasses.replace(options.tracks,
                                        min_detections=min(options.tracks.min_detections, len(frames)))
    tracks, dropped = build_tracks(frames, detections, track_options, frame_count=scan.frame_count,
                                   frame_size=source_size)
    if stats is not None:
        stats.update(detect=detected - started, track=time.perf_counter() - detected, detections=len(frames))
    return tracks, dropped


def centre_track(frame_count, width, height):
    """The track a video without faces keeps: the centre square of every frame."""
    from dfdtrain.data.faces.crops import centre_square

    window = [round(value, 1) for value in centre_square(width, height, 1)[0].tolist()]
    return {"id": 0, "source_frames": list(range(frame_count)), "windows": [window] * frame_count,
            "detections": [], "score": 0.0, "quality": None, "problems": []}


MAX_DROPPED_RECORDS = 32  # dropped tracks a sample's json lists (the most-detected); all are counted by reason


class SkipVideo(Exception):
    """The face store skips this video by policy: ``reason`` (no-face, doubtful-face) and a one-line ``detail``."""

    def __init__(self, name, reason, detail):
        super().__init__(f"{name}: {reason} ({detail})")
        self.reason, self.detail = reason, detail


def make_face_clips(data, name, info, detector, options, progress=None, frame_cache_bytes=DEFAULT_FRAME_CACHE_BYTES,
                    stats=None):
    """(members [(extension, bytes)], json fields) of one video's face-clip sample; ``SkipVideo`` when skipped.

    ``info`` is the source's probe (frames, fps, width, height, ...). The json fields replace the probe's
    frames/width/height/codec/bytes with the stored clip's (track 0), keep the source's under ``source``, and
    add ``store``, ``tracks`` (id, member, frames, size, source_frames, windows as cut, detections, score,
    quality, problems, bytes, fidelity, and with ``options.landmarks`` landmarks: per frame a list of [x, y] in
    the clip's pixels, and landmark_offset, see ``landmarks``; best first), ``dropped_tracks`` (the
    most-detected ``MAX_DROPPED_RECORDS`` tracks not kept, each with its reason) and ``dropped_track_reasons``
    ({reason: count} over all of them),
    ``doubtful`` (why the best track is not to be trusted unseen, or None), ``encode``, ``fidelity`` (the
    tracks' mean) and ``no_face``. ``frame_cache_bytes`` only decides
    whether the source is decoded once or twice: the sample is the same. ``stats`` (a dict) gets the seconds
    spent per stage: decode (the scan), detect, track, encode, landmarks, verify (where a video's seconds go, for the
    shard report and ``bench shard``), the detections made and whether the frames were cached.
    """
    stats = {} if stats is None else stats
    started = time.perf_counter()
    scan = scan_video(data, name, info, detector, options, progress, frame_cache_bytes)
    stats.update(decode=time.perf_counter() - started, cached=scan.planes is not None)
    tracks, dropped = find_tracks(scan, detector, options, stats)
    no_face = not tracks
    doubtful = None
    if no_face:
        if options.no_face == "skip":
            raise SkipVideo(name, "no-face", "no face track found (--no-face skip)")
        tracks = [centre_track(scan.frame_count, scan.width, scan.height)]
    else:
        limit = DOUBTFUL_COVERAGE if options.min_track_coverage is None else options.min_track_coverage
        doubtful = doubtful_reason(tracks[0], limit)
        if doubtful and options.min_track_coverage is not None:
            raise SkipVideo(name, "doubtful-face", f"{doubtful} (--min-track-coverage {limit:g})")
    encoded = encode_tracks(data, name, info, tracks, options, progress, scan, stats,
                            landmarks=[not no_face] * len(tracks))
    members, track_fields, points_by_track = [], [], {}
    for number, (track, (clip, clip_fidelity, windows, size, points)) in enumerate(zip(tracks, encoded)):
        extension = member_extension(options, number)
        members.append((extension, clip))
        track_fields.append({"id": track["id"], "member": extension, "frames": len(track["source_frames"]),
                             "size": size, "source_frames": track["source_frames"], "windows": windows,
                             "detections": track["detections"], "score": track["score"],
                             "quality": track["quality"], "problems": track["problems"], "bytes": len(clip),
                             "fidelity": clip_fidelity})
        if options.landmarks:  # a no-face centre track has none: [] per frame
            points = points if points is not None else [[] for _ in track["source_frames"]]
            points_by_track[str(track["id"])] = points
            track_fields[-1].update(
                landmarks={"member": LANDMARKS_MEMBER, "array": str(track["id"]),
                           "frames": sum(1 for frame in points if frame)},
                landmark_offset=detector_offset(options.landmarks, points, {**track, "windows": windows}, size,
                                                options.tracks.margin))
    first = probe(members[0][1], name=f"{name}.{members[0][0]}")
    fields = {
        "store": "faces",
        "source": {key: info[key] for key in ("frames", "fps", "width", "height", "codec", "duration", "rotation",
                                              "bytes") if key in info},
        "frames": first["frames"], "width": first["width"], "height": first["height"], "codec": first["codec"],
        "duration": first["duration"], "rotation": 0, "bytes": sum(len(clip) for _, clip in members),
        "tracks": track_fields,
        "encode": encode_settings(options),
        "fidelity": {"psnr_db": round(float(np.mean([t["fidelity"]["psnr_db"] for t in track_fields])), 3),
                     "mean_abs_error": round(float(np.mean([t["fidelity"]["mean_abs_error"] for t in track_fields])),
                                             4)},
        "no_face": no_face,
        "doubtful": doubtful,
        "dropped_tracks": dropped[:MAX_DROPPED_RECORDS],
        "dropped_track_reasons": dict(sorted(collections.Counter(record["reason"] for record in dropped).items())),
    }
    if points_by_track:  # beside the clips, not in the json (faces.landmarks: why)
        points = landmark_model(options.landmarks).points
        members.append((LANDMARKS_MEMBER, landmarks_member(points_by_track, points)))
    return members, fields
