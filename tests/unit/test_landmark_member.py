"""A face-clip sample's landmarks member (dfdtrain.data.faces.landmarks): written as float32 arrays per track,
read back exactly, the first version's inline lists still read, and a member that is missing, malformed or
would inflate beyond its track's frames refused as a BadVideo naming the sample (samples come from others)."""

import io
import zipfile

import numpy as np
import pytest

from dfdtrain.core.errors import BadVideo
from dfdtrain.data.faces.landmarks import MEMBER, landmarks_member, track_points


def frames_of_points(count, points=68, missing=()):
    return [[] if position in missing else [[position + k, 2 * k] for k in range(points)] for position in range(count)]


def sample_with(member, frames=5):
    track = {"id": 3, "frames": frames, "landmarks": {"member": MEMBER, "array": "3", "frames": frames}}
    return {"__key__": "vid", MEMBER: member}, track


def test_points_round_trip_with_nan_rows_and_the_same_bytes_each_time():
    points = frames_of_points(5, missing={2})
    member = landmarks_member({"3": points}, 68)
    assert member == landmarks_member({"3": points}, 68)  # fixed zip dates: shards stay reproducible
    sample, track = sample_with(member)
    array = track_points(sample, track)
    assert array.dtype == np.float32 and array.shape == (5, 68, 2)
    assert np.isnan(array[2]).all() and np.array_equal(array[4], np.asarray(points[4], dtype=np.float32))
    # the first version: the lists inline in the json
    inline = track_points({"__key__": "vid"}, {"id": 0, "frames": 5, "landmarks": points})
    assert np.array_equal(inline, array, equal_nan=True)
    assert track_points(sample, {"id": 3, "frames": 5}) is None  # sharded without landmarks


def bomb(frames):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("3.npy", b"\0" * (frames * 256 * 2 * 4 + 4096))
    return buffer.getvalue()


@pytest.mark.parametrize("member, expected", [
    (None, "KeyError"),
    (b"not a zip", "BadZipFile"),
    (landmarks_member({"9": frames_of_points(5)}, 68), "KeyError"),  # no array for track 3
    (landmarks_member({"3": frames_of_points(4)}, 68), "not float32 [5, points, 2]"),
    ("bomb", "inflates to"),
])
def test_a_bad_member_is_a_bad_video_naming_the_sample(member, expected):
    sample, track = sample_with(bomb(5) if member == "bomb" else member)
    if member is None:
        sample.pop(MEMBER)
    with pytest.raises(BadVideo) as caught:
        track_points(sample, track)
    assert str(caught.value).startswith("vid: unreadable") and expected in str(caught.value)
    assert "\n" not in str(caught.value)
