"""A face track encoded as its own clip and checked: ``encode_tracks`` cuts every frame of every track out of the
source's planes, encodes one short-GOP clip per track (``ClipEncoder``) and decodes each back
(``check_clip``): its frame count must match, and its fidelity against the crops a loader of the original video
cuts (``crop_window``) is measured. With ``options.landmarks`` the landmark model runs on each frame as the
encoder gets it (the cut window scaled to the clip's side: ``landmarks.track_landmarks``, points in the clip's
pixels).
"""

import io
import time
from fractions import Fraction

import av
import numpy as np

from dfdtrain.data.decode.decoders import open_video
from dfdtrain.data.decode.sampler import uniform_indices
from dfdtrain.data.faces.clip_options import CLIP_CODECS, encoder_options
from dfdtrain.data.faces.landmarks import track_landmarks
from dfdtrain.data.faces.planes import cut_window, decode_planes, stored_window
from dfdtrain.core.errors import BadVideo


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

    def scaled(self, frame):
        """The frame as this clip stores it: size x size in its pixel format."""
        if frame.format.name != self.pix_fmt or frame.width != self.size or frame.height != self.size:
            # the scaler: bilinear, its filter widened when shrinking (no aliasing)
            frame = frame.reformat(width=self.size, height=self.size, format=self.pix_fmt, interpolation="BILINEAR")
        return frame

    def add_frame(self, frame):
        frame = self.scaled(frame)
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
    import torch  # here: importing the face store does not import torch

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


def encode_tracks(data, name, info, tracks, options, progress=None, scan=None, stats=None, landmarks=None):
    """Cut and encode every track; returns [(clip bytes, fidelity, stored windows, clip size, landmarks)] in track
    order.

    Frames come from ``scan.planes`` when the scan kept them, else from one more decoding pass. ``stats``
    (a dict) gets the seconds of "encode" (cut, scale, encode; with the second pass's decoding), "landmarks"
    and "verify". ``landmarks`` (per track: whether it gets them; None: none does): with ``options.landmarks``
    set, the model runs on each of such a track's frames as encoded (cut and scaled to the clip's side), and its
    entry holds one list of [x, y] (the clip's pixels, ``landmarks.track_landmarks``) per frame; else None.
    """
    started = time.perf_counter()
    marked = [bool(options.landmarks and landmarks and landmarks[number]) for number in range(len(tracks))]
    points = [[] if marked[number] else None for number in range(len(tracks))]
    landmark_seconds = 0.0
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
            cut = cut_window(planes, window).frame()
            if marked[number]:
                # the frame the encoder gets (scaled as add_frame would): the points are in the clip's pixels, and
                # cost a 256-pixel RGB copy, not a copy of the source-sized window (~1 vs ~2.5 ms at 400 pixels)
                cut = encoders[number].scaled(cut)
                landmark_started = time.perf_counter()
                points[number].append(track_landmarks(options.landmarks, cut.to_ndarray(format="rgb24"),
                                                      options.tracks.margin))
                landmark_seconds += time.perf_counter() - landmark_started
            encoders[number].add_frame(cut)
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
                        windows[number], sizes[number], points[number]))
    if stats is not None:
        stats["encode"] = stats.get("encode", 0.0) + encoded - started - landmark_seconds
        if landmark_seconds:
            stats["landmarks"] = stats.get("landmarks", 0.0) + landmark_seconds
        stats["verify"] = stats.get("verify", 0.0) + time.perf_counter() - encoded
    return results


def member_extension(options, track_number):
    """Tar member extension of a track's clip: ``mp4`` for track 0 (the sample's video), ``track1.mp4``..."""
    extension = CLIP_CODECS[options.codec][1]
    return extension if track_number == 0 else f"track{track_number}.{extension}"
