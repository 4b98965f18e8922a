"""Bootstrap intervals of the ranking, calibration and accuracy metrics, resampling whole groups (identities, source
pairs), since videos of one group are not independent; none (``interval_problem`` says why) with fewer than 2
groups of real or of fake videos."""

import math

import numpy as np

from dfdtrain.metrics.binary import (average_precision, equal_error_rate, expected_calibration_error, is_fake, log_loss,
                                     roc_auc)
from dfdtrain.metrics.inputs import as_labels, as_labels_and_scores

# The metrics bootstrap_intervals resamples: name -> f(labels, scores, threshold), None where undefined.
INTERVAL_METRICS = {
    "auc": lambda labels, scores, threshold: roc_auc(labels, scores),
    "ap": lambda labels, scores, threshold: average_precision(labels, scores),
    "eer": lambda labels, scores, threshold: equal_error_rate(labels, scores),
    "log_loss": lambda labels, scores, threshold: log_loss(labels, scores),
    "ece": lambda labels, scores, threshold: expected_calibration_error(labels, scores),
    "accuracy": lambda labels, scores, threshold: float(np.mean(is_fake(scores, threshold) == (labels == 1))),
}

# an interval needs at least this many groups holding real videos and as many holding fake ones: with one group
# of a class, every resample holds the same videos of it (or none), and the interval says nothing about new faces
MIN_GROUPS_PER_CLASS = 2


def groups_per_class(labels, groups):
    """{"total", "real", "fake"}: the distinct groups, and those holding at least one real / one fake sample (a
    group holding both, e.g. an FF++ source pair, counts for each)."""
    labels = as_labels(labels)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"one group per sample is needed: {groups.size} groups for {labels.size} samples")
    return {"total": int(np.unique(groups).size), "real": int(np.unique(groups[labels == 0]).size),
            "fake": int(np.unique(groups[labels == 1]).size)}


def interval_problem(counts):
    """Why a set with these ``groups_per_class`` counts gets no bootstrap interval, or None when it gets one."""
    short = [name for name in ("real", "fake") if counts[name] < MIN_GROUPS_PER_CLASS]
    if not short:
        return None
    return (f"{counts['total']} group{'' if counts['total'] == 1 else 's'} ({counts['real']} with real, "
            f"{counts['fake']} with fake videos): an interval needs at least {MIN_GROUPS_PER_CLASS} groups of each "
            "class, since resampling fewer only repeats the same faces")


def bootstrap_intervals(labels, scores, groups, threshold=0.5, resamples=1000, confidence=0.95, seed=0):
    """Bootstrap intervals ``{metric: [low, high]}`` of each of INTERVAL_METRICS, resampling whole ``groups``
    with replacement (one group per sample: its identity, source pair or original video), so samples that share
    a face are never counted as independent evidence.

    The interval is the percentile interval shifted by the bootstrap's bias estimate (mean of the resamples
    minus the estimate on all samples), kept within the metric's range: a statistic that resampling inflates
    (ECE: binning noise only adds to each bin's |gap|) would otherwise get an interval above its own value.
    A resample where a metric is undefined (one class only) is left out of that metric's interval; a metric
    defined in fewer than half of the resamples gets None. With fewer than ``MIN_GROUPS_PER_CLASS`` groups of
    real or of fake samples every metric gets None (``interval_problem`` of ``groups_per_class`` says why): one
    group resampled is the same videos every time, a zero-width interval that would look certain. Seeded: the
    same inputs give the same intervals.
    """
    labels, scores = as_labels_and_scores(labels, scores)
    groups = np.asarray(groups)
    if labels.size == 0 or resamples < 1 or interval_problem(groups_per_class(labels, groups)):
        return {name: None for name in INTERVAL_METRICS}
    # samples ordered by group, so a group's members are one slice: starts[g] .. starts[g] + sizes[g]
    _, group_of, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.argsort(group_of, kind="stable")
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    labels, scores = labels[order], scores[order]
    generator = np.random.default_rng(seed)
    values = {name: [] for name in INTERVAL_METRICS}
    for _ in range(resamples):
        chosen = generator.integers(0, sizes.size, sizes.size)
        lengths = sizes[chosen]
        # the members of the chosen groups: each chosen start repeated over its group's length, plus 0..len-1
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        members = np.repeat(starts[chosen], lengths) + offsets
        for name, metric in INTERVAL_METRICS.items():
            value = metric(labels[members], scores[members], threshold)
            if value is not None:
                values[name].append(value)
    tail = (1.0 - confidence) / 2.0 * 100.0
    intervals = {}
    for name, found in values.items():
        estimate = INTERVAL_METRICS[name](labels, scores, threshold)
        if estimate is None or len(found) * 2 < resamples:
            intervals[name] = None
            continue
        bias = float(np.mean(found)) - estimate
        high_limit = math.inf if name == "log_loss" else 1.0
        intervals[name] = [min(max(float(np.percentile(found, tail)) - bias, 0.0), high_limit),
                           min(max(float(np.percentile(found, 100.0 - tail)) - bias, 0.0), high_limit)]
    return intervals
