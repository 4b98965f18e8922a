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

``encode_frames_h264`` is the cheap sibling training augmentation uses (``data.augment.codec``): a clip's already
decoded frames (uint8 [T,H,W,3]) through libx264 and back, in memory, with no container: the same shape out.
"""

import fractions
import io

import av
import numpy as np
import torch

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


def _check_crf(crf):
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise DfdError(f"h264 CRF {crf!r} is not an integer in 0..51")
    if ENCODER not in av.codecs_available:
        raise DfdError(f"h264 perturbation needs PyAV's {ENCODER} encoder, not in this PyAV build")


def encode_frames_h264(frames, crf, *, scale=1.0, preset=PRESET, threads=1):
    """``frames`` (uint8 [T,H,W,3] RGB, numpy or torch) encoded as one H.264 stream at ``crf`` (libx264, yuv420p,
    BT.601 limited range as swscale converts) and decoded back: the same type, shape and dtype. ``scale`` < 1:
    downscaled first (bilinear, antialiased, to ``max(2, round(side x scale))``) and upscaled back after
    (bilinear), as a platform that rescales before it encodes.

    No container and no file: frames -> packets -> frames in memory (a 25 fps time base, one pts per frame). An
    odd width or height is padded by repeating the last column / row to even (4:2:0 needs both even; social
    media encodes 4:2:0) and cropped back after. x264's macroblock tree is off (``mbtree=0``: with it, the output
    varied between identical calls in a loader process). ``threads=1`` (the default): the output is a function of
    the frames, the CRF, ``scale`` and the preset (the same x264 build)."""
    _check_crf(crf)
    is_torch = isinstance(frames, torch.Tensor)
    array = frames.detach().cpu().numpy() if is_torch else np.asarray(frames)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3 or 0 in array.shape:
        raise DfdError(f"encode_frames_h264: frames must be uint8 [T,H,W,3], got {array.dtype} {list(array.shape)}")
    if not 0 < scale <= 1:
        raise DfdError(f"encode_frames_h264: scale {scale!r} is not in (0, 1]")
    count, height, width, _ = array.shape
    small = (max(2, round(height * scale)), max(2, round(width * scale)))
    source = _resize(array, small, antialias=True) if scale < 1 and small != (height, width) else array
    out = _encode_decode(source, crf, preset, threads)
    if out.shape[1:3] != (height, width):
        out = _resize(out, (height, width), antialias=False)
    return torch.from_numpy(out).to(frames.device) if is_torch else out


def _resize(clip, size, antialias):
    """uint8 [T,H,W,3] -> uint8 [T,*size,3], bilinear (half-pixel centres) in float32, rounded half up."""
    images = torch.from_numpy(clip).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False,
                                              antialias=antialias)
    return torch.floor_(resized + 0.5).clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _encode_decode(array, crf, preset, threads):
    """uint8 [T,H,W,3] numpy through libx264 and back (see ``encode_frames_h264``)."""
    count, height, width, _ = array.shape
    padded = np.pad(array, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    encoder = av.CodecContext.create(ENCODER, "w")
    encoder.width, encoder.height = padded.shape[2], padded.shape[1]
    encoder.pix_fmt = "yuv420p"
    encoder.time_base = fractions.Fraction(1, 25)
    encoder.framerate = fractions.Fraction(25, 1)
    # mb-tree off: with it on, the same frames gave other bytes now and then inside a loader process (about one
    # 4-frame clip in 20 passes; never in a bare loop), which would break the same-seed-same-frames promise
    encoder.options = {"crf": str(int(crf)), "preset": preset, "threads": str(int(threads)),
                       "x264-params": "mbtree=0"}
    decoder = av.CodecContext.create("h264", "r")
    decoder.thread_count = 1
    out = []
    try:
        packets = []
        for index, image in enumerate(padded):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(
                format="yuv420p")
            frame.pts = index
            packets += encoder.encode(frame)
        packets += encoder.encode(None)
        for packet in packets:
            out += [decoded.to_ndarray(format="rgb24") for decoded in decoder.decode(packet)]
        out += [decoded.to_ndarray(format="rgb24") for decoded in decoder.decode(None)]
    except av.FFmpegError as error:
        raise DfdError(f"encode_frames_h264 at CRF {crf}: {type(error).__name__}: {error}") from None
    if len(out) != count:
        raise DfdError(f"encode_frames_h264 at CRF {crf}: {count} frames in, {len(out)} decoded back")
    return np.ascontiguousarray(np.stack(out)[:, :height, :width])


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
