"""The frame sampler: counts, order, range, padding mask, determinism in evaluation, jitter in training."""

import numpy as np
import pytest

from dfdtrain.data.decode.sampler import SamplerConfig, sample_indices


@pytest.mark.parametrize("mode", ["uniform", "clip", "every"])
@pytest.mark.parametrize("frame_count", [1, 5, 16, 17, 300, 1001])
def test_indices_are_sorted_unique_in_range_and_masked(mode, frame_count):
    config = SamplerConfig(mode=mode, num_frames=16, stride=3, every=4)
    for rng in (None, np.random.default_rng(0)):
        indices, mask = sample_indices(frame_count, config, rng)
        assert mask.shape == (16,) and mask.dtype == bool
        assert mask.sum() == len(indices) and mask[: len(indices)].all()
        assert len(indices) >= 1 and np.all(np.diff(indices) > 0)
        assert indices.min() >= 0 and indices.max() < frame_count


def test_uniform_covers_the_video_and_pads_short_ones():
    indices, mask = sample_indices(300, SamplerConfig("uniform", 16), None)
    assert len(indices) == 16 and indices[0] < 300 / 16 and indices[-1] > 300 - 300 / 16
    short, short_mask = sample_indices(10, SamplerConfig("uniform", 16), None)
    assert short.tolist() == list(range(10)) and short_mask.tolist() == [True] * 10 + [False] * 6


def test_clip_and_every_modes_step_correctly():
    clip, _ = sample_indices(100, SamplerConfig("clip", 8, stride=2), None)
    assert np.all(np.diff(clip) == 2) and len(clip) == 8
    assert clip[0] == (100 - 15) // 2  # centred in evaluation
    every, _ = sample_indices(100, SamplerConfig("every", 5, every=10), None)
    assert every.tolist() == [0, 10, 20, 30, 40]


def test_evaluation_is_deterministic_and_training_jitters():
    config = SamplerConfig("uniform", 16)
    assert np.array_equal(sample_indices(300, config, None)[0], sample_indices(300, config, None)[0])
    draws = {tuple(sample_indices(300, config, np.random.default_rng(seed))[0]) for seed in range(10)}
    assert len(draws) > 5
    clip_starts = {sample_indices(300, SamplerConfig("clip", 8), np.random.default_rng(seed))[0][0] for seed in range(20)}
    assert len(clip_starts) > 5


def test_empty_video_and_bad_config():
    indices, mask = sample_indices(0, SamplerConfig(), None)
    assert len(indices) == 0 and not mask.any()
    with pytest.raises(ValueError):
        SamplerConfig(mode="random")
    with pytest.raises(ValueError):
        SamplerConfig(num_frames=0)
