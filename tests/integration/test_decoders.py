"""Decoder backends on real videos: the GOP-skipping PyAV decoder must give exactly the sequential pixels.

The reference is ``video.read_frames`` (decode everything from the start). Clips with B-frames, open GOPs,
VFR, offset timestamps, odd sizes, rotation flags and no timestamps are encoded here with PyAV.
"""

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from dfdtrain.data import read_frames
from dfdtrain.data.decode import video
from dfdtrain.data.decode.decoders import DECODERS, PyAVDecoder, SequentialDecoder, build_decoder
from dfdtrain.data.decode.sampler import SamplerConfig, sample_indices
from dfdtrain.demo.synth import synthesize
from dfdtrain.core.errors import BadVideo, DfdError

DFDC_CLIP = "dfdc/dfdc_train_part_0/brtujopkby.mp4"  # 1080x1920 portrait (no rotation flag), keyframes 0, 250
FFPP_CLIP = "ffpp/original_sequences/youtube/c40/videos/183.mp4"  # 1280x720 yuv444p, B-frames, 390 frames


def frame_pattern(count, width, height):
    """Frames that differ everywhere from one to the next (moving gradients and a moving white square)."""
    rows, columns = np.mgrid[0:height, 0:width]
    for index in range(count):
        frame = np.stack([(columns * 4 + index * 9) % 256, (rows * 4 + index * 5) % 256,
                          ((rows + columns) * 2 + index * 13) % 256], axis=-1).astype(np.uint8)
        top, left = (index * 3) % height, (index * 5) % width
        frame[top:top + 6, left:left + 6] = 255
        yield frame


def encode_clip(path, pts, width=64, height=48, codec="libx264", container_format="mp4", pix_fmt="yuv420p",
                options=None, rotation=None, frames=None):
    """Encode a small clip with the given frame pts (time base 1/25); returns the path as a string."""
    time_base = Fraction(1, 25)
    frames = frames if frames is not None else frame_pattern(len(pts), width, height)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=25, options=options or {})
        stream.width, stream.height, stream.pix_fmt, stream.time_base = width, height, pix_fmt, time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for frame_pts, rgb in zip(pts, frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = frame_pts, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return str(path)


def assert_same_as_sequential(path, indices, expect_skipping=False, rotation=0):
    """pyav == video.read_frames (turned by ``rotation``) == the sequential backend, without falling back."""
    decoder = PyAVDecoder()
    frames = decoder.read(path, indices)
    reference = np.rot90(video.read_frames(path, indices), k=rotation // 90, axes=(1, 2))
    assert frames.dtype == np.uint8 and frames.shape == reference.shape
    assert np.array_equal(frames, reference)
    assert np.array_equal(SequentialDecoder().read(path, indices), reference)
    assert decoder.stats["sequential_fallbacks"] == 0  # the skipping path itself gave these pixels
    if expect_skipping:
        assert decoder.stats["jumps"] >= 1
        assert decoder.stats["packets_decoded"] < video.probe(path)["frames"]
    return frames


@pytest.fixture(scope="session")
def synth_clips(tmp_path_factory):
    """A synth H.264 (mp4, B-frames, keyframe every 12) and a VP9 (webm) clip of 60 frames each."""
    root = tmp_path_factory.mktemp("synth")
    clips = {}
    for codec, extension in (("h264", "mp4"), ("vp9", "webm")):
        synthesize(root / codec, count=2, frames=60, width=96, height=64, fps=12, codec=codec, seed=3, gop=12,
                   progress=False)
        clips[codec] = str(root / codec / "fake" / "p0000" / f"c0.{extension}")
    return clips


# ---------------------------------------------------------------------------------------------------
# Exactness on real and synthetic clips


def test_dfdc_portrait_around_the_keyframe(fixtures):
    path = str(fixtures / DFDC_CLIP)
    frames = assert_same_as_sequential(path, [0, 1, 249, 250, 299])
    assert frames.shape == (5, 1920, 1080, 3)  # stored portrait without a flag: stays portrait


def test_ffpp_uniform_sample_and_gop_border(fixtures):
    path = str(fixtures / FFPP_CLIP)
    indices, _ = sample_indices(390, SamplerConfig(mode="uniform", num_frames=16))
    assert_same_as_sequential(path, list(indices) + [249, 250, 251, 389])


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_synth_clips_skip_gops(synth_clips, codec):
    path = synth_clips[codec]
    assert_same_as_sequential(path, [2, 30, 31, 59], expect_skipping=True)
    assert_same_as_sequential(path, list(range(0, 60, 7)))
    assert_same_as_sequential(path, [11, 12, 13, 23, 24])  # the last frame of a GOP and the next keyframe


def test_unsorted_and_duplicate_indices_come_back_in_order(synth_clips):
    path = synth_clips["h264"]
    indices = [47, 3, 47, 0, 25, 3, 59]
    frames = assert_same_as_sequential(path, indices, expect_skipping=True)
    one_by_one = np.stack([video.read_frames(path, [index])[0] for index in indices])
    assert np.array_equal(frames, one_by_one)


def test_bytes_source_equals_path_source(synth_clips):
    path = synth_clips["vp9"]
    with open(path, "rb") as handle:
        data = handle.read()
    decoder = PyAVDecoder()
    assert np.array_equal(decoder.read(data, [5, 40], name="clip.webm"), decoder.read(path, [5, 40]))


@pytest.mark.parametrize("container_format, extension", [("mp4", "mp4"), ("matroska", "mkv"), ("mpegts", "ts")])
def test_open_gop_b_frames(tmp_path, container_format, extension):
    # Open GOPs: B-frames after a keyframe in decode order but shown before it reference the previous GOP.
    path = encode_clip(tmp_path / f"open.{extension}", list(range(60)), container_format=container_format,
                       options={"g": "10", "bf": "3", "x264-params": "open-gop=1:scenecut=0"})
    assert_same_as_sequential(path, [12, 25, 29, 30, 41, 59], expect_skipping=True)
    assert_same_as_sequential(path, [8, 9, 10, 19, 20])


def test_first_pts_not_zero_and_vfr(tmp_path):
    offset = encode_clip(tmp_path / "offset.mp4", [100 + index for index in range(40)], options={"g": "8"})
    assert video.probe(offset)["frames"] == 40
    with av.open(offset) as container:
        first_pts = next(packet.pts for packet in container.demux(video=0) if packet.size)
    assert first_pts > 0
    assert_same_as_sequential(offset, [39, 0, 9, 17, 33, 33], expect_skipping=True)
    # Variable frame rate: gaps of 1-3 ticks; frame i is the i-th pts, never time x fps.
    gaps = [1, 2, 1, 3, 1, 1, 2] * 6
    vfr_pts = np.cumsum([0] + gaps)[:40].tolist()
    for container_format, extension in (("mp4", "mp4"), ("matroska", "mkv")):
        path = encode_clip(tmp_path / f"vfr.{extension}", vfr_pts, container_format=container_format,
                           options={"g": "8", "bf": "2"})
        assert_same_as_sequential(path, [39, 0, 9, 17, 25, 33], expect_skipping=True)


def test_avi_with_b_frames(tmp_path):
    # AVI indexes by dts: a container seek by pts lands a GOP late there; packet-level jumps do not.
    path = encode_clip(tmp_path / "clip.avi", list(range(40)), codec="mpeg4", container_format="avi",
                       options={"g": "6", "bf": "2"})
    assert_same_as_sequential(path, [39, 0, 5, 13, 20, 21], expect_skipping=True)


def test_packets_without_pts_fall_back_to_sequential(tmp_path):
    path = encode_clip(tmp_path / "raw.h264", list(range(30)), container_format="h264", pix_fmt="yuv444p",
                       options={"g": "6"})
    with av.open(path) as container:
        assert all(packet.pts is None for packet in container.demux(video=0) if packet.size)
    decoder = PyAVDecoder()
    indices = [29, 0, 13, 13]
    assert np.array_equal(decoder.read(path, indices), video.read_frames(path, indices))
    assert decoder.stats["sequential_fallbacks"] == 1


def test_odd_width_and_height(tmp_path):
    # H.264 4:2:0 needs even sizes; VP9 4:2:0 and H.264 4:4:4 do not.
    vp9 = encode_clip(tmp_path / "odd.webm", list(range(30)), width=33, height=21, codec="libvpx-vp9",
                      container_format="webm", options={"g": "8"})
    h264 = encode_clip(tmp_path / "odd.mp4", list(range(30)), width=853, height=47, pix_fmt="yuv444p",
                       options={"g": "8"})
    assert assert_same_as_sequential(vp9, [29, 0, 9, 17], expect_skipping=True).shape == (4, 21, 33, 3)
    assert assert_same_as_sequential(h264, [29, 0, 9, 17], expect_skipping=True).shape == (4, 47, 853, 3)


# ---------------------------------------------------------------------------------------------------
# Rotation


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_video_comes_out_upright(tmp_path, rotation):
    # Stored landscape 64x32 with a red block in the top-left corner of every stored frame.
    stored = []
    for frame in frame_pattern(20, 64, 32):
        frame = frame.copy()
        frame[:8, :8] = (255, 0, 0)
        stored.append(frame)
    path = encode_clip(tmp_path / "rotated.mp4", list(range(20)), width=64, height=32, rotation=rotation,
                       options={"g": "6"}, frames=stored)
    assert video.probe(path)["rotation"] % 360 == rotation % 360  # 180 reads back as -180
    frames = assert_same_as_sequential(path, [0, 7, 19], rotation=rotation)
    # The display rotation turns the picture counter-clockwise by `rotation` degrees (ffmpeg's autorotate).
    expected_shape = (3, 32, 64, 3) if rotation == 180 else (3, 64, 32, 3)
    assert frames.shape == expected_shape
    corner = {90: (slice(-8, None), slice(0, 8)),  # top-left turns to bottom-left
              -90: (slice(0, 8), slice(-8, None)),  # top-left turns to top-right
              180: (slice(-8, None), slice(-8, None))}[rotation]  # top-left turns to bottom-right
    block = frames[0][corner].astype(int)
    assert block[..., 0].min() > 200 and block[..., 1].max() < 60 and block[..., 2].max() < 60


# ---------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("backend", ["pyav", "sequential"])
def test_index_past_the_end_is_truncated(synth_clips, backend):
    with pytest.raises(BadVideo) as caught:
        build_decoder(backend).read(synth_clips["h264"], [0, 60])
    assert caught.value.reason == "truncated" and "60 frames" in caught.value.detail


@pytest.mark.parametrize("backend", ["pyav", "sequential"])
def test_bad_files_raise_bad_video(tmp_path, fixtures, backend):
    decoder = build_decoder(backend)
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    data = (fixtures / FFPP_CLIP).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    expected = {text: "undecodable", empty: "zero-length", cut: "truncated", tmp_path / "missing.mp4": "unreadable"}
    for path, reason in expected.items():
        with pytest.raises(BadVideo) as caught:
            decoder.read(str(path), [0])
        assert caught.value.reason == reason, caught.value


def test_cut_webm_keeps_its_first_frames(synth_clips, tmp_path):
    data = Path(synth_clips["vp9"]).read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) // 2])
    assert np.array_equal(PyAVDecoder().read(str(cut), [0, 5]), video.read_frames(synth_clips["vp9"], [0, 5]))
    with pytest.raises(BadVideo) as caught:
        PyAVDecoder().read(str(cut), [59])
    assert caught.value.reason == "truncated"


def test_still_image_is_a_one_frame_clip(tmp_path):
    from PIL import Image

    image = next(frame_pattern(1, 40, 30))
    path = tmp_path / "face.png"
    Image.fromarray(image).save(path)
    assert np.array_equal(PyAVDecoder().read(str(path), [0, 0]), np.stack([image, image]))


# ---------------------------------------------------------------------------------------------------
# Registry, auto, optional backends, public read_frames


def test_registry_names_and_unknown_backend():
    assert {"pyav", "sequential", "torchcodec", "dali", "auto"} <= set(DECODERS.names())
    with pytest.raises(DfdError, match="unknown decoder 'pyv'.*did you mean pyav"):
        build_decoder("pyv")


def test_auto_is_pyav_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: auto may pick dali")
    assert isinstance(build_decoder("auto"), PyAVDecoder)


def test_torchcodec_backend(synth_clips):
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # not installed, or its FFmpeg libraries are missing
        with pytest.raises(DfdError) as caught:
            build_decoder("torchcodec")
        message = str(caught.value)
        assert "torchcodec" in message and "FFmpeg" in message and "\n" not in message
        return
    frames = build_decoder("torchcodec").read(synth_clips["h264"], [40, 3])
    reference = video.read_frames(synth_clips["h264"], [40, 3])
    assert frames.shape == reference.shape and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - reference.astype(int)).mean() < 3  # its own colour conversion


def test_public_read_frames_returns_a_uint8_tensor(synth_clips):
    path = synth_clips["h264"]
    frames = read_frames(path, [5, 50])
    assert isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8 and frames.shape == (2, 64, 96, 3)
    assert torch.equal(frames, read_frames(path, [5, 50], backend="sequential"))
    assert np.array_equal(frames.numpy(), video.read_frames(path, [5, 50]))
    with pytest.raises(DfdError):
        read_frames(path, [0], backend="nope")


def test_importing_the_decoders_does_not_import_torch():
    code = "import sys, dfdtrain.data, dfdtrain.data.decode.decoders; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
