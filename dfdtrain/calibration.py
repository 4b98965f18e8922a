"""Calibrated probabilities and the decision threshold, both fitted on validation data only.

A detector's raw P(fake) = sigmoid(logit) is often over-confident, and log-loss punishes that hard (the DFDC
winners all hand-tuned post-hoc fixes for it). Temperature scaling fixes it with one number: P(fake) =
sigmoid(logit / T), T fitted by minimising the validation NLL. It never changes the ranking (AUC, AP, EER stay
as they are), only how far the scores are from 0 and 1.

* ``fit_temperature(logits, labels)``: T by NLL (convex in 1/T: an exact 1-D search, no learning rate).
* ``THRESHOLD_RULES``: how the decision threshold is chosen on the calibrated validation scores (``fixed``:
  ``train.threshold`` as configured; ``eer``: where false positive and false negative rates meet; ``max_f1``).
* ``fit_calibration(logits, labels, rule, threshold)``: both, with the NLL and ECE before and after, as the
  ``Calibration`` stored in detector.json beside every checkpoint and in export bundles; ``evaluate``,
  ``protocol`` and ``predict`` read it from there.
"""

import dataclasses
import math
from typing import Literal, Optional

import numpy as np

from dfdtrain.config import Fraction, Positive, Section
from dfdtrain.metrics import expected_calibration_error, f1_by_threshold, log_loss, roc_curve
from dfdtrain.registry import Registry

# 1/T is searched in [MIN_INVERSE, MAX_INVERSE]: T from 0.001 (sharpen a timid model) to 1000 (near-flat).
MIN_INVERSE_TEMPERATURE, MAX_INVERSE_TEMPERATURE = 1e-3, 1e3
# below this many validation videos of each class the fit is too noisy to trust: T stays 1
MIN_VIDEOS_PER_CLASS = 2


@dataclasses.dataclass
class Calibration(Section):
    """How a detector's video logit becomes the P(fake) it reports, and where that was fitted."""

    temperature: Positive = 1.0  # P(fake) = sigmoid(logit / temperature); 1 = uncalibrated
    threshold_rule: Literal["fixed", "eer", "max_f1"] = "fixed"  # how the detector's threshold was chosen
    fitted_on: str = ""  # e.g. "validation after epoch 3 (120 videos)"; empty: never fitted
    videos: int = 0  # validation videos of the fit
    nll_raw: Optional[float] = None  # validation log-loss before / after
    nll_calibrated: Optional[float] = None
    ece_raw: Optional[float] = None  # validation expected calibration error before / after
    ece_calibrated: Optional[float] = None
    threshold: Optional[Fraction] = None  # the threshold the rule chose (also the detector's threshold)

    def probability(self, logits):
        """Calibrated P(fake) of video logits (numpy array or float)."""
        return sigmoid(np.asarray(logits, dtype=np.float64) / self.temperature)


def sigmoid(values):
    values = np.asarray(values, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -values))  # stable for large |values|


def _nll_slope(inverse_temperature, logits, targets):
    """d/da of the mean NLL of sigmoid(a * logit) at a: mean((sigmoid(a z) - y) z), increasing in a."""
    return float(np.mean((sigmoid(inverse_temperature * logits) - targets) * logits))


def fit_temperature(logits, labels):
    """The temperature T minimising the mean NLL of sigmoid(logit / T) on (logits, labels).

    The NLL is convex in a = 1/T, so its slope increases and the minimum is where the slope crosses 0: found
    by bisection on log a within [1e-3, 1e3] (clamped there; a slope that never turns means the scores carry
    almost no information, or separate the classes perfectly)."""
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(labels, dtype=np.float64)
    low, high = math.log(MIN_INVERSE_TEMPERATURE), math.log(MAX_INVERSE_TEMPERATURE)
    if _nll_slope(math.exp(low), logits, targets) >= 0:
        return 1.0 / MIN_INVERSE_TEMPERATURE
    if _nll_slope(math.exp(high), logits, targets) <= 0:
        return 1.0 / MAX_INVERSE_TEMPERATURE
    for _ in range(100):  # to float precision in log a
        middle = (low + high) / 2
        if _nll_slope(math.exp(middle), logits, targets) < 0:
            low = middle
        else:
            high = middle
    return 1.0 / math.exp((low + high) / 2)


# ---------------------------------------------------------------------------------------------- thresholds

THRESHOLD_RULES = Registry("threshold rule")
"""Rules choosing the decision threshold from validation (labels, calibrated scores, configured threshold)."""


@THRESHOLD_RULES.register("fixed")
def fixed_threshold(labels, scores, configured):
    return configured


@THRESHOLD_RULES.register("eer")
def eer_threshold(labels, scores, configured):
    """The score where the false positive rate and the false negative rate are closest (the EER point)."""
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    gap = np.abs(false_positive_rate - (1.0 - true_positive_rate))[1:]  # [0] is the inf threshold
    return float(thresholds[1:][int(np.argmin(gap))])


@THRESHOLD_RULES.register("max_f1")
def max_f1_threshold(labels, scores, configured):
    """The score whose threshold gives the highest F1 (the highest such score on a tie)."""
    f1, thresholds = f1_by_threshold(labels, scores)
    return float(thresholds[int(np.argmax(f1))])


def fit_calibration(logits, labels, rule="fixed", threshold=0.5, fitted_on="validation", calibrate=True):
    """The Calibration of a detector from its validation video logits and labels: the temperature (1 without
    ``calibrate`` or with too few videos of a class), the threshold ``rule`` chose on the calibrated scores,
    and the NLL and ECE before and after."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    both_classes = min(int(labels.sum()), int(labels.size - labels.sum())) >= MIN_VIDEOS_PER_CLASS
    temperature = fit_temperature(logits, labels) if calibrate and both_classes else 1.0
    raw, calibrated = sigmoid(logits), sigmoid(logits / temperature)
    chosen = THRESHOLD_RULES.get(rule)(labels, calibrated, threshold) if both_classes else threshold
    if not both_classes:
        fitted_on += (f"; fewer than {MIN_VIDEOS_PER_CLASS} real or fake videos, so the temperature stays 1 and "
                      "the threshold as configured")
    return Calibration(temperature=temperature, threshold_rule=rule, fitted_on=fitted_on, videos=int(labels.size),
                       nll_raw=log_loss(labels, raw), nll_calibrated=log_loss(labels, calibrated),
                       ece_raw=expected_calibration_error(labels, raw),
                       ece_calibrated=expected_calibration_error(labels, calibrated),
                       threshold=float(min(max(chosen, 0.0), 1.0)))


def describe(calibration):
    """One line: the temperature, the threshold and what they did to the validation NLL and ECE."""
    if not calibration.fitted_on:
        return "uncalibrated (no temperature fitted)"
    return (f"temperature {calibration.temperature:.4g}, threshold {calibration.threshold:.4g} "
            f"({calibration.threshold_rule}), fitted on {calibration.fitted_on}: validation NLL "
            f"{calibration.nll_raw:.4f} -> {calibration.nll_calibrated:.4f}, ECE {calibration.ece_raw:.4f} -> "
            f"{calibration.ece_calibrated:.4f}")
