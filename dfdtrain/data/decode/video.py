"""Probe and read video files (or in-memory bytes) with PyAV.

``probe`` is the one check every stage uses (index and shard): it reads the container, counts the real
video packets (headers lie: DFDC and FF++ frame counts in the header are not always the decoded count),
decodes the first frame, and classifies a bad file as unreadable / zero-length / undecodable / truncated.
"""

import io
import os
import struct

import av
import numpy as np

from dfdtrain.core.errors import BadVideo

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# ISO base media files (mp4/mov) are checked box by box: a cut-off file declares more bytes than it has.
ISO_BMFF_EXTENSIONS = (".mp4", ".m4v", ".mov", ".3gp")
_ISO_TOP_LEVEL_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"meta", b"moof",
                        b"mfra", b"sidx", b"styp", b"pdin", b"prft", b"emsg", b"junk"}


def is_media_file(name):
    return os.path.splitext(str(name))[1].lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS


def source_name(source, name):
    return name if name is not None else ("<bytes>" if isinstance(source, (bytes, bytearray)) else str(source))


def read_source(source, name):
    """Return the whole file as bytes (probing reads every packet anyway)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        with open(source, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise BadVideo(name, "unreadable", error.strerror or str(error)) from None


def check_iso_boxes(data, name):
    """Walk the top-level mp4/mov boxes; a box running past the end of the file means truncation."""
    offset, first = 0, True
    while offset + 8 <= len(data):
        size, box_type = struct.unpack(">I4s", data[offset:offset + 8])
        if first and box_type not in _ISO_TOP_LEVEL_BOXES:
            raise BadVideo(name, "undecodable", "not an MP4/MOV file (no ftyp/moov box at the start)")
        first = False
        if not all(32 <= byte < 127 or byte == 0xA9 for byte in box_type):  # 0xA9: the (c) of '\xa9too' etc.
            raise BadVideo(name, "undecodable", f"corrupt box structure at byte {offset}")
        if size == 1:  # 64-bit size follows the type
            if offset + 16 > len(data):
                raise BadVideo(name, "truncated", f"box '{box_type.decode('latin-1')}' header cut off")
            size = struct.unpack(">Q", data[offset + 8:offset + 16])[0]
        elif size == 0:  # box extends to the end of the file
            size = len(data) - offset
        if size < 8:
            raise BadVideo(name, "undecodable", f"invalid box size {size} at byte {offset}")
        if offset + size > len(data):
            raise BadVideo(name, "truncated",
                           f"box '{box_type.decode('latin-1')}' needs {offset + size} bytes, file has {len(data)}")
        offset += size


def _probe_image(data, name):
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height, codec = image.width, image.height, (image.format or "image").lower()
    except Exception as error:  # PIL raises many types for broken images
        raise BadVideo(name, "undecodable", f"not a readable image: {error}") from None
    return {"frames": 1, "fps": 0.0, "width": width, "height": height, "codec": codec, "duration": 0.0,
            "rotation": 0, "bytes": len(data)}


def probe(source, name=None):
    """Describe a video (path or bytes): frames, fps, width, height, codec, duration, rotation, bytes.

    Raises BadVideo with reason unreadable / zero-length / undecodable / truncated.
    """
    name = source_name(source, name)
    data = read_source(source, name)
    if not data:
        raise BadVideo(name, "zero-length")
    ext = os.path.splitext(name)[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return _probe_image(data, name)
    if ext in ISO_BMFF_EXTENSIONS:
        check_iso_boxes(data, name)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as error:
        raise BadVideo(name, "undecodable", f"not a video container: {error}") from None
    with container:
        if not container.streams.video:
            raise BadVideo(name, "undecodable", "no video stream")
        stream = container.streams.video[0]
        header_frames = stream.frames or 0
        packets, first_frame, last_pts = 0, None, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at the end
                    continue
                packets += 1
                if packet.pts is not None:
                    last_pts = packet.pts if last_pts is None else max(last_pts, packet.pts)
                if first_frame is None:
                    for frame in packet.decode():
                        first_frame = frame
                        break
            if first_frame is None:  # decoders with delay return the first frame only when flushed
                for frame in stream.decode(None):
                    first_frame = frame
                    break
        except av.FFmpegError as error:
            if packets == 0:
                raise BadVideo(name, "undecodable", str(error)) from None
            raise BadVideo(name, "truncated", f"demux failed after {packets} packets: {error}") from None
        if first_frame is None:
            raise BadVideo(name, "undecodable", f"no frame could be decoded from {packets} packets")

        fps = float(stream.average_rate or stream.guessed_rate or 0)
        duration = float(container.duration / av.time_base) if container.duration else (packets / fps if fps else 0)
        if header_frames and packets < 0.95 * header_frames - 1:
            raise BadVideo(name, "truncated", f"header promises {header_frames} frames, file holds {packets}")
        if last_pts is not None and stream.time_base and fps and duration > 2.0:
            covered = float((last_pts - (stream.start_time or 0)) * stream.time_base) + 1.0 / fps
            if covered < 0.9 * duration - 0.5:
                raise BadVideo(name, "truncated", f"packets cover {covered:.2f}s of a {duration:.2f}s video")
        info = {
            "frames": packets,
            "fps": round(fps, 4),
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "codec": stream.codec_context.name,
            "duration": round(duration, 4),
            "rotation": int(getattr(first_frame, "rotation", 0) or 0),
            "bytes": len(data),
        }
        if header_frames and header_frames != packets:
            info["frames_header"] = header_frames
        return info


def read_frames(source, indices, name=None):
    """Decode the frames at ``indices`` (decode order, 0-based) as uint8 RGB numpy [T,H,W,3].

    Decodes sequentially up to the largest index (the sampler-aware, seeking decoders build on this).
    Duplicated and unsorted indices are allowed; an index past the end of the video raises BadVideo.
    """
    name = source_name(source, name)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("read_frames needs at least one frame index")
    if min(indices) < 0:
        raise ValueError(f"negative frame index {min(indices)}")
    ext = os.path.splitext(name)[1].lower()
    data = read_source(source, name)
    if ext in IMAGE_EXTENSIONS:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            frame = np.asarray(image.convert("RGB"))
        if max(indices) > 0:
            raise BadVideo(name, "truncated", f"frame {max(indices)} requested from a still image")
        return np.stack([frame] * len(indices))
    wanted = set(indices)
    last_wanted = max(indices)
    found, decoded = {}, 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for position, frame in enumerate(container.decode(stream)):
                decoded = position + 1
                if position in wanted:
                    found[position] = frame.to_ndarray(format="rgb24")
                if position >= last_wanted:
                    break
    except (av.FFmpegError, IndexError) as error:
        raise BadVideo(name, "undecodable", str(error) or "no video stream") from None
    missing = sorted(wanted - found.keys())
    if missing:
        raise BadVideo(name, "truncated", f"frame {missing[0]} requested, video has {decoded} frames")
    return np.stack([found[i] for i in indices])
