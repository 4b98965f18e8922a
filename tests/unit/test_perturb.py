"""The frame perturbations (dfdtrain.data.perturb.frames): level 0 is the identity, strength grows with the level
on a real face clip, outputs are a function of (video, type, level), OpenCV's blur is reproduced, bad input is
one line."""

import av
import numpy as np
import pytest
import torch
from PIL import Image

from dfdtrain.core.errors import DfdError
from dfdtrain.data.perturb import (LEVEL_PARAMETERS, LEVELS, PERTURBATIONS, TYPES, parse_perturbation,
                                   perturbation_rng)
from dfdtrain.data.perturb.frames import gaussian_taps_q8

FRAME_TYPES = [name for name in TYPES if name != "h264"]


def psnr(a, b):
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def face_clip(fixtures):
    """16 real frames of FF++ 183 (every 8th), the face's 320 px square resized to 224: uint8 [16,224,224,3]."""
    frames = []
    with av.open(str(fixtures / "ffpp/original_sequences/youtube/c40/videos/183.mp4")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 8 == 0:
                face = Image.fromarray(frame.to_ndarray(format="rgb24")[130:450, 530:850])
                frames.append(np.asarray(face.resize((224, 224), Image.BILINEAR)))
            if len(frames) == 16:
                break
    return np.stack(frames)


def run(name, clip, level, key="183"):
    return PERTURBATIONS.get(name)(clip, level, perturbation_rng(key, name, level))


def test_registry_names_stages_and_tables():
    assert sorted(PERTURBATIONS.names()) == sorted(TYPES) and len(TYPES) == 8
    assert {name: PERTURBATIONS.get(name).stage for name in TYPES} == {
        **{name: "frames" for name in FRAME_TYPES}, "h264": "video"}
    assert set(LEVEL_PARAMETERS) == set(TYPES) and LEVELS == (1, 2, 3, 4, 5)
    assert all(len(values) == 5 for _, values in LEVEL_PARAMETERS.values())
    assert PERTURBATIONS.get("jpeg").value(3) == 4 and PERTURBATIONS.get("h264").value(1) == 30
    assert PERTURBATIONS.get("jpeg").value(0) is None  # level 0: no perturbation, no parameter


@pytest.mark.parametrize("name", FRAME_TYPES)
def test_level_zero_is_the_identity(name, face_clip):
    assert run(name, face_clip, 0) is face_clip
    tensor = torch.from_numpy(face_clip.copy())
    assert run(name, tensor, 0) is tensor


@pytest.mark.parametrize("name", FRAME_TYPES)
def test_strength_grows_with_the_level(name, face_clip):
    scores = [psnr(run(name, face_clip, level), face_clip) for level in LEVELS]
    assert all(np.isfinite(scores)), scores
    assert all(a > b for a, b in zip(scores, scores[1:])), f"{name}: PSNR by level {scores}"


@pytest.mark.parametrize("name", FRAME_TYPES)
def test_types_shapes_and_determinism(name, face_clip):
    clip = face_clip[:4]
    out = run(name, clip, 3)
    assert out.dtype == np.uint8 and out.shape == clip.shape
    assert np.array_equal(out, run(name, clip, 3))  # same (video, type, level): same output
    as_torch = run(name, torch.from_numpy(clip.copy()), 3)
    assert isinstance(as_torch, torch.Tensor) and np.array_equal(as_torch.numpy(), out)
    single = run(name, clip[0], 3)
    assert single.shape == clip[0].shape
    other = run(name, clip, 3, key="253")
    if name in ("noise", "block"):  # random per video
        assert not np.array_equal(other, out)
        assert not np.array_equal(out[1] - clip[1].astype(np.int16), out[0] - clip[0].astype(np.int16))
    else:  # the same parameters for every clip
        assert np.array_equal(other, out)


def test_official_formulas(face_clip):
    clip = face_clip[:2]
    # color_contrast: img.astype(float32) * param, then astype(uint8)
    assert np.array_equal(run("contrast", clip, 3), (clip.astype(np.float32) * np.float32(0.6)).astype(np.uint8))
    # color_saturation at 0.0: grey, to one level (truncation on both sides of the luma)
    grey = run("saturation", clip, 5).astype(int)
    assert (grey.max(-1) - grey.min(-1)).max() <= 1
    # block_wise: only 8x8 blocks of 128 are written; 16 per frame at 224 px (max(1, 224 // 256) * 16)
    out = run("block", clip, 1)
    changed = np.any(out != clip, axis=-1)
    assert np.all(out[changed] == 128) and 0 < changed[0].sum() <= 16 * 64


def test_blur_is_opencv_bit_exact_kernel_and_border():
    assert gaussian_taps_q8(7, 2.0) == (18, 34, 48, 56, 48, 34, 18)  # OpenCV's fixed-point kernel for (7, 2)
    assert all(sum(gaussian_taps_q8(size, size / 6)) == 256 for size in LEVEL_PARAMETERS["blur"][1])
    rng = np.random.default_rng(1)
    for height, width, level in ((9, 8, 5), (32, 40, 2)):  # 21 taps on 8 px: reflect-101 folded again
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        size = LEVEL_PARAMETERS["blur"][1][level - 1]
        taps = np.array(gaussian_taps_q8(size, size / 6), dtype=np.int64)
        radius = size // 2
        padded = np.pad(image.astype(np.int64), ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
        rows = sum(taps[i] * padded[:, i:i + width] for i in range(size))
        total = sum(taps[i] * rows[i:i + height] for i in range(size))
        expected = ((total + 32768) >> 16).astype(np.uint8)
        assert np.array_equal(run("blur", image, level), expected)
    flat = np.full((2, 20, 30, 3), 77, dtype=np.uint8)
    assert np.array_equal(run("blur", flat, 5), flat)


def test_parse_perturbation_and_bad_input(face_clip):
    assert parse_perturbation("jpeg:3") == ("jpeg", 3) and parse_perturbation(" h264:0 ") == ("h264", 0)
    with pytest.raises(DfdError, match="unknown perturbation 'sharpen'") as error:
        parse_perturbation("sharpen:2")
    assert "saturation, contrast, block, noise, blur, jpeg, h264, resize" in str(error.value)
    for text in ("jpeg:6", "jpeg:-1", "jpeg", "jpeg:x", "blur:2.5"):
        with pytest.raises(DfdError) as error:
            parse_perturbation(text)
        assert "\n" not in str(error.value) and "0..5" in str(error.value)
    with pytest.raises(DfdError, match="level 6"):
        run("blur", face_clip, 6)
    with pytest.raises(DfdError, match="uint8"):
        run("noise", face_clip.astype(np.float32), 2)
    with pytest.raises(DfdError, match="uint8"):
        run("jpeg", face_clip[..., :2], 2)
