"""The curves of a detector's scores against the labels, with the same values as scikit-learn's: ROC, precision-recall,
and F1 at each threshold. At threshold ``t`` the predicted fakes are the samples with ``score >= t``."""

import numpy as np

from dfdtrain.metrics.inputs import as_labels_and_scores


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
    labels, scores = as_labels_and_scores(labels, scores)
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
    labels, scores = as_labels_and_scores(labels, scores)
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
    labels, scores = as_labels_and_scores(labels, scores)
    if not labels.any():
        raise ValueError("F1 needs at least one fake (1) label")
    false_positives, true_positives, thresholds = _counts_at_thresholds(labels, scores)
    false_negatives = labels.sum() - true_positives
    return 2 * true_positives / (2 * true_positives + false_positives + false_negatives), thresholds
