"""Face crops (interpolated boxes, margin, isotropic resize + pad) and clip-consistent augmentation."""

import numpy as np
import pytest
import torch

from dfdtrain.config import AugmentConfig, ClipSpec
from dfdtrain.data.loading.augment import augment_clips, ela
from dfdtrain.data.loading.clips import model_input
from dfdtrain.data.faces.crops import boxes_for_frames, crop_and_resize, crop_regions, square_regions
from dfdtrain.core.errors import DfdError


def test_boxes_are_interpolated_between_sampled_frames_and_held_at_the_ends():
    faces = {"frames": [10, 20, 30], "boxes": [[[0, 0, 10, 10, 0.99]], [], [[20, 40, 30, 50, 0.98], [0, 0, 5, 5, 0.9]]]}
    boxes = boxes_for_frames(faces, [0, 10, 20, 30, 40])
    assert boxes.tolist() == [[0, 0, 10, 10], [0, 0, 10, 10], [10, 20, 20, 30], [20, 40, 30, 50], [20, 40, 30, 50]]
    assert boxes_for_frames({"frames": [1], "boxes": [[]]}, [0, 1]) is None
    assert boxes_for_frames(None, [0]) is None


def test_margin_makes_a_square_around_the_box_centre():
    region = square_regions([[100, 100, 160, 190]], margin=1 / 3)[0]
    assert np.allclose(region, [130 - 75, 145 - 75, 130 + 75, 145 + 75])  # side 90 * (1 + 2/3) = 150


def test_centre_square_without_faces_and_full_frame_mode():
    regions, from_faces = crop_regions({}, [0, 5], width=1080, height=1920, mode="face")
    assert not from_faces and regions[0].tolist() == [0, 420, 1080, 1500]
    full, _ = crop_regions({}, [0], width=640, height=360, mode="full")
    assert full[0].tolist() == [0, 0, 640, 360]


def test_crop_lands_on_the_face_and_pads_outside_the_frame():
    frames = torch.zeros((2, 100, 200, 3), dtype=torch.uint8)
    frames[:, 40:60, 150:170] = torch.tensor([255, 0, 0], dtype=torch.uint8)  # the "face"
    regions = square_regions([[150, 40, 170, 60], [150, 40, 170, 60]], margin=0.0)
    crops = crop_and_resize(frames, regions, 32)
    assert crops.shape == (2, 32, 32, 3) and (crops[:, 4:28, 4:28, 0] > 200).all()
    # a region hanging over the right edge: the outside part is zero padding
    edge = crop_and_resize(frames, [[180, 30, 220, 70]], 40)
    assert edge[0, :, 25:].max() == 0 and edge[0, :, :15].float().mean() == 0  # frame content there is black too
    # full-frame mode keeps the aspect ratio: a 200x100 frame becomes 64x32 content padded to 64x64
    full = crop_and_resize(torch.full((1, 100, 200, 3), 255, dtype=torch.uint8), [[0, 0, 200, 100]], 64)
    assert full[0, :16].max() == 0 and full[0, 16:48].min() == 255 and full[0, 48:].max() == 0


def test_crop_on_synth_ground_truth_boxes_contains_the_face(tmp_path):
    from dfdtrain.demo.synth import synthesize
    from dfdtrain.data.decode.video import read_frames
    import json

    synthesize(tmp_path, count=2, frames=8, width=128, height=96, seed=3, progress=False)
    info = json.loads((tmp_path / "synth.json").read_text())
    path, entry = next(iter(info["files"].items()))
    boxes = entry["boxes"]
    faces = {"frames": list(range(len(boxes))), "boxes": [[list(box) + [1.0]] for box in boxes]}
    frames = torch.from_numpy(read_frames(tmp_path / path, [0, 4, 7]))
    regions, from_faces = crop_regions({"faces": faces}, [0, 4, 7], 128, 96, "face", margin=0.1)
    crops = crop_and_resize(frames, regions, 64).float()
    centre, corner = crops[:, 24:40, 24:40].mean(dim=(0, 1, 2)), crops[:, :6, :6].mean(dim=(0, 1, 2))
    assert from_faces and (centre - corner).abs().sum() > 20  # face colours differ from the border


def make_clip_batch(batch=3, frames=4, size=32):
    gradient = torch.linspace(0, 255, size).round().byte()
    clip = gradient.view(1, 1, size, 1).expand(frames, size, size, 3).clone()  # left dark, right bright
    return clip.unsqueeze(0).repeat(batch, 1, 1, 1, 1)


def test_augmentation_is_the_same_for_every_frame_of_a_clip():
    config = AugmentConfig(jpeg=1.0, blur=1.0, noise=0.0)
    out = augment_clips(make_clip_batch(), config, np.random.default_rng(0))
    assert out.shape == (3, 4, 3, 32, 32) and out.dtype == torch.float32
    assert torch.allclose(out[:, :1].expand_as(out), out, atol=1e-6)  # identical frames stay identical
    assert not torch.allclose(out[0], out[1])  # but clips differ


def test_flip_mirrors_and_noise_stays_clip_bounded():
    flipped = augment_clips(make_clip_batch(1), AugmentConfig(hflip=1.0, rotate=0, zoom=(1, 1), translate=0,
                                                                brightness=0, contrast=0, blur=0, noise=0),
                            np.random.default_rng(0))
    row = flipped[0, 0, 0, 0]
    assert row[0] > 0.9 and row[-1] < 0.1
    noisy = augment_clips(make_clip_batch(1), AugmentConfig(noise=1.0), np.random.default_rng(1))
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_normalisation_comes_from_the_backbones_timm_config():
    from dfdtrain.models.backbones import build_backbone

    inception = ClipSpec().resolve(build_backbone("inception_v3")[1].data_config)
    assert inception.mean == (0.5, 0.5, 0.5) and inception.image_size == 299
    resnet = ClipSpec(image_size=64).resolve(build_backbone("resnet18")[1].data_config)
    assert resnet.mean == pytest.approx((0.485, 0.456, 0.406)) and resnet.std == pytest.approx((0.229, 0.224, 0.225))
    assert resnet.image_size == 64  # the config's size wins over the backbone's
    batch = torch.full((1, 2, 8, 8, 3), 128, dtype=torch.uint8)
    normalised = model_input(batch, ClipSpec(image_size=8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    assert normalised.shape == (1, 2, 3, 8, 8) and normalised.abs().max() < 0.01
    with pytest.raises(DfdError, match="resolve it first"):
        model_input(batch, ClipSpec())


def test_ela_highlights_detail_not_flat_areas():
    flat = torch.full((1, 1, 32, 32, 3), 120, dtype=torch.uint8)
    textured = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 1, 32, 32, 3), dtype=np.uint8))
    assert ela(flat).mean() < 0.01 and ela(textured).mean() > 0.2
    spec = ClipSpec(image_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_transform="ela")
    assert model_input(textured, spec).shape == (1, 1, 3, 32, 32)
