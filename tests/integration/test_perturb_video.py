"""The h264 perturbation (dfdtrain.data.perturb.video) on a real FF++ clip: new bytes and frames, the same frame
count and size, strength growing with the level, the same bytes for the same input, bad input in one line."""

import io

import av
import numpy as np
import pytest

from dfdtrain.core.errors import BadVideo, DfdError
from dfdtrain.data.perturb import LEVELS, PERTURBATIONS, perturb_video_bytes, reencode_h264

CLIP = "ffpp/original_sequences/youtube/c40/videos/183.mp4"  # 1280x720, 390 frames, yuv444p


def decode(data, every=13):
    """(frame count, (height, width), every ``every``-th frame as uint8 RGB)."""
    kept, count, size = [], 0, None
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            if count % every == 0:
                kept.append(frame.to_ndarray(format="rgb24"))
            size = (frame.height, frame.width)
            count += 1
    return count, size, np.stack(kept)


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def source(fixtures):
    return (fixtures / CLIP).read_bytes()


@pytest.fixture(scope="module")
def encoded(source):
    """{level: bytes} for levels 1..5 (about 4 s each on one core)."""
    return {level: perturb_video_bytes(source, level, name=CLIP) for level in LEVELS}


def test_h264_changes_bytes_and_frames_keeps_count_and_size(source, encoded):
    assert PERTURBATIONS.get("h264").stage == "video" and PERTURBATIONS.get("h264").value(3) == 35
    assert perturb_video_bytes(source, 0) is source
    count, size, clean = decode(source)
    assert (count, size) == (390, (720, 1280))
    with av.open(io.BytesIO(encoded[3])) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.codec_context.pix_fmt) == ("h264", "yuv420p")
        assert stream.average_rate == 30
    scores = []
    for level in LEVELS:
        assert encoded[level] != source
        new_count, new_size, frames = decode(encoded[level])
        assert (new_count, new_size) == (count, size)
        assert not np.array_equal(frames, clean)
        scores.append(psnr(frames, clean))
    assert all(a > b for a, b in zip(scores, scores[1:])) and scores[-1] > 20, scores


def test_h264_is_deterministic_single_threaded(source, encoded):
    assert reencode_h264(source, 35) == encoded[3]  # threads=1: the same bytes for the same input and CRF


def test_h264_bad_input_is_one_line(source):
    cases = {b"": "zero-length", b"not a video at all" * 10: "undecodable", source[: len(source) // 2]: "truncated"}
    for data, reason in cases.items():
        with pytest.raises(BadVideo) as error:
            perturb_video_bytes(data, 2, name="clip.mp4")
        assert error.value.reason == reason and "\n" not in str(error.value) and "clip.mp4" in str(error.value)
    with pytest.raises(DfdError, match="level 7"):
        perturb_video_bytes(source, 7)
    with pytest.raises(DfdError, match="CRF 60"):
        reencode_h264(source, 60)
