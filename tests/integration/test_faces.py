"""Face detection with the real MTCNN on real fixture videos (few frames: MTCNN on CPU is ~0.1 s a frame)."""

import sys

import numpy as np
import pytest
from PIL import Image

from dfdtrain.data.faces.detect import FACE_DETECTORS, auto_contrast, build_face_detector, detect_faces
from dfdtrain.data.decode.sampler import uniform_indices
from dfdtrain.data.faces.tracks import landmarks_sane
from dfdtrain.data.decode.video import probe, read_frames
from dfdtrain.core.errors import DfdError
from support import FIXTURES

FFPP_183 = FIXTURES / "ffpp/original_sequences/youtube/c40/videos/183.mp4"  # 1280x720, one face
DFDC_PORTRAIT = FIXTURES / "dfdc/dfdc_train_part_0/brtujopkby.mp4"  # 1080x1920, one person
DFDC_DIM = FIXTURES / "dfdc/train_sample_videos/abofeumbvv.mp4"  # 1920x1080, a dim room (mean level 34/255)

pytestmark = pytest.mark.skipif(not FFPP_183.exists(), reason=f"fixture videos missing under {FIXTURES}")


@pytest.fixture(scope="module")
def detector():
    return build_face_detector("mtcnn", device="cpu")


@pytest.fixture(scope="module")
def frames_183():
    return read_frames(str(FFPP_183), [0, 200])


def box_size(box):
    return max(box[2] - box[0], box[3] - box[1])


def area(box):
    return (box[2] - box[0]) * (box[3] - box[1])


def iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / (area(a) + area(b) - inter)


def check_video_faces(result, width, height, num_frames):
    assert result["detector"] == "mtcnn"
    assert result["frames"] == sorted(set(result["frames"])) and len(result["frames"]) == num_frames
    assert len(result["boxes"]) == num_frames  # frames without a face keep their (empty) place
    assert result["frames_without_face"] == sum(1 for faces in result["boxes"] if not faces)
    assert result["frames_without_face"] <= num_frames // 4
    for faces in result["boxes"]:
        assert len(faces) <= 1  # the best track's face, or none
        for face in faces:
            x1, y1, x2, y2, score = face[:5]
            assert len(face) == 15 and landmarks_sane(face)  # MTCNN's 5 landmarks, where a face has them
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert score >= 0.9
            face_fraction = (x2 - x1) * (y2 - y1) / (width * height)
            assert 0.002 < face_fraction < 0.3
        ranks = [area(face) * face[4] for face in faces]
        assert ranks == sorted(ranks, reverse=True)


def test_registry_and_options():
    assert "mtcnn" in FACE_DETECTORS
    with pytest.raises(KeyError, match="unknown face detector"):
        build_face_detector("retinafacez")


def test_missing_facenet_pytorch_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # makes the import fail like a missing package
    with pytest.raises(DfdError, match=r"pip install 'dfdtrain\[faces\]'"):
        build_face_detector("mtcnn")


def test_detection_frames_are_the_evaluation_samplers_uniform_frames():
    assert uniform_indices(100, 4) == [12, 37, 62, 87]
    assert uniform_indices(390, 1) == [195]
    assert uniform_indices(3, 10) == [0, 1, 2]  # a short video gives every frame once
    with pytest.raises(ValueError):
        uniform_indices(100, 0)


def test_ffpp_faces_are_found_and_stay_put(detector):
    info = probe(str(FFPP_183))
    result = detect_faces(str(FFPP_183), 6, detector, info["frames"])
    check_video_faces(result, info["width"], info["height"], 6)
    # One person talking to the camera: the top face moves little between sampled frames (~2 s apart).
    top_faces = [faces[0] for faces in result["boxes"] if faces]
    for previous, current in zip(top_faces, top_faces[1:]):
        centre_shift = np.hypot((previous[0] + previous[2] - current[0] - current[2]) / 2,
                                (previous[1] + previous[3] - current[1] - current[3]) / 2)
        assert centre_shift < 0.25 * box_size(previous)
        assert iou(previous, current) > 0.6


def test_dfdc_portrait_faces_use_portrait_coordinates(detector):
    info = probe(str(DFDC_PORTRAIT))
    assert (info["width"], info["height"]) == (1080, 1920)
    with open(DFDC_PORTRAIT, "rb") as handle:  # bytes work as well as paths (shards hold bytes)
        result = detect_faces(handle.read(), 3, detector, info["frames"])
    check_video_faces(result, 1080, 1920, 3)


def test_faces_in_a_dim_room_are_found_after_a_contrast_stretch(detector):
    """abofeumbvv: one person in all 300 frames of a dim room; MTCNN on the frames as decoded finds the face on
    few of them, after the per-frame level stretch on all."""
    info = probe(str(DFDC_DIM))
    frames = read_frames(str(DFDC_DIM), uniform_indices(info["frames"], 8))
    stretched = detector.detect(frames)
    plain = build_face_detector("mtcnn", auto_contrast=False).detect(frames)
    assert sum(bool(faces) for faces in stretched) == 8 and sum(bool(faces) for faces in plain) <= 4
    assert all(len(faces) == 1 and faces[0][4] > 0.95 and landmarks_sane(faces[0]) for faces in stretched)
    # the stretch maps the 0.5..99.5 percentiles to 0..255, at most 4x: a full-range frame is left about as it is
    levels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert np.abs(auto_contrast(levels).astype(int) - levels).max() <= 3
    dim = levels // 8
    assert dim.max() == 31 and auto_contrast(dim).max() == 124  # gain capped at 4


def test_noise_has_no_face(detector):
    noise = np.random.default_rng(0).integers(0, 256, size=(2, 480, 640, 3), dtype=np.uint8)
    assert detector.detect(noise) == [[], []]


def test_upscaled_face_crop_is_found_where_the_face_is(detector, frames_183):
    frame = frames_183[:1]
    (found,) = detector.detect(frame)[0]
    x1, y1, x2, y2 = found[:4]
    # A crop of about twice the face, upscaled 2x: a close-up of a different size and shape.
    left, top = int(max(0, x1 - 0.5 * (x2 - x1))), int(max(0, y1 - 0.3 * (y2 - y1)))
    right, bottom = int(min(1280, x2 + 0.5 * (x2 - x1))), int(min(720, y2 + 0.3 * (y2 - y1)))
    crop = Image.fromarray(frame[0, top:bottom, left:right])
    close_up = np.asarray(crop.resize((crop.width * 2, crop.height * 2), Image.BICUBIC))[None]
    faces = detector.detect(close_up)[0]
    assert len(faces) == 1
    expected = [(x1 - left) * 2, (y1 - top) * 2, (x2 - left) * 2, (y2 - top) * 2]
    assert np.abs(np.subtract(faces[0][:4], expected)).max() < 0.1 * box_size(expected)


def test_downscaled_detection_returns_original_coordinates(detector, frames_183):
    full_resolution = build_face_detector("mtcnn", max_side=None)
    small_boxes = detector.detect(frames_183)  # 1280x720 detected at 640x360
    full_boxes = full_resolution.detect(frames_183)
    for small_faces, full_faces in zip(small_boxes, full_boxes):
        assert len(small_faces) == len(full_faces) == 1
        small, full = small_faces[0], full_faces[0]
        assert np.abs(np.subtract(small[:4], full[:4])).max() < 0.05 * box_size(full)


def test_min_size_and_bad_input(frames_183):
    strict = build_face_detector("mtcnn", min_size=500)  # larger than the ~240x340 face
    assert strict.detect(frames_183) == [[], []]
    with pytest.raises(ValueError, match="uint8"):
        strict.detect(frames_183.astype(np.float32))
