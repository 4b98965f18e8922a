"""Calibration (temperature, threshold rules) and bootstrap intervals by group, on made data."""


import numpy as np
import pytest

from dfdtrain.metrics.calibration import THRESHOLD_RULES, fit_calibration, fit_temperature, sigmoid
from dfdtrain.metrics import bootstrap_intervals, binary_metrics, expected_calibration_error, log_loss, roc_curve


def overconfident(count, scale, seed=0):
    """(logits, labels): labels drawn from sigmoid(true logit), the model's logit ``scale`` times too sharp."""
    generator = np.random.default_rng(seed)
    true_logits = generator.normal(0.0, 1.5, count)
    labels = (generator.random(count) < sigmoid(true_logits)).astype(np.int64)
    return true_logits * scale, labels


def test_temperature_scaling_undoes_overconfidence():
    logits, labels = overconfident(4000, scale=4.0)
    calibration = fit_calibration(logits, labels)
    assert calibration.temperature == pytest.approx(4.0, rel=0.15)
    assert calibration.nll_calibrated < 0.8 * calibration.nll_raw
    assert calibration.ece_calibrated < 0.5 * calibration.ece_raw
    # the fitted T is the NLL minimum: a step either side costs more
    nll = [log_loss(labels, sigmoid(logits / (calibration.temperature * factor))) for factor in (0.95, 1.0, 1.05)]
    assert nll[1] < nll[0] and nll[1] < nll[2]
    assert calibration.nll_calibrated == pytest.approx(nll[1])
    # a timid model gets T < 1; ranking metrics never change
    timid, timid_labels = overconfident(4000, scale=0.25, seed=1)
    assert fit_temperature(timid, timid_labels) == pytest.approx(0.25, rel=0.15)
    raw, scaled = sigmoid(logits), calibration.probability(logits)
    assert binary_metrics(labels, raw)["auc"] == binary_metrics(labels, scaled)["auc"]


def test_threshold_rules_pick_the_eer_point_and_the_best_f1():
    logits, labels = overconfident(600, scale=1.0, seed=2)
    scores = sigmoid(logits)
    assert THRESHOLD_RULES.get("fixed")(labels, scores, 0.37) == 0.37
    eer = THRESHOLD_RULES.get("eer")(labels, scores, 0.5)
    false_positive_rate, true_positive_rate, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    gaps = np.abs(false_positive_rate - (1 - true_positive_rate))[1:]
    chosen = int(np.flatnonzero(thresholds == eer)[0])
    assert gaps[chosen - 1] == gaps.min()
    best_f1 = THRESHOLD_RULES.get("max_f1")(labels, scores, 0.5)
    f1_at = {threshold: binary_metrics(labels, scores, threshold)["f1"] for threshold in np.unique(scores)}
    assert f1_at[best_f1] == pytest.approx(max(f1_at.values()))


def test_a_calibration_that_cannot_be_fitted_says_so_and_a_fallback_is_labelled():
    """Fewer than 2 videos of a class: the fit used to return temperature 1 and the configured threshold labelled
    with the rule asked for ("eer"); now it raises naming the class, or with fallback=True (training's validation)
    returns the fallback labelled as one."""
    from dfdtrain.core.errors import DfdError

    with pytest.raises(DfdError, match=r"too few real videos \(1 real, 2 fake") as refused:
        fit_calibration([2.0, 3.0, -1.0], [1, 1, 0], rule="eer", threshold=0.4)

    from dfdtrain.metrics.calibration import CalibrationNotFitted, describe

    assert isinstance(refused.value, CalibrationNotFitted)
    with pytest.raises(CalibrationNotFitted, match=r"too few fake videos \(3 real, 0 fake; fitting the temperature "):
        fit_calibration([2.0, 3.0, -1.0], [0, 0, 0])
    fallback = fit_calibration([2.0, 3.0, -1.0], [1, 1, 0], rule="eer", threshold=0.4, fallback=True,
                               fitted_on="validation after epoch 1")
    assert (fallback.temperature, fallback.threshold, fallback.threshold_rule) == (1.0, 0.4, "fallback")
    assert fallback.fitted_on.startswith("validation after epoch 1; not fitted: too few real videos")
    line = describe(fallback)
    assert line.startswith("FALLBACK, nothing fitted (temperature 1, threshold 0.4 as configured)")
    assert "(eer)" not in line and "too few real videos" in line
    # a fixed threshold without a temperature needs no video of either class: that is no fallback
    fixed = fit_calibration([2.0, 3.0], [1, 1], rule="fixed", threshold=0.3, calibrate=False)
    assert (fixed.temperature, fixed.threshold, fixed.threshold_rule) == (1.0, 0.3, "fixed")


def test_bootstrap_intervals_contain_the_estimate_shrink_with_more_videos_and_resample_groups():
    def scored(count, seed):
        logits, labels = overconfident(count, scale=1.0, seed=seed)
        return labels, sigmoid(logits)

    widths = []
    for count in (60, 600):
        labels, scores = scored(count, seed=3)
        intervals = bootstrap_intervals(labels, scores, np.arange(count), threshold=0.5, resamples=400)
        point = binary_metrics(labels, scores)
        for name in ("auc", "ap", "eer", "log_loss", "ece", "accuracy"):
            low, high = intervals[name]
            assert low <= point[name] <= high, (count, name, point[name], intervals[name])
        widths.append(intervals["auc"][1] - intervals["auc"][0])
    assert widths[1] < 0.6 * widths[0]  # ~1/sqrt(10) in theory
    assert bootstrap_intervals(labels, scores, np.arange(600), resamples=400) == intervals  # seeded

    # five copies of each video in one group are one piece of evidence: the interval is as wide as with one copy,
    # where treating the copies as independent would narrow it ~sqrt(5) times
    labels, scores = scored(60, seed=3)
    once = bootstrap_intervals(labels, scores, np.arange(60), resamples=400)["auc"]
    copies = [np.repeat(values, 5) for values in (labels, scores, np.arange(60))]
    grouped = bootstrap_intervals(*copies, resamples=400)["auc"]
    independent = bootstrap_intervals(copies[0], copies[1], np.arange(300), resamples=400)["auc"]
    assert grouped[1] - grouped[0] == pytest.approx(once[1] - once[0], rel=0.25)
    assert independent[1] - independent[0] < 0.7 * (grouped[1] - grouped[0])
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


