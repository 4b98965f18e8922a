"""Frame scores -> video score: the ``AGGREGATIONS`` rules (``mean``, ``max``, ``median``, ``majority``,
``confident``), ``aggregate`` for one video, ``aggregate_many`` for a list of videos, and ``REPORTED_RULES``, the
rules evaluation reports, in the order of its tables, files and plots."""

import numpy as np

from dfdtrain.core.registry import Registry
from dfdtrain.metrics.binary import is_fake
from dfdtrain.metrics.inputs import as_scores

AGGREGATIONS = Registry("aggregation rule")
"""Rules turning the scores of one video's frames (a non-empty float array) into one video score (a float):
``rule(scores, threshold)``, where ``threshold`` is the verdict's (the frames' scores on its scale)."""


# the `confident` rule's constants, as in the DFDC winner's code (selimsef, kernel_utils.confident_strategy)
CONFIDENT_FAKE_SCORE = 0.8  # a frame is a confident fake above this
CONFIDENT_MIN_FAKE_FRAMES = 11  # ... and the video needs more than this many of them
CONFIDENT_FAKE_DIVISOR = 2.5  # ... and more than n / 2.5 of them (40% of the frames)
CONFIDENT_REAL_SCORE = 0.2  # a frame is a confident real below this
CONFIDENT_REAL_FRACTION = 0.9  # ... and the video needs more than 90% of them


@AGGREGATIONS.register("mean")
def mean_rule(scores, threshold=0.5):
    return float(np.mean(scores))


@AGGREGATIONS.register("max")
def max_rule(scores, threshold=0.5):
    return float(np.max(scores))


@AGGREGATIONS.register("median")
def median_rule(scores, threshold=0.5):
    return float(np.median(scores))


@AGGREGATIONS.register("majority")
def majority_rule(scores, threshold=0.5):
    """The fraction of frames voting FAKE, each frame judged by the verdict's own rule (``is_fake`` at the
    verdict's ``threshold``, so a frame scoring what the head calls REAL votes REAL): a score in [0, 1] that ranks
    videos (so AUC works). Compared with the same threshold it calls a video FAKE when at least that share of its
    frames vote FAKE (at 0.5: at least half)."""
    return float(np.mean(is_fake(scores, threshold)))


@AGGREGATIONS.register("confident")
def confident_rule(scores, threshold=0.5):
    """The DFDC winner's rule: trust the confident frames when enough of them agree, else the mean.

    With n frames: if more than n/2.5 and more than 11 frames score > 0.8, the mean of those frames; else if
    more than 90% of the frames score < 0.2, the mean of those; else the mean of all frames. 0.8 and 0.2 are
    confidence cuts on P(fake), not a verdict: the result is a score, judged at the threshold like the others.
    """
    frame_count = scores.size
    confident_fake = scores > CONFIDENT_FAKE_SCORE
    fake_count = int(np.count_nonzero(confident_fake))
    # The original writes `sz // 2.5` (floor); for an integer count, fakes > floor(x) <=> fakes > x, so `/` is the same.
    if fake_count > frame_count / CONFIDENT_FAKE_DIVISOR and fake_count > CONFIDENT_MIN_FAKE_FRAMES:
        return float(np.mean(scores[confident_fake]))
    confident_real = scores < CONFIDENT_REAL_SCORE
    if np.count_nonzero(confident_real) > CONFIDENT_REAL_FRACTION * frame_count:
        return float(np.mean(scores[confident_real]))
    return float(np.mean(scores))


# The rules evaluation reports (evaluate_predictions' default, evaluate's tables, predictions.csv and plots), in
# the order they are defined above, which is the order of every table, file and plot; median is not reported.
NOT_REPORTED = ("median",)  # registered for users; evaluation's tables leave it out
REPORTED_RULES = tuple(name for name in AGGREGATIONS if name not in NOT_REPORTED)  # in the order defined above


def aggregate(frame_scores, rule="mean", mask=None, threshold=0.5):
    """One video's score from its frame scores by ``rule`` (a name in AGGREGATIONS), as a python float.

    ``mask`` (same length, booleans) marks the real frames, e.g. of a padded clip: only those are used. A video
    without any (real) frame has no score: ValueError. ``threshold``: the verdict's, at which each frame votes
    in the ``majority`` rule (the frame scores must be on its scale).
    """
    scores = np.asarray(frame_scores, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != scores.shape:
            raise ValueError(f"mask must be booleans, one per frame: got {mask.dtype} {mask.shape} "
                             f"for frame scores of shape {scores.shape}")
        scores = scores[mask]  # before the checks: padded frames may hold anything
    scores = as_scores(scores, "frame scores")
    if scores.size == 0:
        raise ValueError("no frame scores to aggregate")
    return AGGREGATIONS.get(rule)(scores, threshold)


def aggregate_many(frame_score_arrays, rule="mean", masks=None, threshold=0.5):
    """The score of each video (a list of frame score arrays) by ``rule`` at ``threshold``, as a float64 array."""
    if masks is None:
        masks = [None] * len(frame_score_arrays)
    if len(masks) != len(frame_score_arrays):
        raise ValueError(f"{len(masks)} masks for {len(frame_score_arrays)} videos")
    return np.array([aggregate(scores, rule, mask, threshold) for scores, mask in zip(frame_score_arrays, masks)],
                    dtype=np.float64)
