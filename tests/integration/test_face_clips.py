"""Face clips: a real DFDC video stored as its face track at the default settings, encoder settings, no-face policy."""

import io

import av
import numpy as np
import pytest

from dfdtrain.data.decode.decoders import PyAVDecoder, SequentialDecoder, build_decoder
from dfdtrain.data.faces.clip_encoding import ClipEncoder, check_clip, crop_window, member_extension
from dfdtrain.data.faces.clip_options import DEFAULT_CRF, FaceClipOptions
from dfdtrain.data.faces.store import make_face_clips
from dfdtrain.data.shards.samples import prepare_sample
from dfdtrain.data.faces.tracks import TrackOptions
from dfdtrain.data.decode.video import probe
from support import no_face_clip

DFDC_CLIP = "dfdc/dfdc_train_part_0/brtujopkby.mp4"


def packet_keyframes(data):
    """(keyframe flags, pts) of the video packets in decode order."""
    with av.open(io.BytesIO(data)) as container:
        packets = [packet for packet in container.demux(video=0) if packet.size]
    return [packet.is_keyframe for packet in packets], [packet.pts for packet in packets]


def textured_frames(count, size, seed=0):
    """Frames with detail and motion (a blurred noise field sliding right), uint8 RGB [count, size, size, 3]."""
    rng = np.random.default_rng(seed)
    field = rng.integers(0, 256, (size, size * 2, 3)).astype(float)
    field = (field + np.roll(field, 1, 0) + np.roll(field, 1, 1) + np.roll(field, (1, 1), (0, 1))) / 4
    return np.stack([field[:, step:step + size] for step in range(count)]).round().astype(np.uint8)


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("facenet_pytorch")
    from dfdtrain.data.faces.detect import build_face_detector

    return build_face_detector("mtcnn")


def test_a_real_dfdc_video_round_trips_at_the_default_settings(fixtures, detector):
    path = fixtures / DFDC_CLIP
    data = path.read_bytes()
    info = probe(data)
    options = FaceClipOptions(tracks=TrackOptions(detect_every=20))  # default clip settings, fewer detections
    heard = []  # progress within the video: each source frame as each pass is done with it
    members, fields = make_face_clips(data, str(path), info, detector, options,
                                      progress=lambda stage, frames: heard.append((stage, frames)))
    assert heard == [("scan", 1)] * 300 + [("encode", 1)] * 300
    assert [extension for extension, _ in members] == ["mp4"] and not fields["no_face"]
    clip = members[0][1]
    (track,) = fields["tracks"]
    # the recorded mapping: one source frame and one window per clip frame, and the clip has exactly that many
    assert track["frames"] == fields["frames"] == len(track["source_frames"]) == len(track["windows"]) == 300
    # no upscaling: the face window in this 1080x1920 video is ~240 px, so the clip is that size, not the cap (256)
    sides = [x2 - x1 for x1, _, x2, _ in track["windows"]]
    assert track["size"] == int(np.median(sides)) // 2 * 2 and 200 < track["size"] < 300
    assert probe(clip)["frames"] == 300 and (fields["width"], fields["height"], fields["codec"]) == (
        track["size"], track["size"], "h264")
    # windows as cut: whole, even pixels (4:2:0 chroma cut where it lies), square
    assert all(value == int(value) and value % 2 == 0 for window in track["windows"] for value in window)
    assert all(x2 - x1 == y2 - y1 for x1, y1, x2, y2 in track["windows"])
    assert fields["source"]["bytes"] == len(data) and fields["bytes"] == len(clip) < len(data) / 4
    # short closed GOPs without B-frames: a keyframe every 4 frames, decode order = display order
    keyframes, pts = packet_keyframes(clip)
    assert [position for position, key in enumerate(keyframes) if key] == list(range(0, 300, 4))
    assert pts == sorted(pts)
    assert fields["encode"]["crf"] == DEFAULT_CRF["h264"] and fields["encode"]["gop"] == 4
    assert fields["encode"]["pix_fmt"] == "yuv420p" and fields["encode"]["max_size"] == 256
    # fidelity: recorded, within the goal, and what an independent look at three frames finds
    assert track["fidelity"]["mean_abs_error"] <= 2.0 and track["fidelity"]["psnr_db"] >= 38
    positions = [7, 150, 299]
    decoded = build_decoder("pyav").read(clip, positions, name="clip.mp4")
    sources = build_decoder("pyav").read(data, [track["source_frames"][p] for p in positions])
    crops = np.stack([crop_window(rgb, track["windows"][p], track["size"]) for rgb, p in zip(sources, positions)])
    error = np.abs(decoded.astype(float) - crops.astype(float)).mean()
    assert error <= 2.0 and abs(error - track["fidelity"]["mean_abs_error"]) < 0.5


def test_encoder_settings_all_intra_lossless_and_vp9():
    frames = textured_frames(12, 64)
    intra = FaceClipOptions(size=64, gop=1, crf=0, pix_fmt="yuv444p")
    encoder = ClipEncoder(intra, fps=25)
    for rgb in frames:
        encoder.add(rgb)
    clip = encoder.finish()
    assert all(packet_keyframes(clip)[0]) and probe(clip)["frames"] == 12
    lossless = check_clip(clip, "x.mp4", 12, dict(enumerate(frames)))
    assert lossless["mean_abs_error"] < 0.6 and lossless["psnr_db"] > 48  # only RGB <-> YUV rounding is left

    lossy = ClipEncoder(FaceClipOptions(size=64, crf=40), fps=25)
    for rgb in frames:
        lossy.add(rgb)
    worse = check_clip(lossy.finish(), "x.mp4", 12, dict(enumerate(frames)))
    assert worse["mean_abs_error"] > 2 * lossless["mean_abs_error"]

    vp9 = FaceClipOptions(size=64, codec="vp9")
    assert member_extension(vp9, 0) == "webm" and member_extension(vp9, 2) == "track2.webm"
    encoder = ClipEncoder(vp9, fps=30)
    for rgb in frames:
        encoder.add(rgb)
    clip = encoder.finish()
    assert probe(clip, name="x.webm")["codec"] == "vp9" and probe(clip, name="x.webm")["frames"] == 12
    with pytest.raises(ValueError, match="crf"):
        FaceClipOptions(crf=60)


def test_pyav_reads_exactly_the_asked_frames_of_a_short_gop_clip():
    encoder = ClipEncoder(FaceClipOptions(size=64, gop=4), fps=25)
    for rgb in textured_frames(40, 64, seed=3):
        encoder.add(rgb)
    clip = encoder.finish()
    indices = [39, 0, 5, 5, 17, 18, 33]
    pyav = PyAVDecoder()
    assert np.array_equal(pyav.read(clip, indices, name="x.mp4"), SequentialDecoder().read(clip, indices, name="x.mp4"))
    assert pyav.stats["sequential_fallbacks"] == 0 and pyav.stats["packets_decoded"] < 40


def test_no_face_video_is_kept_as_a_centre_crop_or_skipped(tmp_path):
    pytest.importorskip("facenet_pytorch")
    no_face_clip(tmp_path / "plain.mp4")
    row = {"key": "plain", "path": "plain.mp4", "root": str(tmp_path), "label": 0, "dataset": "folder",
           "group": "plain", "split": "train"}
    options = FaceClipOptions(size=32, tracks=TrackOptions(detect_every=8))
    kept = prepare_sample(row, "mtcnn", 16, options)
    meta = kept["meta"]
    assert meta["no_face"] and meta["store"] == "faces" and meta["frames"] == 40
    assert meta["tracks"][0]["windows"][0] == [16.0, 0.0, 144.0, 128.0]  # the centre square of 160x128
    assert [extension for extension, _ in kept["members"]] == ["mp4"]
    skipped = prepare_sample(row, "mtcnn", 16, FaceClipOptions(size=32, no_face="skip",
                                                               tracks=TrackOptions(detect_every=8)))
    assert skipped["skip"]["reason"] == "no-face" and skipped["skip"]["key"] == "plain"
