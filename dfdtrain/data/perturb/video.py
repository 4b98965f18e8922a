"""The ``h264`` perturbation: re-encode a source video's bytes with libx264 at DeeperForensics' CRF levels.

DeeperForensics-1.0's "video compression" (VC) is ``ffmpeg -i in -crf {30, 32, 35, 38, 40} -y out``
(``video_compression`` in ``perturbation/distortions.py`` of EndlessSora/DeeperForensics-1.0 at
7589587e381aa51d48683d881a62c30b150e3ef8): libx264 with ffmpeg's defaults (preset medium, mb-tree on). Here
the same encoder runs in memory through PyAV, bytes in and bytes out, on the source file, before decode and
face cropping, so face detection sees the compression too: the social-media path.

Kept from the source: frame count (every decoded frame is encoded once, no frame-rate conversion), size,
timestamps and time base, frame rate and colour tags. Dropped: audio and other streams. Chroma becomes 4:2:0
(yuv420p) when both sides are even, else 4:4:4; a display rotation is applied to the pixels (so decoders see the
same upright frames; the file's stored size is the upright size then). ``threads=1`` (the default) makes the
output a function of the input bytes and the CRF: the same bytes on every run and machine with the same x264
build; other thread counts give other, equally valid, bytes.
"""

import io

import av
import numpy as np

from dfdtrain.core.errors import BadVideo, DfdError
from dfdtrain.data.decode.decoders import open_video
from dfdtrain.data.perturb.frames import check_level, register, LEVEL_PARAMETERS

ENCODER = "libx264"
PRESET = "medium"  # ffmpeg's default for libx264, as the official command line uses it


def _output_format(width, height):
    return "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"


def reencode_h264(data, crf, *, name="<bytes>", preset=PRESET, threads=1):
    """The video in ``data`` (bytes of any container PyAV reads) re-encoded as H.264 at ``crf`` in an mp4; bytes.

    BadVideo (a DfdError, one line naming ``name`` and the reason) when it cannot be read or decoded."""
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise DfdError(f"h264 CRF {crf!r} is not an integer in 0..51")
    if ENCODER not in av.codecs_available:
        raise DfdError(f"h264 perturbation needs PyAV's {ENCODER} encoder, not in this PyAV build")
    data = bytes(data)
    if not data:
        raise BadVideo(name, "zero-length")
    source = open_video(data, name)
    out = io.BytesIO()
    count = 0
    try:
        stream = source.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or 25
        time_base = stream.time_base
        with av.open(out, "w", format="mp4", options={"fflags": "+bitexact"}) as sink:
            target, last_pts = None, None
            for frame in source.decode(stream):
                rotation = int(round(getattr(frame, "rotation", 0) or 0)) % 360
                if rotation:
                    frame = _upright(frame, rotation)
                if target is None:
                    target = _open_stream(sink, stream, frame, crf, preset, threads, rate, time_base)
                pts = frame.pts
                if pts is None or (last_pts is not None and pts <= last_pts):
                    pts = (last_pts + 1) if last_pts is not None else 0  # missing or repeated stamps
                last_pts = pts
                frame = frame.reformat(format=target.pix_fmt) if frame.format.name != target.pix_fmt else frame
                frame.pts, frame.time_base = pts, target.codec_context.time_base
                sink.mux(target.encode(frame))
                count += 1
            if target is None:
                raise BadVideo(name, "undecodable", "no video frame decoded")
            sink.mux(target.encode(None))
    except av.FFmpegError as error:
        raise BadVideo(name, "undecodable", f"{type(error).__name__} after {count} frames: {error}") from None
    finally:
        source.close()
    return out.getvalue()


def _upright(frame, rotation):
    """A frame turned upright by its display rotation (degrees counter-clockwise, PyAV's ``frame.rotation``)."""
    rgb = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), k=rotation // 90))
    upright = av.VideoFrame.from_ndarray(rgb, format="rgb24")
    upright.pts, upright.time_base = frame.pts, frame.time_base
    return upright


def _open_stream(sink, stream, frame, crf, preset, threads, rate, time_base):
    target = sink.add_stream(ENCODER, rate=rate, options={"crf": str(int(crf)), "preset": preset,
                                                         "threads": str(int(threads))})
    target.width, target.height = frame.width, frame.height
    target.pix_fmt = _output_format(frame.width, frame.height)
    target.time_base = time_base
    target.codec_context.time_base = time_base
    decoded = stream.codec_context
    for tag in ("color_range", "colorspace", "color_primaries", "color_trc"):
        try:
            setattr(target.codec_context, tag, getattr(decoded, tag))
        except (AttributeError, TypeError, ValueError):
            pass  # an unknown tag stays unset (decoders assume BT.601 limited range, as for the source)
    return target


@register("h264", "video", "video_compression")
def perturb_video_bytes(data, level, *, name="<bytes>", preset=PRESET, threads=1):
    """The ``h264`` perturbation at ``level``: level 0 returns ``data`` itself, 1..5 re-encode at CRF 30, 32, 35,
    38, 40 (DeeperForensics' VC table, ``LEVEL_PARAMETERS["h264"]``)."""
    level = check_level(level)
    if level == 0:
        return data
    return reencode_h264(data, LEVEL_PARAMETERS["h264"][1][level - 1], name=name, preset=preset, threads=threads)
