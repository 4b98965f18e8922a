"""Decoder backends: (video, frame indices) -> exactly those frames, upright, as uint8 RGB [T,H,W,3].

Every backend shares one contract::

    decoder = build_decoder("pyav")
    frames = decoder.read(source, indices, name=None)   # numpy uint8 [T, H, W, 3]

``source`` is a path or the file's bytes; ``indices`` are 0-based frame positions in presentation order, in
any order and with duplicates allowed, returned in the given order. Frames come out upright: a stream's
display rotation (the display matrix) is applied, so a phone clip stored landscape and flagged as portrait
comes out portrait (DFDC's portrait clips are stored 1080x1920 without a flag and stay as they are). An index
past the real end raises ``BadVideo(name, "truncated")``; a file that cannot be opened raises BadVideo.

Backends:
  pyav        CPU; decodes only the GOPs that hold wanted frames (the default everywhere without a GPU).
  sequential  CPU; decodes every frame up to the last wanted one (the reference notebooks' way; baseline).
  torchcodec  ``torchcodec.decoders.VideoDecoder.get_frames_at`` when torchcodec imports (needs system FFmpeg).
  dali        ``dfdtrain.data.decode.dali.DaliDecoder`` (NVDEC on a GPU; VP8/VP9/MJPEG only on a CPU).
  auto        dali when CUDA and nvidia.dali are available, else pyav.
"""

import bisect
import io
import os

import av
import numpy as np

from dfdtrain.data.decode import video
from dfdtrain.core.errors import BadVideo, DfdError
from dfdtrain.core.registry import Registry

DECODERS = Registry("decoder")


def build_decoder(name="pyav", **options):
    """Build a registered decoder, e.g. ``build_decoder("pyav")``; an unknown or unusable one is a DfdError."""
    try:
        factory = DECODERS.get(name)
    except KeyError as error:
        raise DfdError(error.args[0]) from None
    return factory(**options)


# ---------------------------------------------------------------------------------------------------
# Helpers shared by the backends


def check_indices(indices):
    """Frame indices as a list of ints; at least one, none negative."""
    indices = [int(index) for index in indices]
    if not indices:
        raise ValueError("reading frames needs at least one frame index")
    if min(indices) < 0:
        raise ValueError(f"negative frame index {min(indices)}")
    return indices


def load_bytes(source, name):
    """The whole file as bytes; BadVideo unreadable / zero-length."""
    data = video.read_source(source, name)
    if not data:
        raise BadVideo(name, "zero-length")
    return data


def prepare_read(source, indices, name):
    """What every backend's read() starts with: (display name, checked indices, the file's bytes)."""
    name = video.source_name(source, name)
    return name, check_indices(indices), load_bytes(source, name)


def is_image(name):
    return os.path.splitext(name)[1].lower() in video.IMAGE_EXTENSIONS


def upright(rgb, rotation):
    """Apply a display rotation (degrees counter-clockwise, PyAV's ``frame.rotation``) to an [H,W,3] frame.

    Only quarter turns occur in practice (phones write 0/90/180/270); mirroring in the matrix is not applied.
    """
    quarter_turns = round(float(rotation or 0) / 90) % 4
    if not quarter_turns:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k=quarter_turns))  # np.rot90 turns counter-clockwise


def open_video(data, name):
    """Open in-memory video bytes; BadVideo truncated / undecodable as ``probe`` classifies them."""
    if os.path.splitext(name)[1].lower() in video.ISO_BMFF_EXTENSIONS:
        video.check_iso_boxes(data, name)  # a cut-off mp4 is "truncated", not a vague demuxer error
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as error:
        raise BadVideo(name, "undecodable", f"not a video container: {error}") from None
    if not container.streams.video:
        container.close()
        raise BadVideo(name, "undecodable", "no video stream")
    return container


# ---------------------------------------------------------------------------------------------------
# sequential: decode everything up to the last wanted frame


@DECODERS.register("sequential")
class SequentialDecoder:
    """Decode every frame from the start up to the last wanted one: the reference notebooks' way.

    The same loop as ``video.read_frames`` (the benchmark's baseline), plus the display rotation, read off the
    decoded frames (a separate look at the rotation would cost a second open and a keyframe decode).
    """

    name = "sequential"

    def __init__(self, thread_type="AUTO", thread_count=0):
        self.thread_type = thread_type
        self.thread_count = thread_count

    def read(self, source, indices, name=None):
        name, indices, data = prepare_read(source, indices, name)
        if is_image(name):
            return video.read_frames(data, indices, name=name)
        wanted, last_wanted = set(indices), max(indices)
        found, decoded = {}, 0
        try:
            with open_video(data, name) as container:
                stream = container.streams.video[0]
                stream.thread_type = self.thread_type
                stream.thread_count = self.thread_count
                for position, frame in enumerate(container.decode(stream)):
                    decoded = position + 1
                    if position in wanted:
                        found[position] = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                    if position >= last_wanted:
                        break
        except av.FFmpegError as error:
            raise BadVideo(name, "undecodable", str(error)) from None
        missing = sorted(wanted - found.keys())
        if missing:
            raise BadVideo(name, "truncated", f"frame {missing[0]} requested, video has {decoded} frames")
        return np.stack([found[index] for index in indices])


# ---------------------------------------------------------------------------------------------------
# pyav: decode only the GOPs that hold wanted frames


SHORT_GOP_PACKETS = 16  # mean GOP length up to which the pyav decoder uses slice threads only


class _NeedSequential(Exception):
    """The stream's timestamps or keyframe flags cannot be trusted for skipping: decode from the start."""


@DECODERS.register("pyav")
class PyAVDecoder:
    """Decode only what the wanted frames need: from the keyframe at or before each run of wanted frames.

    One demux pass (packets only, no decoding) gives every frame's pts and the keyframes. Frame ``i`` is the
    ``i``-th smallest pts (packets come in decode order; with B-frames that differs from presentation order).
    Wanted frames are grouped into runs; for each run the decoder is flushed and fed the packets from the
    run's keyframe on, and only the wanted frames are converted to RGB. This is ``container.seek`` done on
    the demuxed packets, so it does not depend on the container's seek index (AVI indexes by dts and a seek
    by pts can land one GOP late; a webm may carry a single cue). A run goes on decoding into the next GOP
    unless a seek skips more than ``min_skip_frames`` frames (a flush and restart costs a few frames).

    Falls back to decoding from the start (the ``sequential`` result, exactly) when packets have no pts,
    pts repeat, the stream does not start with a keyframe, a frame after a jump is not a decodable keyframe
    or the decoder does not output a wanted frame. ``stats`` counts packets fed and fallbacks.
    """

    name = "pyav"

    def __init__(self, thread_type="AUTO", thread_count=0, min_skip_frames=4):
        self.thread_type = thread_type
        self.thread_count = thread_count
        self.min_skip_frames = min_skip_frames
        self.stats = {"videos": 0, "packets_decoded": 0, "jumps": 0, "sequential_fallbacks": 0}

    def read(self, source, indices, name=None):
        name, indices, data = prepare_read(source, indices, name)
        if is_image(name):
            return video.read_frames(data, indices, name=name)
        self.stats["videos"] += 1
        with open_video(data, name) as container:
            stream = container.streams.video[0]
            packets, demux_error = self._demux(container, stream, name)
            # set before the first decode opens the codec
            stream.thread_type = self._thread_type_for(packets)
            stream.thread_count = self.thread_count
            try:
                frames = self._decode_runs(stream, packets, indices, name, demux_error)
            except _NeedSequential:
                frames = None
        if frames is None:
            self.stats["sequential_fallbacks"] += 1
            return SequentialDecoder(self.thread_type, self.thread_count).read(data, indices, name=name)
        return np.stack([frames[index] for index in indices])

    def _thread_type_for(self, packets):
        """``AUTO`` (frame + slice threads) unless the GOPs are short: frame threading holds frames back at every
        flush, so on a short-GOP clip (a face clip, keyframe every few frames) it decodes more packets than it
        saves; there slice threads only."""
        if self.thread_type != "AUTO":
            return self.thread_type
        keyframes = sum(1 for packet in packets if packet.is_keyframe)
        return "SLICE" if len(packets) <= SHORT_GOP_PACKETS * max(keyframes, 1) else "AUTO"

    @staticmethod
    def _demux(container, stream, name):
        """All video packets in decode order (no decoding); a demux error keeps what came before it."""
        packets = []
        try:
            for packet in container.demux(stream):
                if packet.size:  # the empty packet at the end only flushes
                    packets.append(packet)
        except av.FFmpegError as error:
            if not packets:
                raise BadVideo(name, "undecodable", str(error)) from None
            return packets, f"demux failed after {len(packets)} packets: {error}"
        if not packets:
            raise BadVideo(name, "undecodable", "no video packets")
        return packets, None

    def _plan_runs(self, packets, wanted, name, demux_error):
        """[(first packet to feed, {pts: position})] for the sorted unique wanted positions.

        Raises _NeedSequential when timestamps or keyframes cannot be trusted, BadVideo when a wanted frame
        is past the end.
        """
        shown = [packet for packet in packets if not packet.is_discard]  # edit-list cuts: decoded, not shown
        pts_order = sorted(packet.pts for packet in shown if packet.pts is not None)
        if len(pts_order) != len(shown) or len(set(pts_order)) != len(pts_order):
            raise _NeedSequential()
        if not packets[0].is_keyframe or packets[0].pts is None:
            raise _NeedSequential()
        if wanted[-1] >= len(pts_order):
            detail = f"frame {wanted[-1]} requested, video has {len(pts_order)} frames"
            raise BadVideo(name, "truncated", detail + (f"; {demux_error}" if demux_error else ""))
        # Jump targets: keyframe packets by pts, with their place in decode order. A frame belongs to the last
        # keyframe at or before its pts (open-GOP leading frames belong to the previous GOP, and decoding on
        # from that GOP's keyframe through the next keyframe reaches them correctly).
        keyframes = sorted((packet.pts, order) for order, packet in enumerate(packets)
                           if packet.is_keyframe and packet.pts is not None)
        keyframe_pts = [pts for pts, _ in keyframes]
        if pts_order[0] < keyframe_pts[0]:
            raise _NeedSequential()
        runs = []
        last_position = None
        for position in wanted:
            pts = pts_order[position]
            keyframe = bisect.bisect_right(keyframe_pts, pts) - 1
            keyframe_position = bisect.bisect_left(pts_order, keyframe_pts[keyframe])  # frames before it
            if runs and keyframe_position - last_position - 1 <= self.min_skip_frames:
                runs[-1][1][pts] = position  # too close (or same GOP): keep decoding
            else:
                runs.append((keyframes[keyframe][1], {pts: position}))
            last_position = position
        return runs

    def _decode_runs(self, stream, packets, indices, name, demux_error):
        """{position: upright RGB frame} for every wanted position, decoding run by run."""
        runs = self._plan_runs(packets, sorted(set(indices)), name, demux_error)
        codec = stream.codec_context
        found = {}
        for run_number, (first_packet, targets) in enumerate(runs):
            if run_number:
                codec.flush_buffers()  # what container.seek does: drop references and queued frames
            if first_packet:
                self.stats["jumps"] += 1
            start_pts = packets[first_packet].pts
            remaining = dict(targets)
            checked_start = first_packet == 0  # from the first packet is exactly the sequential decode
            try:
                for packet in packets[first_packet:] + [None]:  # None drains the frames the decoder holds
                    if packet is not None:
                        self.stats["packets_decoded"] += 1
                    for frame in codec.decode(packet):
                        if frame.pts is None:
                            raise _NeedSequential()
                        if frame.pts < start_pts:
                            continue  # a leading frame of the jump keyframe: belongs to an earlier run
                        if not checked_start:
                            # The first frame shown from the jump must be a keyframe the decoder agrees on.
                            if not (frame.key_frame and frame.pts == start_pts):
                                raise _NeedSequential()
                            checked_start = True
                        position = remaining.pop(frame.pts, None)
                        if position is not None:
                            found[position] = upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                        if not remaining:
                            break
                    if not remaining:
                        break
            except av.FFmpegError as error:
                raise BadVideo(name, "undecodable", str(error)) from None
            if remaining:
                raise _NeedSequential()  # the decoder dropped a frame the demuxer counted
        return found


# ---------------------------------------------------------------------------------------------------
# torchcodec, dali, auto


@DECODERS.register("torchcodec")
class TorchCodecDecoder:
    """``torchcodec.decoders.VideoDecoder(source).get_frames_at(indices)``; torchcodec applies the rotation."""

    name = "torchcodec"

    def __init__(self, num_ffmpeg_threads=0, seek_mode="exact"):
        try:
            from torchcodec.decoders import VideoDecoder
        except ImportError as error:
            if isinstance(error, ModuleNotFoundError) and error.name and error.name.startswith("torchcodec"):
                raise DfdError("torchcodec is not installed (it needs system FFmpeg libraries); "
                               "use the pyav decoder") from None
            raise DfdError(f"torchcodec does not import: {str(error).splitlines()[0]}") from None
        except (RuntimeError, OSError) as error:  # installed, but its FFmpeg libraries are missing
            raise DfdError(f"torchcodec does not load (it needs system FFmpeg libraries): "
                           f"{str(error).splitlines()[0]}") from None
        self._video_decoder = VideoDecoder
        self.num_ffmpeg_threads = num_ffmpeg_threads
        self.seek_mode = seek_mode

    def read(self, source, indices, name=None):
        name, indices, data = prepare_read(source, indices, name)
        try:
            decoder = self._video_decoder(data, dimension_order="NHWC", seek_mode=self.seek_mode,
                                          num_ffmpeg_threads=self.num_ffmpeg_threads)
        except (RuntimeError, ValueError) as error:
            raise BadVideo(name, "undecodable", str(error).splitlines()[0]) from None
        if max(indices) >= len(decoder):
            raise BadVideo(name, "truncated", f"frame {max(indices)} requested, video has {len(decoder)} frames")
        try:
            batch = decoder.get_frames_at(indices)
        except (RuntimeError, IndexError) as error:
            raise BadVideo(name, "undecodable", str(error).splitlines()[0]) from None
        return np.ascontiguousarray(batch.data.numpy())


@DECODERS.register("dali")
def build_dali_decoder(**options):
    """DALI's video decoder (``dfdtrain.data.decode.dali``), imported only when asked for."""
    try:
        from dfdtrain.data.decode.dali import DaliDecoder
    except ImportError as error:
        raise DfdError(f"the dali decoder is unavailable: {error}") from None
    return DaliDecoder(**options)


def dali_usable():
    """True when a CUDA GPU is visible to torch and nvidia.dali imports (DALI decodes H.264 only on a GPU)."""
    import torch  # here: the CLI must not import torch at start-up

    if not torch.cuda.is_available():
        return False
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


@DECODERS.register("auto")
def build_auto_decoder(**options):
    """dali on a GPU machine with DALI installed, pyav otherwise."""
    return build_decoder("dali" if dali_usable() else "pyav", **options)
