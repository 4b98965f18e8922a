"""Face boxes a user already has (``dfdtrain index --face-boxes FILE``): crops around faces without a detector.

Many DFDC and Celeb-DF users have boxes from an earlier detector run (a Kaggle notebook's BlazeFace or MTCNN
pass, a dataset's own annotations). The file is JSON lines, one video per line:

    {"path": "real/alice/clip.mp4", "frames": [0, 10, 20], "boxes": [[12, 8, 60, 70], null, [14, 9, 61, 71]]}

``path`` is the video's path under the dataset root (as the manifest's ``path``); ``frames`` the 0-based frame
indices the boxes are on, increasing; ``boxes`` one ``[x1, y1, x2, y2]`` per frame in pixels of the upright
frame (x2, y2 exclusive), or null (or []) where the frame has no face. The index puts them in the video's manifest
row as ``faces``, the form ``shard --faces`` stores (``faces.detect.detect_faces``), so an original-video shard
carries them and ``clip.crop: face`` crops around them; ``shard --faces DETECTOR`` replaces them with its own.

A line that is not such an object, or a path listed twice, is a one-line error naming the file and line, before
any video is probed. A video whose boxes all miss its frame is skipped, named, with reason ``bad face boxes``;
entries that name no indexed video and indexed videos without an entry are counted in the summary.

Memory: per entry 8 bytes of its path's digest, the byte offset of its line and a used flag; a video's line is
read again when the index reaches it.
"""

import json
import math
from array import array

import numpy as np

from dfdtrain.core.digests import digest64
from dfdtrain.core.errors import DfdError

SOURCE = "file"  # the stored boxes' ``detector``: they came from the user's file


def entry_problem(entry):
    """What makes one line's object unusable, or None."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        return "'path' must be the video's path under the dataset root"
    frames, boxes = entry.get("frames"), entry.get("boxes")
    if not isinstance(frames, list) or not frames or not all(
            isinstance(frame, int) and not isinstance(frame, bool) and frame >= 0 for frame in frames):
        return "'frames' must be a non-empty list of frame indices (whole numbers >= 0)"
    if any(later <= earlier for earlier, later in zip(frames, frames[1:])):
        return "'frames' must be increasing"
    if not isinstance(boxes, list) or len(boxes) != len(frames):
        return f"'boxes' must hold one box (or null) per frame: {len(frames)} frames"
    for frame, box in zip(frames, boxes):
        if box is None or box == []:
            continue
        if not isinstance(box, list) or len(box) != 4 or not all(
                isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                for value in box):
            return f"the box of frame {frame} must be [x1, y1, x2, y2] in pixels (finite numbers) or null"
        if box[2] <= box[0] or box[3] <= box[1]:
            return f"the box of frame {frame} is empty: x2 <= x1 or y2 <= y1"
    return None


class FaceBoxFile:
    """A face-box file, checked in one streaming pass; ``faces_of`` looks up a video's boxes by its path."""

    def __init__(self, path):
        self.path = str(path)
        try:
            self._handle = open(self.path, "rb")  # kept open: faces_of reads a video's line again
        except OSError as error:
            raise DfdError(f"{self.path}: cannot read the face-box file ({error.strerror})") from None
        try:
            self._check_and_index()
        except BaseException:
            self._handle.close()
            raise

    def _check_and_index(self):
        digests, offsets = array("Q"), array("q")
        offset = 0
        for number, line in enumerate(self._handle, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                entry = json.loads(line.decode("utf-8"))
            except json.JSONDecodeError as error:
                raise DfdError(f"{self.path}:{number}: not a JSON line ({error.msg})") from None
            except UnicodeDecodeError as error:
                raise DfdError(f"{self.path}: not a UTF-8 text file ({error.reason})") from None
            problem = entry_problem(entry)
            if problem:
                raise DfdError(f"{self.path}:{number}: {problem}")
            digests.append(digest64(entry["path"]))
            offsets.append(start)
        digests = np.frombuffer(digests, dtype=np.uint64)
        order = np.argsort(digests, kind="stable")
        self._digests, self._offsets = digests[order], np.frombuffer(offsets, dtype=np.int64)[order]
        self._used = np.zeros(len(self._digests), dtype=bool)
        self._refuse_repeated_paths()

    def close(self):
        self._handle.close()

    def __len__(self):
        return len(self._digests)

    def _line_at(self, offset):
        self._handle.seek(int(offset))
        try:
            entry = json.loads(self._handle.readline().decode("utf-8"))
        except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
            entry = None
        if entry_problem(entry):
            raise DfdError(f"{self.path}: changed while the index read it (byte {int(offset)}); index again")
        return entry

    def _candidates(self, digest):
        """The sorted positions whose path has this digest (almost always one, or none)."""
        start = np.searchsorted(self._digests, np.uint64(digest), side="left")
        end = np.searchsorted(self._digests, np.uint64(digest), side="right")
        return range(int(start), int(end))

    def _refuse_repeated_paths(self):
        repeated = np.flatnonzero(self._digests[1:] == self._digests[:-1])
        for position in repeated.tolist():
            first, second = self._line_at(self._offsets[position]), self._line_at(self._offsets[position + 1])
            if first["path"] == second["path"]:
                raise DfdError(f"{self.path}: {first['path']!r} is listed twice; one line per video")

    def faces_of(self, path, width, height):
        """(the ``faces`` field of the video at ``path`` (its frames ``width`` x ``height``), the problem) — (None,
        None) when the file has no line for it; (None, problem) when every box misses the frame."""
        for position in self._candidates(digest64(path)):
            entry = self._line_at(self._offsets[position])
            if entry["path"] != path:
                continue
            self._used[position] = True
            boxes = [[box] if box else [] for box in entry["boxes"]]
            inside = [box for (box,) in filter(None, boxes) if box[0] < width and box[1] < height and box[2] > 0
                      and box[3] > 0]
            if any(boxes) and not inside:
                return None, f"no box of {self.path} is inside its {width}x{height} frames"
            return {"detector": SOURCE, "frames": entry["frames"], "boxes": boxes,
                    "frames_without_face": sum(1 for faces in boxes if not faces)}, None
        return None, None

    def unused(self):
        """(how many entries named no video that was looked up, one such path or None)."""
        positions = np.flatnonzero(~self._used)
        example = self._line_at(self._offsets[positions[0]])["path"] if len(positions) else None
        return len(positions), example


def upright_size(info):
    """(width, height) of a probed video's frames as decoded upright (a 90° rotation swaps them)."""
    if int(info.get("rotation") or 0) % 180:
        return info["height"], info["width"]
    return info["width"], info["height"]
