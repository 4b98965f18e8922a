"""The metrics of one set of scores against its labels: ranking metrics (AUC, log loss, AP, EER), the expected
calibration error, and the confusion-matrix metrics at a threshold (``is_fake``: the one verdict rule), all in
``binary_metrics``, checked against scikit-learn (the differences are on purpose, and said there)."""

import math

import numpy as np

from dfdtrain.metrics.curves import precision_recall_curve, roc_curve
from dfdtrain.metrics.inputs import as_labels_and_scores

# Scores are clipped to [LOG_LOSS_EPS, 1 - LOG_LOSS_EPS] before the log: the DFDC competition metric's clipping
# (and scikit-learn's before 1.5), so one confidently wrong 0/1 score costs -log(1e-15) = 34.5, not infinity.
LOG_LOSS_EPS = 1e-15

# Equal-width score bins of the expected calibration error (and of evaluate's reliability diagram).
CALIBRATION_BINS = 10


def _ratio(numerator, denominator):
    """numerator / denominator as a python float, or None when the denominator is 0 (undefined)."""
    return float(numerator / denominator) if denominator else None


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
    labels, scores = as_labels_and_scores(labels, scores)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return None
    positive_rank_sum = _average_ranks(scores)[labels == 1].sum()
    return float((positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def log_loss(labels, scores):
    """Mean binary cross-entropy (natural log) with scores clipped to [1e-15, 1 - 1e-15]; None when empty."""
    labels, scores = as_labels_and_scores(labels, scores)
    if labels.size == 0:
        return None
    clipped = np.clip(scores, LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS)
    losses = np.where(labels == 1, -np.log(clipped), -np.log1p(-clipped))
    return float(losses.mean())


def average_precision(labels, scores):
    """Average precision as scikit-learn's: sum over thresholds of (recall gain) x precision, a step function
    without interpolation; None with no fake label (recall undefined)."""
    labels, scores = as_labels_and_scores(labels, scores)
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
    labels, scores = as_labels_and_scores(labels, scores)
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
    labels, scores = as_labels_and_scores(labels, scores)
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
    labels, scores = as_labels_and_scores(labels, scores)
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
    labels, scores = as_labels_and_scores(labels, scores)
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
