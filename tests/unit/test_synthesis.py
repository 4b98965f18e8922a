"""The blending synthesis (dfdtrain.data.loading.synthesis): SBI per frame, VB per clip, on a drawn face with a
hand-made 68-point dlib layout (pure numpy/torch: no video, no landmark model)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfdtrain.core.errors import DfdError
from dfdtrain.core.registry import UnknownName
from dfdtrain.data.faces.crops import crop_and_resize
from dfdtrain.data.loading import blend
from dfdtrain.data.loading.synthesis import (BLEND_RATIOS, SYNTHESES, VB_JITTER, draw_blend, landmarks_in_clip,
                                             synthesis_rng, synthetic_positions)

SIZE, FRAMES = 96, 4


def face_landmarks(size=SIZE, cx=None, cy=None):
    """A plausible 68-point dlib layout: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67."""
    cx, cy, r = size / 2 if cx is None else cx, size * 0.55 if cy is None else cy, size * 0.32

    def arc(n, a0, a1, rx, ry, ox=0.0, oy=0.0):
        a = np.linspace(a0, a1, n)
        return np.stack([ox + rx * np.cos(a), oy + ry * np.sin(a)], 1)

    jaw = arc(17, np.pi, 0, r, 1.15 * r)  # left ear, down round the chin, right ear
    brows = [arc(5, 1.1 * np.pi, 1.9 * np.pi, 0.3 * r, 0.12 * r, side * 0.45 * r, -0.45 * r) for side in (-1, 1)]
    bridge = np.stack([np.zeros(4), np.linspace(-0.3, 0.05, 4) * r], 1)
    nose = np.stack([np.linspace(-0.18, 0.18, 5) * r, np.array([0.15, 0.18, 0.2, 0.18, 0.15]) * r], 1)
    eye_angles = np.array([1, 1.25, 1.75, 0, 0.25, 0.75]) * np.pi
    eyes = [np.stack([side * 0.4 * r + 0.18 * r * np.cos(eye_angles), -0.28 * r + 0.07 * r * np.sin(eye_angles)], 1)
            for side in (-1, 1)]
    outer, inner = np.linspace(np.pi, -np.pi, 13)[:12], np.linspace(np.pi, -np.pi, 9)[:8]
    mouth = np.stack([0.35 * r * np.cos(outer), 0.5 * r - 0.15 * r * np.sin(outer)], 1)
    lips = np.stack([0.25 * r * np.cos(inner), 0.5 * r - 0.06 * r * np.sin(inner)], 1)
    return np.concatenate([jaw, *brows, bridge, nose, *eyes, mouth, lips]) + [cx, cy]


def face_clip(count=FRAMES, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([80 + 100 * x, 60 + 120 * y, 140 - 60 * x], -1)
    frames = np.clip(base + rng.normal(0, 12, (count, size, size, 3)), 0, 255).astype(np.uint8)
    landmarks = np.stack([face_landmarks(size, cx=size / 2 + t) for t in range(count)])
    return frames, landmarks


def dilate(mask, radius):
    """bool [T,H,W] grown by a (2r+1) square."""
    radius = int(np.ceil(radius))
    grown = F.max_pool2d(torch.from_numpy(mask).float().unsqueeze(1), 2 * radius + 1, 1, radius)
    return grown[:, 0].numpy() > 0


@pytest.mark.parametrize("method", ["sbi", "vb"])
def test_fake_differs_only_inside_the_dilated_hull(method):
    frames, landmarks = face_clip()
    for sample in range(2):
        result = SYNTHESES.get(method)(frames, landmarks, synthesis_rng(7, 0, 0, sample))
        changed = (result.frames != frames).any(-1)
        assert changed.any() and result.blended.all()
        assert not (changed & (result.mask == 0)).any()  # untouched wherever the blend weight is 0
        support = np.stack([dilate(result.hull[t:t + 1], result.reach[t])[0] for t in range(FRAMES)])
        assert not ((result.mask > 0) & ~support).any()  # and the weight is 0 beyond the hull's dilation
        assert result.hull[:, 20:80, 25:70].mean() > 0.5 and not result.hull[:, :, :8].any()  # the face, not the edge


def test_vb_uses_one_draw_and_one_mask_for_the_clip():
    frames, landmarks = face_clip()
    still = np.repeat(landmarks[:1], FRAMES, 0)  # the same face position on every frame
    result = SYNTHESES.get("vb")(frames, still, synthesis_rng(1, 2, 0, "clip"))
    assert all(draw == result.draws[0] for draw in result.draws)
    for t in range(1, FRAMES):  # the mask depends on the draw and the landmarks only: the same on every frame
        np.testing.assert_array_equal(result.mask[t], result.mask[0])
        np.testing.assert_array_equal(result.hull[t], result.hull[0])
    assert np.abs(result.jitter[:, :2]).max() <= VB_JITTER["translate"]
    assert np.abs(result.jitter[:, 2]).max() <= VB_JITTER["scale"]
    assert len({tuple(row) for row in result.jitter.tolist()}) == FRAMES  # the copy drifts from frame to frame
    moving = SYNTHESES.get("vb")(frames, landmarks, synthesis_rng(1, 2, 0, "clip"))
    assert moving.draws == result.draws and not np.array_equal(moving.hull[0], moving.hull[-1])


def test_sbi_draws_every_frame_anew():
    frames, landmarks = face_clip()
    result = SYNTHESES.get("sbi")(frames, landmarks, synthesis_rng(1, 0, 0, "clip"))
    assert len(set(result.draws)) == FRAMES and not result.jitter.any()


@pytest.mark.parametrize("method", ["sbi", "vb"])
def test_the_same_seed_tuple_remakes_the_same_fake(method):
    frames, landmarks = face_clip()
    synthesise = SYNTHESES.get(method)
    first = synthesise(frames, landmarks, synthesis_rng(3, 1, 0, "key-1"))
    again = synthesise(frames, landmarks, synthesis_rng(3, 1, 0, "key-1"))  # a resumed run
    np.testing.assert_array_equal(first.frames, again.frames)
    np.testing.assert_array_equal(first.mask, again.mask)
    for other in (synthesis_rng(3, 2, 0, "key-1"), synthesis_rng(3, 1, 1, "key-1"), synthesis_rng(3, 1, 0, "key-2")):
        assert not np.array_equal(synthesise(frames, landmarks, other).frames, first.frames)


def test_blend_ratios_and_transform_ranges_are_sbis():
    rng = synthesis_rng(0, 0, 0, "draws")
    draws = [draw_blend(rng) for _ in range(400)]
    assert {draw.blend_ratio for draw in draws} == set(BLEND_RATIOS)
    assert {draw.hull_type for draw in draws} == set(blend.HULL_TYPES)
    assert all(0.95 <= draw.scale <= 1 / 0.95 and abs(draw.translate[0]) <= 0.03 and abs(draw.translate[1]) <= 0.015
               and 192 <= min(draw.mask_size) and max(draw.mask_size) <= 256 and draw.kernel_1 % 2 == 1
               and 5 <= draw.kernel_2 <= 25 and 5 <= draw.sigma_2 <= 45 for draw in draws)
    assert 0.2 < np.mean([any(draw.rgb_shift) for draw in draws]) < 0.4  # RGBShift p 0.3
    frames, landmarks = face_clip()
    result = SYNTHESES.get("sbi")(frames, landmarks, synthesis_rng(5, 0, 0, 0))
    for t, draw in enumerate(result.draws):
        assert 0.5 * draw.blend_ratio < result.mask[t].max() <= draw.blend_ratio + 1e-6


def test_the_half_resolution_elastic_field_has_albumentations_statistics():
    """Noise on every pixel blurred by sigma 7 times alpha 50 (albumentations' field) against the field made at
    half resolution: the same std and correlation at 10 px, within a few percent over 60 fields."""
    import cv2

    rng, size, inner = np.random.default_rng(0), 160, slice(40, -40)
    full, half = [], []
    for _ in range(60):
        noise = rng.random((size, size, 2), dtype=np.float32) * 2 - 1
        full.append(cv2.GaussianBlur(noise, (0, 0), 7, borderType=cv2.BORDER_CONSTANT) * 50)
        half.append(blend.elastic_field(rng, size, size, 50, 7))
    for fields in (full, half):
        fields[:] = [field[inner, inner, 0] for field in fields]
    std_full, std_half = np.mean([f.std() for f in full]), np.mean([f.std() for f in half])
    assert abs(std_half / std_full - 1) < 0.05, (std_full, std_half)
    corr = [np.mean([np.corrcoef(f[:, :-10].ravel(), f[:, 10:].ravel())[0, 1] for f in fields])
            for fields in (full, half)]
    assert abs(corr[1] - corr[0]) < 0.03, corr
    assert half[0].dtype == np.float32

def test_frames_without_landmarks_stay_real():
    frames, landmarks = face_clip()
    given = [landmarks[0], [], np.full((68, 2), np.nan), landmarks[3]]
    for method in ("sbi", "vb"):
        result = SYNTHESES.get(method)(torch.from_numpy(frames), given, synthesis_rng(0, 0, 0, method))
        assert isinstance(result.frames, torch.Tensor) and result.missing == 2
        assert result.blended.tolist() == [True, False, False, True]
        for t in (1, 2):
            np.testing.assert_array_equal(result.frames[t].numpy(), frames[t])
            assert not result.mask[t].any() and result.draws[t] is None
    untouched = SYNTHESES.get("sbi")(frames, None, synthesis_rng(0, 0, 0, 0))
    assert untouched.missing == FRAMES and np.array_equal(untouched.frames, frames)


def test_one_frame_and_bad_input():
    frames, landmarks = face_clip(1)
    single = SYNTHESES.get("sbi")(frames[0], landmarks[0], synthesis_rng(0, 0, 0, 0))
    assert single.frames.shape == frames[0].shape and single.mask.shape == (SIZE, SIZE)
    with pytest.raises(DfdError, match="68"):
        SYNTHESES.get("sbi")(frames, landmarks[:, :60], synthesis_rng(0, 0, 0, 0))
    with pytest.raises(DfdError, match="uint8"):
        SYNTHESES.get("vb")(frames.astype(np.float32), landmarks, synthesis_rng(0, 0, 0, 0))
    with pytest.raises(UnknownName, match="sbi"):
        SYNTHESES.get("sbj")


def test_landmarks_follow_the_crop_into_the_clip():
    frame = np.zeros((1, 120, 200, 3), dtype=np.uint8)
    point = np.array([[[130.0, 47.0]]])
    frame[0, 47, 130] = 255
    region = np.array([[101.3, 20.0, 181.0, 90.6]])  # not square: padded, and not on whole pixels
    clip = crop_and_resize(torch.from_numpy(frame), region, 160)[0].numpy()[..., 0].astype(float)
    mapped = landmarks_in_clip(point, region, 160)[0, 0]
    ys, xs = np.mgrid[0:160, 0:160]
    centre = np.array([(clip * xs).sum(), (clip * ys).sum()]) / clip.sum()
    assert np.abs(centre - mapped).max() < 0.75


def test_synthetic_positions_are_a_fixed_share_of_the_batch():
    positions = synthetic_positions(8, 0.5, synthesis_rng(0, 0, 0, "batch-3"))
    assert len(positions) == 4 and len(set(positions.tolist())) == 4 and positions.max() < 8
    assert np.array_equal(positions, synthetic_positions(8, 0.5, synthesis_rng(0, 0, 0, "batch-3")))
    assert len(synthetic_positions(8, 0.0, synthesis_rng(0, 0, 0, 1))) == 0
