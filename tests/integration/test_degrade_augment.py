"""Training's codec / perturbation augmentation (data.augment.codec, perturb): ``encode_frames_h264`` on real FF++
frames (shape kept, pixels changed, weaker with a higher CRF, the same output for the same input),
``RandomDegradation``'s draws, and the training loader over real shards (every clip changed, the same clips
sampled as without it, the same frames when rebuilt; evaluation loaders never augment)."""

import pickle

import av
import numpy as np
import pytest
import torch

from dfdtrain.config import DataConfig
from dfdtrain.config.sections import AUGMENT_PERTURBATIONS, AugmentConfig
from dfdtrain.core.errors import DfdError
from dfdtrain.data.loading.degrade import RandomDegradation, training_degradation
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.data.perturb import PERTURBATIONS, TYPES
from dfdtrain.data.perturb.video import encode_frames_h264
from support import clip_spec, data_config, frames_by_key

CLIP = "ffpp/original_sequences/youtube/c40/videos/183.mp4"  # 1280x720
# main-process augmentation off: what differs between two loaders is the workers' degradation alone
QUIET = {"hflip": 0.0, "rotate": 0.0, "zoom": (1.0, 1.0), "translate": 0.0, "brightness": 0.0, "contrast": 0.0,
         "blur": 0.0, "noise": 0.0}


def psnr(a, b):
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def faces(fixtures):
    """16 frames of a real FF++ video, a 224x224 crop around the face: uint8 [16,224,224,3]."""
    with av.open(str(fixtures / CLIP)) as container:
        frames = [frame.to_ndarray(format="rgb24") for _, frame in zip(range(16), container.decode(video=0))]
    return np.ascontiguousarray(np.stack(frames)[:, 60:284, 520:744])


def test_encode_frames_h264_keeps_shape_changes_pixels_and_grows_weaker_with_the_crf(faces):
    outputs = {crf: encode_frames_h264(faces, crf) for crf in (18, 30, 45)}
    for out in outputs.values():
        assert isinstance(out, np.ndarray) and out.shape == faces.shape and out.dtype == np.uint8
        assert not np.array_equal(out, faces)
    scores = [psnr(outputs[crf], faces) for crf in (18, 30, 45)]
    assert scores[0] > scores[1] > scores[2] > 20, scores
    assert np.array_equal(encode_frames_h264(faces, 30), outputs[30])  # threads=1: the same frames every time
    smaller = encode_frames_h264(faces, 30, scale=0.5)  # down, encode, back up: coarser still
    assert smaller.shape == faces.shape and psnr(smaller, faces) < scores[1]
    odd = torch.from_numpy(np.ascontiguousarray(faces[:3, :75, :61]))  # 4:2:0 wants even sides: padded, cropped
    out = encode_frames_h264(odd, 35)
    assert isinstance(out, torch.Tensor) and out.shape == odd.shape and out.dtype == torch.uint8
    assert psnr(out.numpy(), odd.numpy()) > 20


@pytest.mark.parametrize("call, message", [
    (lambda clip: encode_frames_h264(clip, 52), "h264 CRF 52 is not an integer in 0..51"),
    (lambda clip: encode_frames_h264(clip, 30.0), "h264 CRF 30.0 is not an integer in 0..51"),
    (lambda clip: encode_frames_h264(clip.astype(np.float32), 30), "frames must be uint8 [T,H,W,3]"),
    (lambda clip: encode_frames_h264(clip, 30, scale=0), "scale 0 is not in (0, 1]"),
])
def test_encode_frames_h264_refuses_bad_input_in_one_line(call, message):
    with pytest.raises(DfdError) as caught:
        call(np.zeros((2, 16, 16, 3), np.uint8))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_config_offers_the_registry_frame_types():
    frame_types = tuple(name for name in TYPES if PERTURBATIONS.get(name).stage == "frames")
    assert AUGMENT_PERTURBATIONS == frame_types and AugmentConfig().perturb_types == list(frame_types)


def test_random_degradation_changes_every_clip_with_codec_and_none_without(faces):
    clip = torch.from_numpy(faces[:8, :96, :96].copy())
    degrade = pickle.loads(pickle.dumps(RandomDegradation(AugmentConfig(codec=1.0))))  # it travels to workers
    rng = np.random.default_rng(0)
    for _ in range(4):
        out = degrade.frames("k", clip, rng)
        assert out.shape == clip.shape and out.dtype == torch.uint8 and not torch.equal(out, clip)
    assert degrade.source("k", b"bytes", rng) == b"bytes"
    assert degrade.frames("k", clip, None) is clip  # evaluation passes no generator: untouched
    assert training_degradation(AugmentConfig()) is None  # codec 0, perturb 0: nothing built
    assert training_degradation(AugmentConfig(enabled=False, codec=1.0)) is None
    idle = RandomDegradation(AugmentConfig(codec=0.0, perturb=0.0))
    assert all(idle.frames("k", clip, rng) is clip for _ in range(4))
    # perturb: one type and level, applied as the registry's; the draws leave the worker's stream where it was
    only = RandomDegradation(AugmentConfig(perturb=1.0, perturb_types=["contrast"], perturb_levels=(5, 5)))
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    assert torch.equal(only.frames("k", clip, rng), PERTURBATIONS.get("contrast").apply(clip, 5))
    assert rng.random() == twin.random()
    # shares and ranges as configured
    mixed = RandomDegradation(AugmentConfig(codec=0.3, codec_crf=(28, 32), perturb=0.5, perturb_types=["blur", "jpeg"],
                                            perturb_levels=(2, 3)))
    draws = [mixed.choose(np.random.default_rng(seed)) for seed in range(400)]
    codecs, perturbs = [d["codec"] for d in draws if "codec" in d], [d["perturb"] for d in draws if "perturb" in d]
    assert 0.22 < len(codecs) / 400 < 0.38 and 0.42 < len(perturbs) / 400 < 0.58
    assert {crf for crf, _ in codecs} == {28, 29, 30, 31, 32} and {scale for _, scale in codecs} == {1.0}
    assert {name for name, _ in perturbs} == {"blur", "jpeg"} and {level for _, level in perturbs} == {2, 3}


def training_frames(shards, codec, workers=0, epoch=0, seed=0):
    data = data_config(batch_size=2, num_workers=workers, epoch_samples=6, augment={**QUIET, "codec": codec})
    loader = VideoLoader(str(shards / "train-*.tar"), clip_spec(4, 32), data, train=True, seed=seed)
    loader.set_epoch(epoch)
    return loader, frames_by_key(loader)


def test_training_loader_reencodes_every_clip_the_same_way_when_rebuilt(small_shards):
    loader, plain = training_frames(small_shards, 0.0)
    assert loader.degrade is None
    loader, coded = training_frames(small_shards, 1.0)
    assert isinstance(loader.degrade, RandomDegradation)
    assert coded.keys() == plain.keys() and len(coded) >= 4  # the same clips sampled: only their frames differ
    assert all(not torch.equal(coded[key], plain[key]) for key in coded)
    assert all((coded[key] - plain[key]).abs().mean() < 0.5 for key in coded)  # degraded, not replaced
    _, again = training_frames(small_shards, 1.0)
    assert all(torch.equal(again[key], coded[key]) for key in coded)
    # in a worker process: the same frames for the same seed and epoch, others for another epoch
    _, first = training_frames(small_shards, 1.0, workers=1, epoch=1)
    _, second = training_frames(small_shards, 1.0, workers=1, epoch=1)
    assert first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_evaluation_loaders_never_augment_and_dali_says_why(small_shards):
    data = data_config(batch_size=2, augment={"codec": 1.0, "perturb": 1.0})
    assert VideoLoader(str(small_shards / "val-*.tar"), clip_spec(4, 32), data).degrade is None
    with pytest.raises(DfdError, match="data.augment.codec / data.augment.perturb is not available on the DALI path"):
        VideoLoader(str(small_shards / "train-*.tar"), clip_spec(4, 32), DataConfig(decoder="dali",
                    augment={"codec": 0.5}), train=True)
