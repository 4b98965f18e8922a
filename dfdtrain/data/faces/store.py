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
     which DALI decodes on the CPU). Frames come from the cache, or from a second decoding pass.
The source is never converted to RGB and back: the crop stays in the source's YUV (4:2:0 sources lose nothing
before the codec). Every clip is then decoded back: its frame count must equal its track's length (else the
video is skipped as undecodable) and its fidelity, PSNR and mean absolute error against the crops a loader of the
original video would cut (``crop_window`` of the decoded RGB frame at the same window and size), is measured
on ``fidelity_frames`` frames spread over the clip. A video with no face track gets a centre-square clip
(``no_face="keep"``, marked ``no_face``) or is skipped (``no_face="skip"``, reason ``no-face``).
Skips raise ``SkipVideo`` with the reason (no-face, doubtful-face) and a detail.
"""

import collections
import dataclasses
import io
import time
from fractions import Fraction

import av
import numpy as np

from dfdtrain.data.decode.decoders import open_video, upright
from dfdtrain.data.decode.sampler import uniform_indices
from dfdtrain.data.faces.tracks import DOUBTFUL_COVERAGE, TrackOptions, build_tracks, doubtful_reason, schedule_detections
from dfdtrain.data.decode.video import probe
from dfdtrain.core.errors import BadVideo

# codec -> (PyAV encoder, tar member extension, container format)
CLIP_CODECS = {"h264": ("libx264", "mp4", "mp4"), "vp9": ("libvpx-vp9", "webm", "webm")}
# Measured on the real fixtures at the default settings (benchmarks/face_store.py): mean error vs the source crops
# 1.13/255 on DFDC (worst 1.37), 1.76 on FF++ c40 (3 of 15 over 2, worst 2.41: grainy c40 599).
DEFAULT_CRF = {"h264": 18, "vp9": 26}
PIXEL_FORMATS = ("yuv420p", "yuv444p")
NO_FACE_POLICIES = ("keep", "skip")
DETECTION_BATCH = 8  # frames per detector call: MTCNN batches a pyramid level over equal-size frames
DEFAULT_FRAME_CACHE_BYTES = 1 << 30  # per worker: a 300-frame 1080p DFDC video's planes are 0.93 GB
# planar formats the crop works in: chroma subsampling per axis. Other sources are converted to the clip's format.
PLANE_SUBSAMPLING = {"yuv420p": 2, "yuv444p": 1}
BLACK = (16, 128, 128)  # Y, U, V of black in limited range: what RGB zeros (the loaders' padding) encode to


@dataclasses.dataclass
class FaceClipOptions:
    # largest clip side in pixels (DeepfakeBench's 256: models see 224-299 px); a smaller face window is stored at
    # its own size (no upscaling). For larger inputs (efficientnet_b7_lstm: 380) shard with --face-size 384
    size: int = 256
    codec: str = "h264"  # h264 (NVDEC/DALI on a GPU, PyAV on a CPU) | vp9 (also DALI on a CPU)
    crf: int = None  # quality, lower = better (None: the codec's default, DEFAULT_CRF; 0 = lossless)
    gop: int = 4  # keyframe every gop frames (1 = all-intra)
    pix_fmt: str = "yuv420p"  # yuv420p (what NVDEC decodes) | yuv444p (full chroma; CPU decoders only)
    preset: str = "medium"  # libx264 speed/size trade-off (vp9: speed is fixed, see encoder_options)
    no_face: str = "keep"  # keep (centre-square clip, marked no_face) | skip (named in index.json)
    # None: a video whose best face track covers less than half its frames or fails a sanity check is kept and
    # marked doubtful (listed in index.json); F: such a video, with F in place of the half, is skipped instead
    min_track_coverage: float = None
    fidelity_frames: int = 32  # frames per clip compared with the crops to measure PSNR / mean error
    tracks: TrackOptions = dataclasses.field(default_factory=TrackOptions)

    def __post_init__(self):
        if isinstance(self.tracks, dict):
            self.tracks = TrackOptions(**self.tracks)
        if self.codec not in CLIP_CODECS:
            raise ValueError(f"face clip codec must be one of {', '.join(CLIP_CODECS)}, not {self.codec!r}")
        if self.pix_fmt not in PIXEL_FORMATS:
            raise ValueError(f"face clip pixel format must be one of {', '.join(PIXEL_FORMATS)}, not {self.pix_fmt!r}")
        if self.no_face not in NO_FACE_POLICIES:
            raise ValueError(f"no_face must be one of {', '.join(NO_FACE_POLICIES)}, not {self.no_face!r}")
        if self.crf is None:
            self.crf = DEFAULT_CRF[self.codec]
        highest_crf = 51 if self.codec == "h264" else 63
        if not 0 <= self.crf <= highest_crf:
            raise ValueError(f"{self.codec} crf must be in 0..{highest_crf}, not {self.crf}")
        if self.min_track_coverage is not None and not 0 <= self.min_track_coverage <= 1:
            raise ValueError(f"min_track_coverage must be in [0, 1], not {self.min_track_coverage}")
        if self.size < 16 or self.size % 2 or self.gop < 1 or self.fidelity_frames < 1:
            raise ValueError("face clip size must be even and >= 16; gop and fidelity_frames >= 1")


def encoder_options(options):
    """The encoder's own options for these settings (recorded in each sample's json)."""
    gop = str(options.gop)
    if options.codec == "h264":
        # bf=0: no B-frames, decode order = display order; scenecut=0 + keyint_min: a keyframe exactly every
        # gop frames; closed GOPs, so a decoder can start at any keyframe. threads=1: one process per core at
        # shard time, and the bytes do not depend on the thread count. tune=fastdecode (CAVLC, no deblocking,
        # no weighted prediction): on the fixtures ~15% more bytes for 15-25% faster sampled decoding.
        return {"crf": str(options.crf), "preset": options.preset, "tune": "fastdecode", "g": gop,
                "keyint_min": gop, "bf": "0", "threads": "1", "x264-params": "scenecut=0:open-gop=0"}
    # libvpx-vp9: constant quality (b=0 + crf), no alt-ref frames (lag 0: one shown frame per packet);
    # speed 4 ("good" deadline) is the usual quality/speed middle.
    vp9 = {"crf": str(options.crf), "b": "0", "g": gop, "keyint_min": gop, "deadline": "good", "cpu-used": "4",
           "lag-in-frames": "0", "auto-alt-ref": "0", "threads": "1", "row-mt": "0"}
    if options.crf == 0:
        vp9["lossless"] = "1"
    return vp9


def encode_settings(options):
    """What the json records about how the clips were made (each track's own ``size`` is in its entry)."""
    encoder, _, container_format = CLIP_CODECS[options.codec]
    return {"codec": options.codec, "encoder": encoder, "container": container_format, "max_size": options.size,
            "crf": options.crf, "gop": options.gop, "pix_fmt": options.pix_fmt, "bframes": 0,
            "margin": options.tracks.margin, "options": encoder_options(options)}


# --------------------------------------------------------------------------------------------- YUV planes
@dataclasses.dataclass
class Planes:
    """One upright source frame as planar YUV: ``format`` (a PLANE_SUBSAMPLING key) and [Y, U, V] arrays."""

    format: str
    planes: list

    @property
    def width(self):
        return self.planes[0].shape[1]

    @property
    def height(self):
        return self.planes[0].shape[0]

    @property
    def nbytes(self):
        return sum(plane.nbytes for plane in self.planes)

    def frame(self):
        """An av.VideoFrame of these planes."""
        luma, u, v = self.planes
        if self.format == "yuv444p":
            return av.VideoFrame.from_ndarray(np.stack(self.planes), format="yuv444p")
        stacked = np.concatenate([luma.ravel(), u.ravel(), v.ravel()]).reshape(luma.shape[0] * 3 // 2, luma.shape[1])
        return av.VideoFrame.from_ndarray(stacked, format="yuv420p")

    def rgb(self):
        return self.frame().to_ndarray(format="rgb24")


def plane_views(frame, fallback_format):
    """(format, [Y, U, V] upright views of the frame's buffers) of a decoded av.VideoFrame: in its own format when
    the crop can work in it (yuv420p with even sides, yuv444p), else converted to ``fallback_format`` (the clip's)."""
    name = frame.format.name
    odd = frame.width % 2 or frame.height % 2  # 4:2:0 planes of odd sides do not split evenly
    if name not in PLANE_SUBSAMPLING or (odd and name == "yuv420p"):
        name = "yuv444p" if odd else fallback_format
        frame = frame.reformat(format=name)
    # straight from the frame's buffers (to_ndarray's own stacking costs ~5 ms a 1080p frame)
    planes = [np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:plane.height, :plane.width]
              for plane in frame.planes]
    quarter_turns = round(float(frame.rotation or 0) / 90) % 4
    if quarter_turns:
        planes = [np.rot90(plane, k=quarter_turns) for plane in planes]
    return name, planes


def frame_planes(frame, fallback_format):
    """A decoded av.VideoFrame as upright ``Planes`` of its own (see ``plane_views``)."""
    name, views = plane_views(frame, fallback_format)
    return Planes(name, [np.ascontiguousarray(view) for view in views])


class FrameArena:
    """Memory a worker reuses for each video's cached planes. Fresh pages cost: a 1080p DFDC video's 0.93 GB
    in new arrays took ~1.2 s of page faults, more than decoding it again; the arena's pages stay mapped from
    one video to the next. ``reset()`` before each video (the previous video's planes are then overwritten)."""

    def __init__(self, capacity):
        self.buffer = np.empty(capacity, dtype=np.uint8)  # untouched until used: pages are mapped as needed
        self.used = 0

    def reset(self):
        self.used = 0

    def keep(self, frame, fallback_format):
        """The frame's ``Planes`` copied into the arena, or None when they do not fit."""
        name, views = plane_views(frame, fallback_format)
        if self.used + sum(view.size for view in views) > self.buffer.size:
            return None
        kept = []
        for view in views:
            copy = self.buffer[self.used:self.used + view.size].reshape(view.shape)
            copy[...] = view
            self.used += view.size
            kept.append(copy)
        return Planes(name, kept)


_ARENA = None


def frame_arena(capacity):
    """This process's arena of at least ``capacity`` bytes, reset (one video at a time per process)."""
    global _ARENA
    if _ARENA is None or _ARENA.buffer.size < capacity:
        _ARENA = None  # let the old buffer go first
        _ARENA = FrameArena(capacity)
    _ARENA.reset()
    return _ARENA


def stored_window(window):
    """The whole-pixel square a float window is cut at: even side and even corner (4:2:0 chroma stays aligned),
    centred where the window is."""
    x1, y1, x2, y2 = window
    side = max(2, int(round(max(x2 - x1, y2 - y1) / 2)) * 2)
    left = int(round(((x1 + x2) / 2 - side / 2) / 2)) * 2
    top = int(round(((y1 + y2) / 2 - side / 2) / 2)) * 2
    return [left, top, left + side, top + side]


def cut_window(planes, window):
    """``Planes`` of the square ``window`` ([x1, y1, x2, y2], whole even pixels) of ``planes``; black outside."""
    x1, y1, x2, y2 = window
    side = x2 - x1
    left, top = max(x1, 0), max(y1, 0)
    right, bottom = min(x2, planes.width), min(y2, planes.height)
    step = PLANE_SUBSAMPLING[planes.format]
    cut = []
    overlaps = left < right and top < bottom
    for number, (plane, black) in enumerate(zip(planes.planes, BLACK)):
        factor = 1 if number == 0 else step
        if (x1, y1, x2, y2) == (left, top, right, bottom):  # wholly inside the frame
            cut.append(plane[y1 // factor:y2 // factor, x1 // factor:x2 // factor])
            continue
        out = np.full((side // factor, side // factor), black, dtype=np.uint8)
        if overlaps:
            out[(top - y1) // factor:(bottom - y1) // factor, (left - x1) // factor:(right - x1) // factor] = \
                plane[top // factor:bottom // factor, left // factor:right // factor]
        cut.append(out)
    return Planes(planes.format, [np.ascontiguousarray(plane) for plane in cut])


def decode_planes(data, name, fallback_format):
    """Every frame of a video (bytes), in order, as upright ``Planes``."""
    try:
        with open_video(data, name) as container:
            for frame in container.decode(container.streams.video[0]):
                yield frame_planes(frame, fallback_format)
    except av.FFmpegError as error:
        raise BadVideo(name, "undecodable", str(error)) from None


def iterate_frames(data, name):
    """Every frame of a video (bytes), in order, as upright uint8 RGB [H,W,3]."""
    try:
        with open_video(data, name) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                yield upright(frame.to_ndarray(format="rgb24"), frame.rotation)
    except av.FFmpegError as error:
        raise BadVideo(name, "undecodable", str(error)) from None


# ----------------------------------------------------------------------------------------------- the scan
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


# ------------------------------------------------------------------------------------------- encoding
class ClipEncoder:
    """One track's clip, encoded in memory: ``add(rgb)`` or ``add_frame(av.VideoFrame)`` per frame (``size`` x
    ``size``, default ``options.size``), then ``finish()`` -> bytes."""

    def __init__(self, options, fps, size=None):
        encoder, _, container_format = CLIP_CODECS[options.codec]
        self.pix_fmt = options.pix_fmt
        self.size = size or options.size
        self.buffer = io.BytesIO()
        rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(25)
        self.time_base = 1 / rate
        # bitexact: no encoder version strings or random ids, so the same frames give the same bytes.
        container_options = {"fflags": "+bitexact"}
        if container_format == "mp4":
            container_options["video_track_timescale"] = str(rate.numerator)
        self.container = av.open(self.buffer, "w", format=container_format, options=container_options)
        self.stream = self.container.add_stream(encoder, rate=rate, options=encoder_options(options))
        self.stream.width = self.stream.height = self.size
        self.stream.pix_fmt = options.pix_fmt
        self.stream.time_base = self.time_base
        self.stream.codec_context.time_base = self.time_base
        self.frames = 0

    def add(self, rgb):
        # BT.601 limited range: swscale's default, which every decoder here assumes for untagged video.
        self.add_frame(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"))

    def add_frame(self, frame):
        if frame.format.name != self.pix_fmt or frame.width != self.size or frame.height != self.size:
            # the scaler: bilinear, its filter widened when shrinking (no aliasing)
            frame = frame.reformat(width=self.size, height=self.size, format=self.pix_fmt, interpolation="BILINEAR")
        frame.pts = self.frames
        frame.time_base = self.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def finish(self):
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buffer.getvalue()


def crop_window(rgb, window, size):
    """One frame's square window, resized to size x size (uint8 numpy; outside the frame is zeros): the crop a
    loader of the original video cuts, which the fidelity of a stored clip is measured against."""
    import torch  # here: the CLI imports this module for its defaults, and must start without torch

    from dfdtrain.data.faces.crops import crop_and_resize

    return crop_and_resize(torch.from_numpy(rgb)[None], np.asarray([window]), size)[0].numpy()


def fidelity(decoded, reference):
    """PSNR (dB, over all compared pixels) and mean absolute error (0..255 levels) of decoded vs reference."""
    difference = decoded.astype(np.float64) - reference.astype(np.float64)
    mse = float(np.mean(difference ** 2))
    psnr = 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)  # 99 dB stands for identical
    return {"psnr_db": round(float(psnr), 3), "mean_abs_error": round(float(np.mean(np.abs(difference))), 4)}


def check_clip(clip, name, expected_frames, references):
    """Decode a stored clip: its frame count must match; returns fidelity on the reference positions."""
    decoded = {}
    count = 0
    try:
        with open_video(clip, name) as container:
            for position, frame in enumerate(container.decode(container.streams.video[0])):
                if position in references:
                    decoded[position] = frame.to_ndarray(format="rgb24")
                count = position + 1
    except av.FFmpegError as error:
        raise BadVideo(name, "undecodable", f"face clip: {error}") from None
    if count != expected_frames:
        raise BadVideo(name, "undecodable", f"face clip decodes to {count} frames, {expected_frames} were encoded")
    positions = sorted(references)
    result = fidelity(np.stack([decoded[p] for p in positions]), np.stack([references[p] for p in positions]))
    return {**result, "frames_compared": len(positions)}


def clip_size(windows, largest):
    """A track's clip side: its median window side (no upscaling of a small face), at most ``largest``, even."""
    side = int(np.median([x2 - x1 for x1, _, x2, _ in windows]))
    return max(16, min(largest, side) // 2 * 2)


def encode_tracks(data, name, info, tracks, options, progress=None, scan=None, stats=None):
    """Cut and encode every track; returns [(clip bytes, fidelity, stored windows, clip size)] in track order.

    Frames come from ``scan.planes`` when the scan kept them, else from one more decoding pass. ``stats``
    (a dict) gets the seconds of "encode" (cut, scale, encode; with the second pass's decoding) and "verify".
    """
    started = time.perf_counter()
    fps = info.get("fps") or 25
    windows = [[stored_window(window) for window in track["windows"]] for track in tracks]
    sizes = [clip_size(track_windows, options.size) for track_windows in windows]
    encoders = [ClipEncoder(options, fps, size) for size in sizes]
    # per track: clip position of each source frame, and the clip positions whose crops are kept for fidelity
    positions = [{frame: clip_position for clip_position, frame in enumerate(track["source_frames"])}
                 for track in tracks]
    kept_positions = [set(uniform_indices(len(track["source_frames"]), options.fidelity_frames))
                      for track in tracks]
    references = [{} for _ in tracks]
    last_frame = max(track["source_frames"][-1] for track in tracks)
    frames = scan.planes if scan is not None and scan.planes is not None else decode_planes(data, name, options.pix_fmt)
    for source_frame, planes in enumerate(frames):
        rgb = None
        for number in range(len(tracks)):
            clip_position = positions[number].get(source_frame)
            if clip_position is None:
                continue
            window = windows[number][clip_position]
            encoders[number].add_frame(cut_window(planes, window).frame())
            if clip_position in kept_positions[number]:
                rgb = planes.rgb() if rgb is None else rgb
                references[number][clip_position] = crop_window(rgb, window, sizes[number])
        if progress:
            progress("encode", 1)
        if source_frame >= last_frame:
            break
    clips = []
    for number, (track, encoder) in enumerate(zip(tracks, encoders)):
        if encoder.frames != len(track["source_frames"]):
            raise BadVideo(name, "truncated", f"track {number} needs frame {track['source_frames'][-1]}, the video "
                                              f"decodes to fewer frames")
        clips.append(encoder.finish())
    encoded = time.perf_counter()
    results = []
    for number, clip in enumerate(clips):
        clip_name = f"{name}#{member_extension(options, number)}"  # the extension tells the demuxer what it is
        results.append((clip, check_clip(clip, clip_name, encoders[number].frames, references[number]),
                        windows[number], sizes[number]))
    if stats is not None:
        stats["encode"] = stats.get("encode", 0.0) + encoded - started
        stats["verify"] = stats.get("verify", 0.0) + time.perf_counter() - encoded
    return results


def member_extension(options, track_number):
    """Tar member extension of a track's clip: ``mp4`` for track 0 (the sample's video), ``track1.mp4``..."""
    extension = CLIP_CODECS[options.codec][1]
    return extension if track_number == 0 else f"track{track_number}.{extension}"


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
    quality, problems, bytes, fidelity; best first), ``dropped_tracks`` (the most-detected ``MAX_DROPPED_RECORDS``
    tracks not kept, each with its reason) and ``dropped_track_reasons`` ({reason: count} over all of them),
    ``doubtful`` (why the best track is not to be trusted unseen, or None), ``encode``, ``fidelity`` (the
    tracks' mean) and ``no_face``. ``frame_cache_bytes`` only decides
    whether the source is decoded once or twice: the sample is the same. ``stats`` (a dict) gets the seconds
    spent per stage: decode (the scan), detect, track, encode, verify (where a video's seconds go, for the
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
    encoded = encode_tracks(data, name, info, tracks, options, progress, scan, stats)
    members, track_fields = [], []
    for number, (track, (clip, clip_fidelity, windows, size)) in enumerate(zip(tracks, encoded)):
        extension = member_extension(options, number)
        members.append((extension, clip))
        track_fields.append({"id": track["id"], "member": extension, "frames": len(track["source_frames"]),
                             "size": size, "source_frames": track["source_frames"], "windows": windows,
                             "detections": track["detections"], "score": track["score"],
                             "quality": track["quality"], "problems": track["problems"], "bytes": len(clip),
                             "fidelity": clip_fidelity})
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
    return members, fields
