"""Video encoding for the synthetic dataset: uint8 RGB frames into an h264 (.mp4) or vp9 (.webm) file with PyAV.

``CODECS`` names each codec's encoder, file extension, container and options, chosen so that the same frames give
byte-identical files on the same machine (single-threaded encoders, no random container IDs); ``encode_video``
writes through a temp file beside the target and renames it, so a crash never leaves a half-written video.
"""

import os
from fractions import Fraction

import av

# codec name -> (encoder, file extension, container format, encoder options).
# threads=1: frames this small gain little from encoder threads, and the output cannot depend on the core count.
CODECS = {
    "h264": (
        "libx264",
        ".mp4",
        "mp4",
        # scenecut=0: keyframes exactly every `gop` frames, so decoders can seek by GOP.
        # mbtree=0: with macroblock-tree rate control, libx264 gave different bytes (and pixels) for the
        # same frames in different processes at most frame sizes; without it the output is byte-identical
        # (checked across processes and sizes). B-frames stay on.
        {"crf": "20", "preset": "veryfast", "threads": "1", "x264-params": "scenecut=0:mbtree=0"},
    ),
    "vp9": (
        "libvpx-vp9",
        ".webm",
        "webm",
        # realtime/cpu-used 8: about 4x faster than "good" at the same quality for frames this small.
        {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1", "row-mt": "0"},
    ),
}


def encode_video(path, frames_rgb, codec, width, height, fps, gop):
    """Encode an iterable of uint8 RGB frames; written to a temp file beside `path`, then renamed.

    A crash leaves the old file or none, never a half-written video.
    """
    encoder, _, container_format, options = CODECS[codec]
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # A hidden temp name in the same folder (so the rename is atomic), created with normal permissions.
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    time_base = Fraction(1, fps)
    # bitexact: no random segment UIDs (webm) or version strings, so equal inputs give equal bytes.
    container_options = {"fflags": "+bitexact"}
    if container_format == "mp4":
        container_options["video_track_timescale"] = str(fps)  # time_base 1/fps: pts = frame index
    try:
        with av.open(tmp, "w", format=container_format, options=container_options) as container:
            stream = container.add_stream(encoder, rate=fps, options={**options, "g": str(gop)})
            stream.width = width
            stream.height = height
            stream.pix_fmt = "yuv420p"
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
            for index, rgb in enumerate(frames_rgb):
                # BT.601 limited range, the swscale default that decoders assume for untagged video.
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
                frame.pts = index
                frame.time_base = time_base
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
