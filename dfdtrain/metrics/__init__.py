"""Detection metrics for deepfake video detectors, and the rules that turn frame scores into a video score.

Conventions: label 1 = FAKE (the positive class), 0 = REAL; a score is P(fake) in [0, 1]; at a threshold a
sample is predicted FAKE when ``score >= threshold`` (``is_fake``: the one verdict rule, for a video's score, for
each frame's vote in the ``majority`` rule, and for the accuracy of the intervals).

* ``binary_metrics(labels, scores)``: ranking metrics (AUC, log loss, AP, EER) and the confusion-matrix
  metrics at one threshold, as one JSON-ready dict (python floats/ints, ``None`` where undefined).
* ``roc_curve`` / ``precision_recall_curve``: the curves, with the same values as scikit-learn's.
* ``AGGREGATIONS``: frame scores -> video score (``mean``, ``max``, ``median``, ``majority``, ``confident``);
  ``aggregate`` for one video, ``aggregate_many`` for a list of videos.
* ``evaluate_predictions(records)``: every aggregation rule, the temporal head's video score and the frame
  level, in one dict; ``format_metrics_table`` prints it.
* ``expected_calibration_error``: how far scores are from the observed fraction of fakes (equal-width bins).
* ``bootstrap_intervals``: 95% intervals of the ranking, calibration and accuracy metrics, resampling whole
  groups (identities, source pairs), since videos of one group are not independent; none (``interval_problem``
  says why) with fewer than 2 groups of real or of fake videos.

Numpy only (scikit-learn is used by the tests, to check every value against it). Where a value differs from
scikit-learn (1.9) it is on purpose and said in the docstring of ``binary_metrics``.
"""

import math

import numpy as np

from dfdtrain.core.registry import Registry

# Scores are clipped to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS] before the log: the DFDC competition metric's clipping
# (and scikit-learn's before 1.5), so one confidently wrong 0/1 score costs -log(1e-15) = 34.5, not infinity.
LOG_LOSS_EPS = 1e-15

# Equal-width score bins of the expected calibration error (and of evaluate's reliability diagram).
CALIBRATION_BINS = 10

# The columns of format_metrics_table: header -> key of binary_metrics.
TABLE_COLUMNS = {
    "auc": "auc", "log_loss": "log_loss", "ece": "ece", "ap": "ap", "eer": "eer", "acc": "accuracy",
    "prec": "precision",
    "rec": "recall", "spec": "specificity", "npv": "npv", "f1": "f1", "mcc": "mcc",
}


# ---------------------------------------------------------------------------------------------- input checks


def _as_labels(labels):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D sequence, got shape {labels.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {np.unique(labels)[:10].tolist()}")
    return labels.astype(np.int64)


def _as_scores(scores, what="scores"):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} must be finite (found NaN or inf)")
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(f"{what} must be probabilities in [0, 1], got range [{scores.min()}, {scores.max()}]")
    return scores


def _as_labels_and_scores(labels, scores):
    labels = _as_labels(labels)
    scores = _as_scores(scores)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}")
    return labels, scores


def _ratio(numerator, denominator):
    """numerator / denominator as a python float, or None when the denominator is 0 (undefined)."""
    return float(numerator / denominator) if denominator else None


# -------------------------------------------------------------------------------------------------- curves


def _counts_at_thresholds(labels, scores):
    """(false positives, true positives, threshold) at each distinct score, highest score first.

    At threshold ``t`` the predicted positives are the samples with ``score >= t``; tied scores enter together.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order].astype(np.float64)
    # the last index of each run of equal scores (the sort is descending), then the end of the array
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), scores.size - 1]
    true_positives = np.cumsum(sorted_labels)[last_of_run]
    false_positives = 1 + last_of_run - true_positives
    return false_positives, true_positives, sorted_scores[last_of_run]


def roc_curve(labels, scores, drop_intermediate=True):
    """ROC curve as ``(fpr, tpr, thresholds)`` arrays, the same values as ``sklearn.metrics.roc_curve``.

    The curve starts at (0, 0) with threshold ``inf``; ``thresholds`` decrease. ``drop_intermediate`` (as in
    scikit-learn, on by default) drops points that lie on a straight line between their neighbours: they do not
    change the plotted curve or its area. Needs both classes (raises ValueError otherwise: a rate over an empty
    class is undefined, where scikit-learn warns and returns NaN).
    """
    labels, scores = _as_labels_and_scores(labels, scores)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise ValueError("a ROC curve needs both real (0) and fake (1) labels")
    false_positives, true_positives, thresholds = _counts_at_thresholds(labels, scores)
    if drop_intermediate and false_positives.size > 2:
        # a point is kept where the curve bends: the second difference of fps or tps is not zero
        bends = np.logical_or(np.diff(false_positives, 2), np.diff(true_positives, 2))
        keep = np.flatnonzero(np.r_[True, bends, True])
        false_positives, true_positives, thresholds = false_positives[keep], true_positives[keep], thresholds[keep]
    false_positives = np.r_[0.0, false_positives]
    true_positives = np.r_[0.0, true_positives]
    thresholds = np.r_[np.inf, thresholds]
    return false_positives / false_positives[-1], true_positives / true_positives[-1], thresholds


def precision_recall_curve(labels, scores, drop_intermediate=False):
    """Precision-recall curve as ``(precision, recall, thresholds)``, as ``sklearn.metrics.precision_recall_curve``.

    ``thresholds`` increase; ``precision`` and ``recall`` have one more entry than ``thresholds``: the final
    point (precision 1, recall 0) has no threshold. Precision at a threshold with no predicted positive is 0, as
    in scikit-learn (only the lowest-recall end can have none). Needs at least one fake label (raises ValueError
    otherwise: recall is undefined, where scikit-learn warns and sets it to 1).
    """
    labels, scores = _as_labels_and_scores(labels, scores)
    if not labels.any():
        raise ValueError("a precision-recall curve needs at least one fake (1) label")
    false_positives, true_positives, thresholds = _counts_at_thresholds(labels, scores)
    if drop_intermediate and false_positives.size > 2:
        # keep only the first and last point of each run of equal tps (same recall: a vertical line on the plot)
        changes = np.logical_or(np.diff(true_positives[:-1]), np.diff(true_positives[1:]))
        keep = np.flatnonzero(np.r_[True, changes, True])
        false_positives, true_positives, thresholds = false_positives[keep], true_positives[keep], thresholds[keep]
    predicted_positives = true_positives + false_positives  # >= 1 at every threshold: a threshold is a score
    precision = true_positives / predicted_positives
    recall = true_positives / true_positives[-1]
    # reversed so that recall decreases, then the (recall 0, precision 1) end point
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def f1_by_threshold(labels, scores):
    """(F1, threshold) at each distinct score as a threshold, highest threshold first (needs a fake label)."""
    labels, scores = _as_labels_and_scores(labels, scores)
    if not labels.any():
        raise ValueError("F1 needs at least one fake (1) label")
    false_positives, true_positives, thresholds = _counts_at_thresholds(labels, scores)
    false_negatives = labels.sum() - true_positives
    return 2 * true_positives / (2 * true_positives + false_positives + false_negatives), thresholds


# ----------------------------------------------------------------------------------------- ranking metrics


def _average_ranks(values):
    """1-based ranks of ``values``; tied values share the average of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts_run = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    run_starts = np.flatnonzero(starts_run)
    run_ends = np.r_[run_starts[1:], values.size]  # exclusive
    run_ranks = (run_starts + 1 + run_ends) / 2.0  # mean of the ranks start+1 .. end
    ranks = np.empty(values.size)
    ranks[order] = run_ranks[np.cumsum(starts_run) - 1]
    return ranks


def roc_auc(labels, scores):
    """ROC-AUC by the Mann-Whitney U statistic with average ranks (a fake/real tie counts one half, exactly as
    scikit-learn's trapezoidal area); None unless both classes are present."""
    labels, scores = _as_labels_and_scores(labels, scores)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return None
    positive_rank_sum = _average_ranks(scores)[labels == 1].sum()
    return float((positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels, scores):
    """Mean binary cross-entropy (natural log) with scores clipped to [1e-15, 1 - 1e-15]; None when empty."""
    labels, scores = _as_labels_and_scores(labels, scores)
    if labels.size == 0:
        return None
    clipped = np.clip(scores, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    losses = np.where(labels == 1, -np.log(clipped), -np.log1p(-clipped))
    return float(losses.mean())


def average_precision(labels, scores):
    """Average precision as scikit-learn's: sum over thresholds of (recall gain) x precision, a step function
    without interpolation; None with no fake label (recall undefined)."""
    labels, scores = _as_labels_and_scores(labels, scores)
    if not labels.any():
        return None
    precision, recall, _ = precision_recall_curve(labels, scores)
    # recall decreases along the curve, hence the minus; max() turns a rounding -0.0 into 0.0, as sklearn does
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def equal_error_rate(labels, scores):
    """Equal error rate: the error where the false positive rate equals the false negative rate (1 - TPR).

    Walking the ROC curve from (0, 0) to (1, 1), FPR - FNR rises from -1 to 1; the EER is the FPR where it
    crosses 0, interpolated linearly along the ROC segment that crosses (a segment of tied scores included).
    None unless both classes are present.
    """
    labels, scores = _as_labels_and_scores(labels, scores)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        return None
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    gap = fpr - fnr  # non-decreasing along the curve: -1 at (0, 0), +1 at (1, 1)
    after = int(np.argmax(gap >= 0))  # first point at or past the crossing (> 0: the start has gap -1)
    before = after - 1
    if gap[after] == 0:
        return float(fpr[after])
    # on the segment, fpr and fnr are both linear in t; gap is 0 at t = -gap[before] / (gap[after] - gap[before])
    t = -gap[before] / (gap[after] - gap[before])
    return float(fpr[before] + t * (fpr[after] - fpr[before]))


def calibration_bin_index(scores, bins=CALIBRATION_BINS):
    """The equal-width bin (0 .. bins-1) of each score in [0, 1]; 1.0 goes in the last bin."""
    return np.minimum((np.asarray(scores, dtype=np.float64) * bins).astype(np.int64), bins - 1)


def expected_calibration_error(labels, scores, bins=CALIBRATION_BINS):
    """ECE: over ``bins`` equal-width score bins, the share of samples in a bin times |mean score - fraction
    fake| there, summed (0 = the scores are the observed frequencies). None when empty. A score of exactly 1
    falls in the last bin."""
    labels, scores = _as_labels_and_scores(labels, scores)
    if labels.size == 0:
        return None
    index = calibration_bin_index(scores, bins)
    score_sums = np.bincount(index, weights=scores, minlength=bins)
    fake_sums = np.bincount(index, weights=labels.astype(np.float64), minlength=bins)
    return float(np.abs(score_sums - fake_sums).sum() / labels.size)  # sum_b n_b/n * |mean_b - frac_b|


# ------------------------------------------------------------------------------------------ binary metrics


def is_fake(scores, threshold=0.5):
    """The verdict rule: FAKE where ``score >= threshold`` (booleans, one per score; a bool for one score).

    The one definition used for a video's verdict (``confusion_counts``, so every threshold metric), for each
    frame's vote in the ``majority`` rule and for the accuracy in ``bootstrap_intervals``: scores and threshold
    must be on the same scale (evaluate puts frame scores on the calibrated scale of the detector's threshold).
    """
    return np.asarray(scores) >= threshold


def confusion_counts(labels, scores, threshold=0.5):
    """{"tn", "fp", "fn", "tp"} as python ints, predicting FAKE where ``score >= threshold`` (``is_fake``)."""
    labels, scores = _as_labels_and_scores(labels, scores)
    predicted_fake = is_fake(scores, threshold)
    labelled_fake = labels == 1
    return {
        "tn": int(np.sum(~labelled_fake & ~predicted_fake)),
        "fp": int(np.sum(~labelled_fake & predicted_fake)),
        "fn": int(np.sum(labelled_fake & ~predicted_fake)),
        "tp": int(np.sum(labelled_fake & predicted_fake)),
    }


def matthews_corrcoef(tn, fp, fn, tp):
    """MCC from the confusion counts; 0.0 when a row or column of the matrix is empty (scikit-learn's value)."""
    # products of counts in python ints: exact, no overflow
    denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    if denominator == 0:
        return 0.0
    return float((tp * tn - fp * fn) / math.sqrt(denominator))


def balanced_accuracy(tn, fp, fn, tp):
    """Mean of the recall of each class present in the labels (scikit-learn's definition); None when empty.

    With a single class this is that class's recall, i.e. the accuracy, as in scikit-learn.
    """
    class_recalls = [recall for recall in (_ratio(tp, tp + fn), _ratio(tn, tn + fp)) if recall is not None]
    return float(sum(class_recalls) / len(class_recalls)) if class_recalls else None


def binary_metrics(labels, scores, threshold=0.5):
    """Every detection metric of ``scores`` (P(fake)) against ``labels`` (1 = fake), as a JSON-ready dict.

    Keys: ``auc``, ``log_loss``, ``ece``, ``ap``, ``eer`` (threshold-free) and, predicting FAKE where
    ``score >= threshold``: ``accuracy``, ``precision``, ``recall`` (TPR, sensitivity), ``specificity`` (TNR),
    ``npv``, ``f1``, ``mcc``, ``balanced_accuracy``, ``confusion`` = {"tn", "fp", "fn", "tp"}; and ``count``
    (samples), ``positives`` (fake labels).

    A metric that is undefined is ``None``, never NaN and never an exception. Against scikit-learn 1.9 (whose
    values the tests check):

    * ``auc``, ``eer``: None with a single class (sklearn's roc_auc_score warns and returns NaN).
    * ``ap``: None with no fake label (sklearn warns, sets recall to 1 and returns 0.0); with only fake labels
      it is 1.0, as sklearn returns without warning (every threshold has precision 1).
    * ``precision`` None with no predicted fake, ``recall`` None with no fake label, ``f1`` None with neither
      (for each, sklearn warns UndefinedMetricWarning and returns 0.0). ``f1`` is 2tp / (2tp + fp + fn), so it
      is 0.0 when only one of precision and recall is undefined, as in sklearn.
    * ``specificity`` None with no real label, ``npv`` None with no predicted real (not in sklearn).
    * ``mcc``: 0.0 where the formula divides by zero (a single class, or one predicted class), as sklearn.
    * ``balanced_accuracy``: the mean recall over the classes present, as sklearn (with a single class that
      is the accuracy; sklearn warns).
    * ``log_loss``: scores clipped to [1e-15, 1 - 1e-15] (the DFDC metric). sklearn 1.9 clips to the float
      eps, 2.2e-16, so the two differ when a score is within 1e-15 of 0 or 1 (a wrong 0/1 score costs 34.54
      here, 36.04 in sklearn). Defined with a single class (sklearn needs ``labels=[0, 1]`` there).
    * ``eer`` and ``ece`` are not in sklearn: see ``equal_error_rate`` and ``expected_calibration_error``.
    * No samples: every metric None, counts 0 (sklearn raises).
    """
    labels, scores = _as_labels_and_scores(labels, scores)
    confusion = confusion_counts(labels, scores, threshold)
    tn, fp, fn, tp = confusion["tn"], confusion["fp"], confusion["fn"], confusion["tp"]
    count = int(labels.size)
    return {
        "auc": roc_auc(labels, scores),
        "log_loss": log_loss(labels, scores),
        "ece": expected_calibration_error(labels, scores),
        "ap": average_precision(labels, scores),
        "eer": equal_error_rate(labels, scores),
        "accuracy": _ratio(tp + tn, count),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "mcc": matthews_corrcoef(tn, fp, fn, tp) if count else None,
        "balanced_accuracy": balanced_accuracy(tn, fp, fn, tp),
        "confusion": confusion,
        "count": count,
        "positives": int(labels.sum()),
    }


# ---------------------------------------------------------------------------------------------- intervals

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
    labels = _as_labels(labels)
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
    labels, scores = _as_labels_and_scores(labels, scores)
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


# ---------------------------------------------------------------------------------------------- aggregation

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
    scores = _as_scores(scores, "frame scores")
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


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_predictions(records, threshold=0.5, rules=("mean", "max", "majority", "confident")):
    """Video- and frame-level metrics of a detector's predictions, as a JSON-ready dict.

    ``records``: one dict per video, ``{"key", "label" (0 real / 1 fake), "video_score" (the temporal head's
    P(fake); absent or None without one), "frame_scores" (P(fake) of each real frame, at least one)}``.

    Returns ``{"video": {"head": ..., rule: ... for each rule}, "frame": ..., "videos": n, "frames": n}`` where
    each value under "video" and "frame" is ``binary_metrics`` at ``threshold``: "head" scores the videos by
    ``video_score`` (present only when every record has one; a mix raises ValueError, since comparing the head
    with the rules on different videos would mislead), each rule by its aggregate of the frame scores (at
    ``threshold``: the frames vote there in ``majority``), and "frame" scores every frame with its video's label
    (so videos with more frames weigh more). The frame scores must be on the scale of ``threshold`` and of the
    head's score (calibrated when the threshold was chosen on calibrated scores).
    """
    for rule in rules:
        AGGREGATIONS.get(rule)  # an unknown rule fails before any work, with the known names
    keys, labels, frame_score_arrays, video_scores = [], [], [], []
    for record in records:
        key = record.get("key")
        if record.get("label") not in (0, 1):
            raise ValueError(f"video {key!r}: label must be 0 (real) or 1 (fake), got {record.get('label')!r}")
        frame_scores = _as_scores(record.get("frame_scores", []), f"video {key!r}: frame_scores")
        if frame_scores.size == 0:
            raise ValueError(f"video {key!r}: no frame scores")
        keys.append(key)
        labels.append(int(record["label"]))
        frame_score_arrays.append(frame_scores)
        video_scores.append(record.get("video_score"))

    video_metrics = {}
    with_head = [score is not None for score in video_scores]
    if any(with_head) and not all(with_head):
        missing = keys[with_head.index(False)]
        raise ValueError(f"video {missing!r} has no video_score while others have one: "
                         f"give every video a head score or none")
    if records and all(with_head):
        video_metrics["head"] = binary_metrics(labels, _as_scores(video_scores, "video_score"), threshold)
    for rule in rules:
        video_metrics[rule] = binary_metrics(labels, aggregate_many(frame_score_arrays, rule, threshold=threshold),
                                             threshold)

    frame_counts = [scores.size for scores in frame_score_arrays]
    frame_labels = np.repeat(np.array(labels, dtype=np.int64), frame_counts)
    frame_scores = np.concatenate(frame_score_arrays) if frame_score_arrays else np.zeros(0)
    return {
        "video": video_metrics,
        "frame": binary_metrics(frame_labels, frame_scores, threshold),
        "videos": len(labels),
        "frames": int(sum(frame_counts)),
    }


def format_metrics_table(metrics):
    """``evaluate_predictions``' result as a plain-text table: a row per video rule (``video/<rule>``) and the
    frame level, a column per metric (``-`` where undefined), under a line with the counts."""
    rows = [(f"video/{name}", values) for name, values in metrics["video"].items()]
    rows.append(("frame", metrics["frame"]))
    header = ["level", *TABLE_COLUMNS]
    body = [[name, *("-" if values[key] is None else f"{values[key]:.4f}" for key in TABLE_COLUMNS.values())]
            for name, values in rows]
    widths = [max(len(line[column]) for line in [header, *body]) for column in range(len(header))]

    def format_line(cells):
        # names left-aligned, numbers right-aligned
        numbers = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return "  ".join([cells[0].ljust(widths[0]), *numbers])

    lines = [f"{metrics['videos']} videos, {metrics['frames']} frames", format_line(header),
             "  ".join("-" * width for width in widths), *map(format_line, body)]
    return "\n".join(lines)
