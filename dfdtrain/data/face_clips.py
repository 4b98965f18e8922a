"""The face-clip store: each face track of a video cropped to a fixed square and re-encoded with short GOPs.

Why: DFDC and FF++ sources have a keyframe every 250 frames, so 16 sampled frames cost decoding almost the
whole video (~0.9 s of CPU for a 1080p DFDC clip). A face track stored as its own clip, ``size`` x ``size``
pixels with a keyframe every ``gop`` frames and no B-frames, decodes 16 sampled frames from a few short GOPs.

``make_face_clips(data, name, info, detector, options, progress)`` does it for one video, in two decoding passes
of the source (a 1080p video does not fit in memory decoded; ``progress(stage, frames)``, if given, hears of each
source frame as a pass is done with it, stage "scan" or "encode": a 1080p video takes minutes):
  1. detect faces on every ``tracks.detect_every``-th frame and build tracks (``dfdtrain.data.tracks``);
  2. crop every frame of every kept track to its square window (zero padding outside the frame), resize to
     ``size`` (antialiased bilinear) and feed one encoder per track (PyAV: libx264 in mp4, or libvpx-vp9 in
     webm, which DALI decodes on the CPU).
Every clip is then decoded back: its frame count must equal its track's length (else the video is skipped
as undecodable) and its fidelity, PSNR and mean absolute error against the crops that went in, is measured
on ``fidelity_frames`` frames spread over the clip. A video with no face track gets a centre-square clip
(``no_face="keep"``, marked ``no_face``) or is skipped (``no_face="skip"``, reason ``no-face``).
"""

import dataclasses
import io
from fractions import Fraction

import av
import numpy as np

from dfdtrain.data.decoders import open_video, upright
from dfdtrain.data.sampler import uniform_indices
from dfdtrain.data.tracks import TrackOptions, build_tracks, detection_frames
from dfdtrain.data.video import probe
from dfdtrain.errors import BadVideo

# codec -> (PyAV encoder, tar member extension, container format)
CLIP_CODECS = {"h264": ("libx264", "mp4", "mp4"), "vp9": ("libvpx-vp9", "webm", "webm")}
# Conservative defaults, measured on the real DFDC/FF++ fixtures (benchmarks/face_store.py): mean error
# about 1.5/255 vs the source crops, most of it the 4:2:0 chroma subsampling rather than the codec.
DEFAULT_CRF = {"h264": 16, "vp9": 24}
PIXEL_FORMATS = ("yuv420p", "yuv444p")
NO_FACE_POLICIES = ("keep", "skip")
DETECTION_BATCH = 8  # frames per detector call: MTCNN batches a pyramid level over equal-size frames


@dataclasses.dataclass
class FaceClipOptions:
    size: int = 384  # clip side in pixels (match the backbone input: 224/320/384/600)
    codec: str = "h264"  # h264 (NVDEC/DALI on a GPU, PyAV on a CPU) | vp9 (also DALI on a CPU)
    crf: int = None  # quality, lower = better (None: the codec's default, DEFAULT_CRF; 0 = lossless)
    gop: int = 4  # keyframe every gop frames (1 = all-intra)
    pix_fmt: str = "yuv420p"  # yuv420p (what NVDEC decodes) | yuv444p (full chroma; CPU decoders only)
    preset: str = "medium"  # libx264 speed/size trade-off (vp9: speed is fixed, see encoder_options)
    no_face: str = "keep"  # keep (centre-square clip, marked no_face) | skip (named in index.json)
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
        if self.size < 16 or self.size % 2 or self.gop < 1 or self.fidelity_frames < 1:
            raise ValueError("face clip size must be even and >= 16; gop and fidelity_frames >= 1")


def encoder_options(options):
    """The encoder's own options for these settings (recorded in each sample's json)."""
    gop = str(options.gop)
    if options.codec == "h264":
        # bf=0: no B-frames, decode order = display order; scenecut=0 + keyint_min: a keyframe exactly every
        # gop frames; closed GOPs, so a decoder can start at any keyframe. threads=1: one process per core at
        # shard time, and the bytes do not depend on the thread count.
        return {"crf": str(options.crf), "preset": options.preset, "g": gop, "keyint_min": gop, "bf": "0",
                "threads": "1", "x264-params": "scenecut=0:open-gop=0"}
    # libvpx-vp9: constant quality (b=0 + crf), no alt-ref frames (lag 0: one shown frame per packet);
    # speed 4 ("good" deadline) is the usual quality/speed middle.
    vp9 = {"crf": str(options.crf), "b": "0", "g": gop, "keyint_min": gop, "deadline": "good", "cpu-used": "4",
           "lag-in-frames": "0", "auto-alt-ref": "0", "threads": "1", "row-mt": "0"}
    if options.crf == 0:
        vp9["lossless"] = "1"
    return vp9


def encode_settings(options):
    """What the json records about how the clips were made."""
    encoder, _, container_format = CLIP_CODECS[options.codec]
    return {"codec": options.codec, "encoder": encoder, "container": container_format, "size": options.size,
            "crf": options.crf, "gop": options.gop, "pix_fmt": options.pix_fmt, "bframes": 0,
            "margin": options.tracks.margin, "options": encoder_options(options)}


# ----------------------------------------------------------------------------------------- source frames
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


def detect_on_frames(data, name, frame_count, detector, detect_every, progress=None):
    """(detection frames, boxes found on each): one decoding pass, the detector on every k-th frame."""
    wanted = detection_frames(frame_count, detect_every)
    wanted_set = set(wanted)
    found, batch, batch_frames = [], [], []
    for position, rgb in enumerate(iterate_frames(data, name)):
        if position in wanted_set:
            batch.append(rgb)
            batch_frames.append(position)
        if len(batch) == DETECTION_BATCH:
            found += zip(batch_frames, detector.detect(np.stack(batch)))
            batch, batch_frames = [], []
        if progress:
            progress("scan", 1)
        if position >= wanted[-1]:
            break
    if batch:
        found += zip(batch_frames, detector.detect(np.stack(batch)))
    if not found:
        raise BadVideo(name, "undecodable", "no frame decoded for face detection")
    frames, detections = zip(*found)
    return list(frames), list(detections)


def centre_track(frame_count, width, height):
    """The track a video without faces keeps: the centre square of every frame."""
    from dfdtrain.data.crops import centre_square

    window = [round(value, 1) for value in centre_square(width, height, 1)[0].tolist()]
    return {"id": 0, "source_frames": list(range(frame_count)), "windows": [window] * frame_count,
            "detections": [], "score": 0.0}


def find_tracks(data, name, info, detector, options, progress=None):
    """The video's face tracks (ranked), or [] when none was found."""
    frames, detections = detect_on_frames(data, name, info["frames"], detector, options.tracks.detect_every,
                                          progress)
    # A video shorter than min_detections detection frames (a 1-frame clip, a still) cannot reach that many
    # detections: there a face on every detection frame makes the track.
    track_options = dataclasses.replace(options.tracks,
                                        min_detections=min(options.tracks.min_detections, len(frames)))
    return build_tracks(frames, detections, track_options, frame_count=info["frames"])


# ------------------------------------------------------------------------------------------- encoding
class ClipEncoder:
    """One track's clip, encoded in memory: ``add(rgb)`` per frame, then ``finish()`` -> bytes."""

    def __init__(self, options, fps):
        encoder, _, container_format = CLIP_CODECS[options.codec]
        self.pix_fmt = options.pix_fmt
        self.buffer = io.BytesIO()
        rate = Fraction(fps).limit_denominator(1001) if fps and fps > 0 else Fraction(25)
        self.time_base = 1 / rate
        # bitexact: no encoder version strings or random ids, so the same frames give the same bytes.
        container_options = {"fflags": "+bitexact"}
        if container_format == "mp4":
            container_options["video_track_timescale"] = str(rate.numerator)
        self.container = av.open(self.buffer, "w", format=container_format, options=container_options)
        self.stream = self.container.add_stream(encoder, rate=rate, options=encoder_options(options))
        self.stream.width = self.stream.height = options.size
        self.stream.pix_fmt = options.pix_fmt
        self.stream.time_base = self.time_base
        self.stream.codec_context.time_base = self.time_base
        self.frames = 0

    def add(self, rgb):
        # BT.601 limited range: swscale's default, which every decoder here assumes for untagged video.
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=self.pix_fmt)
        frame.pts = self.frames
        frame.time_base = self.time_base
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def finish(self):
        self.container.mux(self.stream.encode(None))
        self.container.close()
        return self.buffer.getvalue()


def crop_window(rgb, window, size):
    """One frame's square window, resized to size x size (uint8 numpy; outside the frame is zeros)."""
    import torch  # here: the CLI imports this module for its defaults, and must start without torch

    from dfdtrain.data.crops import crop_and_resize

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
    for position, rgb in enumerate(iterate_frames(clip, name)):
        if position in references:
            decoded[position] = rgb
        count = position + 1
    if count != expected_frames:
        raise BadVideo(name, "undecodable", f"face clip decodes to {count} frames, {expected_frames} were encoded")
    positions = sorted(references)
    result = fidelity(np.stack([decoded[p] for p in positions]), np.stack([references[p] for p in positions]))
    return {**result, "frames_compared": len(positions)}


def encode_tracks(data, name, info, tracks, options, progress=None):
    """Crop and encode every track in one decoding pass; returns [(clip bytes, fidelity)] in track order."""
    fps = info.get("fps") or 25
    encoders = [ClipEncoder(options, fps) for _ in tracks]
    # per track: clip position of each source frame, and the clip positions whose crops are kept for fidelity
    positions = [{frame: clip_position for clip_position, frame in enumerate(track["source_frames"])}
                 for track in tracks]
    kept_positions = [set(uniform_indices(len(track["source_frames"]), options.fidelity_frames))
                      for track in tracks]
    references = [{} for _ in tracks]
    last_frame = max(track["source_frames"][-1] for track in tracks)
    for source_frame, rgb in enumerate(iterate_frames(data, name)):
        for number, track in enumerate(tracks):
            clip_position = positions[number].get(source_frame)
            if clip_position is None:
                continue
            crop = crop_window(rgb, track["windows"][clip_position], options.size)
            encoders[number].add(crop)
            if clip_position in kept_positions[number]:
                references[number][clip_position] = crop
        if progress:
            progress("encode", 1)
        if source_frame >= last_frame:
            break
    results = []
    for number, (track, encoder) in enumerate(zip(tracks, encoders)):
        if encoder.frames != len(track["source_frames"]):
            raise BadVideo(name, "truncated", f"track {number} needs frame {track['source_frames'][-1]}, the video "
                                              f"decodes to fewer frames")
        clip = encoder.finish()
        clip_name = f"{name}#{member_extension(options, number)}"  # the extension tells the demuxer what it is
        results.append((clip, check_clip(clip, clip_name, encoder.frames, references[number])))
    return results


def member_extension(options, track_number):
    """Tar member extension of a track's clip: ``mp4`` for track 0 (the sample's video), ``track1.mp4``..."""
    extension = CLIP_CODECS[options.codec][1]
    return extension if track_number == 0 else f"track{track_number}.{extension}"


class NoFace(Exception):
    """No face track was found and the policy is to skip the video."""


def make_face_clips(data, name, info, detector, options, progress=None):
    """(members [(extension, bytes)], json fields) of one video's face-clip sample; NoFace when skipped.

    ``info`` is the source's probe (frames, fps, width, height, ...). The json fields replace the probe's
    frames/width/height/codec/bytes with the stored clip's (track 0), keep the source's under ``source``, and
    add ``store``, ``tracks`` (id, member, frames, source_frames, windows, detections, score, bytes, fidelity),
    ``encode``, ``fidelity`` (the tracks' mean) and ``no_face``.
    """
    tracks = find_tracks(data, name, info, detector, options, progress)
    no_face = not tracks
    if no_face:
        if options.no_face == "skip":
            raise NoFace(name)
        tracks = [centre_track(info["frames"], info["width"], info["height"])]
    encoded = encode_tracks(data, name, info, tracks, options, progress)
    members, track_fields = [], []
    for number, (track, (clip, clip_fidelity)) in enumerate(zip(tracks, encoded)):
        extension = member_extension(options, number)
        members.append((extension, clip))
        track_fields.append({"id": track["id"], "member": extension, "frames": len(track["source_frames"]),
                             "source_frames": track["source_frames"], "windows": track["windows"],
                             "detections": track["detections"], "score": track["score"], "bytes": len(clip),
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
    }
    return members, fields
