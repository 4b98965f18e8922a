"""Source frames as planar YUV (``Planes``) and the square windows cut out of them, never through RGB: the crop
stays in the source's YUV (4:2:0 sources lose nothing before the codec). ``FrameArena`` is the memory a
process reuses for one video's cached planes at a time.
"""

import dataclasses

import av
import numpy as np

from dfdtrain.data.decode.decoders import open_video
from dfdtrain.core.errors import BadVideo

# planar formats the crop works in: chroma subsampling per axis. Other sources are converted to the clip's format.
PLANE_SUBSAMPLING = {"yuv420p": 2, "yuv444p": 1}
BLACK = (16, 128, 128)  # Y, U, V of black in limited range: what RGB zeros (the loaders' padding) encode to


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
