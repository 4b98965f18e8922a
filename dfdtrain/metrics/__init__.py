"""Detection metrics for deepfake video detectors, and the rules that turn frame scores into a video score.

Conventions: label 1 = FAKE (the positive class), 0 = REAL; a score is P(fake) in [0, 1]; at a threshold a
sample is predicted FAKE when ``score >= threshold`` (``is_fake``: the one verdict rule, for a video's score, for
each frame's vote in the ``majority`` rule, and for the accuracy of the intervals).

* ``binary_metrics(labels, scores)`` (``binary``): ranking metrics (AUC, log loss, AP, EER) and the
  confusion-matrix metrics at one threshold, as one JSON-ready dict (python floats/ints, ``None`` where undefined);
  ``expected_calibration_error``: how far scores are from the observed fraction of fakes (equal-width bins).
* ``roc_curve`` / ``precision_recall_curve`` (``curves``): the curves, with the same values as scikit-learn's.
* ``AGGREGATIONS`` (``aggregation``): frame scores -> video score (``mean``, ``max``, ``median``, ``majority``,
  ``confident``); ``aggregate`` for one video, ``aggregate_many`` for a list of videos.
* ``evaluate_predictions(records)`` (``summary``): every reported aggregation rule, the temporal head's video
  score and the frame level, in one dict; ``format_metrics_table`` prints it; ``synthetic_metrics``: real videos
  against their synthetic twins (``data.val_synthesis``), reported apart.
* ``bootstrap_intervals`` (``intervals``): 95% intervals of the ranking, calibration and accuracy metrics,
  resampling whole groups (identities, source pairs), since videos of one group are not independent; none
  (``interval_problem`` says why) with fewer than 2 groups of real or of fake videos.
* ``calibration``: the temperature and the decision threshold fitted on validation (imported from there).

Numpy only (scikit-learn is used by the tests, to check every value against it). Where a value differs from
scikit-learn (1.9) it is on purpose and said in the docstring of ``binary_metrics``.
"""

from dfdtrain.metrics.aggregation import AGGREGATIONS, REPORTED_RULES, aggregate, aggregate_many
from dfdtrain.metrics.binary import (CALIBRATION_BINS, LOG_LOSS_EPS, average_precision, balanced_accuracy,
                                     binary_metrics, calibration_bin_index, confusion_counts, equal_error_rate,
                                     expected_calibration_error, is_fake, log_loss, matthews_corrcoef, roc_auc)
from dfdtrain.metrics.curves import f1_by_threshold, precision_recall_curve, roc_curve
from dfdtrain.metrics.intervals import (INTERVAL_METRICS, MIN_GROUPS_PER_CLASS, bootstrap_intervals, groups_per_class,
                                        interval_problem)
from dfdtrain.metrics.summary import TABLE_COLUMNS, evaluate_predictions, format_metrics_table, synthetic_metrics

__all__ = [
    # binary
    "CALIBRATION_BINS", "LOG_LOSS_EPS", "average_precision", "balanced_accuracy", "binary_metrics",
    "calibration_bin_index", "confusion_counts", "equal_error_rate", "expected_calibration_error", "is_fake",
    "log_loss", "matthews_corrcoef", "roc_auc",
    # curves
    "f1_by_threshold", "precision_recall_curve", "roc_curve",
    # aggregation
    "AGGREGATIONS", "REPORTED_RULES", "aggregate", "aggregate_many",
    # intervals
    "INTERVAL_METRICS", "MIN_GROUPS_PER_CLASS", "bootstrap_intervals", "groups_per_class", "interval_problem",
    # summary
    "TABLE_COLUMNS", "evaluate_predictions", "format_metrics_table", "synthetic_metrics",
]
