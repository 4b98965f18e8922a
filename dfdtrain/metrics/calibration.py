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
  ``protocol`` and ``predict`` read it from there. With fewer than 2 videos of a class nothing can be fitted:
  ``CalibrationNotFitted`` (naming the class), or with ``fallback=True`` temperature 1 and the configured
  threshold, labelled ``threshold_rule: fallback`` (training's validation uses that: a one-class validation set
  must not stop a run).
"""

import dataclasses
import math
from typing import Literal, Optional

import numpy as np

from dfdtrain.config import Fraction, Positive, Section
from dfdtrain.core.errors import DfdError
from dfdtrain.core.registry import Registry
from dfdtrain.core.text import format_fixed
from dfdtrain.metrics.binary import expected_calibration_error, log_loss
from dfdtrain.metrics.curves import f1_by_threshold, roc_curve

# 1/T is searched in [MIN_INVERSE, MAX_INVERSE]: T from 0.001 (sharpen a timid model) to 1000 (near-flat).
MIN_INVERSE_TEMPERATURE, MAX_INVERSE_TEMPERATURE = 1e-3, 1e3
# below this many validation videos of each class nothing is fitted (CalibrationNotFitted, or a fallback)
MIN_VIDEOS_PER_CLASS = 2
FALLBACK_RULE = "fallback"  # the threshold_rule of a calibration that could not be fitted


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


# The threshold rules in the order they are defined above: the order the CLI offers them and messages list them.
THRESHOLD_RULE_NAMES = tuple(THRESHOLD_RULES)  # in the order defined above


# --------------------------------------------------------------------------------------------- calibration


class CalibrationNotFitted(DfdError):
    """The validation videos cannot fit a calibration: ``reason`` names the class with too few videos."""

    def __init__(self, reason):
        self.reason = reason
        super().__init__(f"calibration not fitted: {reason}")


@dataclasses.dataclass
class Calibration(Section):
    """How a detector's video logit becomes the P(fake) it reports, and where that was fitted."""

    temperature: Positive = 1.0  # P(fake) = sigmoid(logit / temperature); 1 = uncalibrated
    # how the detector's threshold was chosen; "fallback": nothing could be fitted (temperature 1, the threshold
    # as configured; fitted_on says why)
    threshold_rule: Literal[(*THRESHOLD_RULE_NAMES, FALLBACK_RULE)] = "fixed"
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


def unfittable_reason(labels, rule="fixed", calibrate=True):
    """Why ``labels`` cannot fit a temperature (``calibrate``) or the threshold ``rule``, or None when they can:
    both need at least MIN_VIDEOS_PER_CLASS videos of each class (a fixed threshold alone needs none)."""
    labels = np.asarray(labels, dtype=np.int64)
    fake = int(labels.sum())
    counts = {"real": int(labels.size) - fake, "fake": fake}
    short = [name for name, count in counts.items() if count < MIN_VIDEOS_PER_CLASS]
    if not short or not (calibrate or rule != "fixed"):
        return None
    fitting = " and ".join(part for part in ("the temperature" if calibrate else "",
                                             f"the {rule} threshold" if rule != "fixed" else "") if part)
    return (f"too few {' and '.join(short)} videos ({counts['real']} real, {counts['fake']} fake; fitting {fitting} "
            f"needs at least {MIN_VIDEOS_PER_CLASS} of each class)")


def fit_calibration(logits, labels, rule="fixed", threshold=0.5, fitted_on="validation", calibrate=True,
                    fallback=False):
    """The Calibration of a detector from its validation video logits and labels: the temperature (1 without
    ``calibrate``), the threshold ``rule`` chose on the calibrated scores, and the NLL and ECE before and after.

    With too few videos of a class to fit (``unfittable_reason``): CalibrationNotFitted, or with ``fallback``
    temperature 1 and ``threshold`` as given, ``threshold_rule`` "fallback" and the reason in ``fitted_on``."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    THRESHOLD_RULES.get(rule)  # an unknown rule fails first, with the known names
    reason = unfittable_reason(labels, rule, calibrate)
    if reason and not fallback:
        raise CalibrationNotFitted(reason)
    temperature = fit_temperature(logits, labels) if calibrate and not reason else 1.0
    raw, calibrated = sigmoid(logits), sigmoid(logits / temperature)
    chosen = threshold if reason else THRESHOLD_RULES.get(rule)(labels, calibrated, threshold)
    if reason:
        rule = FALLBACK_RULE
        fitted_on += f"; not fitted: {reason}"
    return Calibration(temperature=temperature, threshold_rule=rule, fitted_on=fitted_on, videos=int(labels.size),
                       nll_raw=log_loss(labels, raw), nll_calibrated=log_loss(labels, calibrated),
                       ece_raw=expected_calibration_error(labels, raw),
                       ece_calibrated=expected_calibration_error(labels, calibrated),
                       threshold=float(min(max(chosen, 0.0), 1.0)))


def describe(calibration):
    """One line: the temperature, the threshold and what they did to the validation NLL and ECE."""
    if not calibration.fitted_on:
        return "uncalibrated (no temperature fitted)"
    if calibration.threshold_rule == FALLBACK_RULE:
        return (f"FALLBACK, nothing fitted (temperature {calibration.temperature:.4g}, threshold "
                f"{calibration.threshold:.4g} as configured) on {calibration.fitted_on}; validation NLL "
                f"{format_fixed(calibration.nll_raw)}, ECE {format_fixed(calibration.ece_raw)}")
    return (f"temperature {calibration.temperature:.4g}, threshold {calibration.threshold:.4g} "
            f"({calibration.threshold_rule}), fitted on {calibration.fitted_on}: validation NLL "
            f"{calibration.nll_raw:.4f} -> {calibration.nll_calibrated:.4f}, ECE {calibration.ece_raw:.4f} -> "
            f"{calibration.ece_calibrated:.4f}")
