"""The frame sampler: (video length, SamplerConfig, rng) -> frame indices + a padding mask.

One sampler feeds every decoder backend, the DALI pipeline and the face detector at shard time. Modes:
  uniform  N frames spread over the whole video (the reference notebooks used 16/20/32/64);
  clip     T consecutive frames ``stride`` apart, starting at a random (train) or centred (eval) offset;
  every    every k-th frame from the start (or a random phase in training), at most N of them.
Training (``rng`` given) jitters positions; evaluation (``rng=None``) is deterministic.
A video shorter than needed gives fewer indices; ``mask`` (length N) marks the real frames, so a clip can
be padded to N frames and a masked head ignores the padding.
"""

import numpy as np

from dfdtrain.config import SamplerConfig  # the sampler's settings: one definition, in the config tree

__all__ = ["SamplerConfig", "sample_indices", "uniform_indices"]


def sample_indices(frame_count, config, rng=None):
    """Return (indices int64 [n], mask bool [N]) with n <= N real, sorted, in-range frame indices.

    ``rng``: a numpy Generator for training (random offset / jitter) or None for deterministic evaluation.
    """
    frame_count = int(frame_count)
    wanted = config.num_frames
    if frame_count <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(wanted, dtype=bool)
    if config.mode == "uniform":
        indices = _uniform(frame_count, wanted, rng)
    elif config.mode == "clip":
        indices = _strided(frame_count, wanted, config.stride, rng)
    else:
        indices = _strided(frame_count, wanted, config.every, rng, from_start=True)
    mask = np.zeros(wanted, dtype=bool)
    mask[: len(indices)] = True
    return indices.astype(np.int64), mask


def _uniform(frame_count, wanted, rng):
    if frame_count <= wanted:  # short video: every frame once, the rest is padding
        return np.arange(frame_count)
    if rng is None:  # the centre of each of N equal segments (segments longer than 1 frame: distinct)
        positions = (np.arange(wanted) + 0.5) * frame_count / wanted
        return np.minimum(np.floor(positions).astype(np.int64), frame_count - 1)
    # training: a random frame inside each of N non-empty integer segments: covers the video, never repeats
    bounds = np.floor(np.linspace(0, frame_count, wanted + 1)).astype(np.int64)
    return rng.integers(bounds[:-1], bounds[1:])


def _strided(frame_count, wanted, step, rng, from_start=False):
    span = (wanted - 1) * step + 1
    if span >= frame_count:  # not enough frames: as many as fit from the start
        return np.arange(0, frame_count, step)[:wanted]
    slack = frame_count - span
    if rng is not None:
        start = int(rng.integers(0, min(slack, step - 1) + 1)) if from_start else int(rng.integers(0, slack + 1))
    else:
        start = 0 if from_start else slack // 2
    return start + np.arange(wanted) * step


def uniform_indices(frame_count, count):
    """``count`` frame indices spread evenly over a video (the centre of each equal slice), as a list.

    The deterministic uniform sampler; a video shorter than ``count`` gives each of its frames once.
    """
    indices, _ = sample_indices(frame_count, SamplerConfig("uniform", count), None)
    return indices.tolist()
