"""dfdtrain.metrics against scikit-learn, on many random cases and on hand-made ones with known answers."""

import json
import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from dfdtrain.metrics import (AGGREGATIONS, aggregate, aggregate_many, binary_metrics, equal_error_rate,
                              evaluate_predictions, format_metrics_table, precision_recall_curve, roc_curve)

SEEDS = range(120)
THRESHOLD_KEYS = ("accuracy", "precision", "recall", "specificity", "npv", "f1", "mcc", "balanced_accuracy")


def random_case(seed):
    """Labels and scores of a random size (2..500), mixing balanced and very imbalanced labels (both classes
    present), continuous and tied (rounded) scores, and scores of exactly 0 and 1; plus a threshold that is
    sometimes equal to a score."""
    rng = np.random.default_rng(seed)
    count = int(rng.integers(2, 501))
    fake_fraction = rng.choice([0.01, 0.1, 0.5, 0.9, 0.99, rng.uniform()])
    labels = (rng.uniform(size=count) < fake_fraction).astype(int)
    labels[rng.choice(count, 2, replace=False)] = [0, 1]  # both classes, whatever the fraction
    separation = rng.choice([0.0, 1.0, 3.0])  # from chance level to well separated
    scores = 1 / (1 + np.exp(-(rng.normal(size=count) + separation * (labels - 0.5))))
    style = seed % 4
    if style == 1:
        scores = np.round(scores, 1)  # many ties
    elif style == 2:
        scores = np.round(scores, 2)
    elif style == 3:  # some scores exactly 0 and 1
        extremes = rng.uniform(size=count) < 0.2
        scores[extremes] = rng.integers(0, 2, size=int(extremes.sum()))
    threshold = rng.choice([0.5, rng.uniform(), scores[rng.integers(count)], 0.0, 1.0])
    return labels, scores, float(threshold)


def sklearn_threshold_metrics(labels, scores, threshold):
    """The threshold metrics by scikit-learn; None where sklearn calls the value undefined (NaN)."""
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's own notes on degenerate inputs; the values are what we check
        values = {
            "accuracy": skm.accuracy_score(labels, predicted),
            "precision": skm.precision_score(labels, predicted, zero_division=np.nan),
            "recall": skm.recall_score(labels, predicted, zero_division=np.nan),
            "f1": skm.f1_score(labels, predicted, zero_division=np.nan),
            "mcc": skm.matthews_corrcoef(labels, predicted),
            "balanced_accuracy": skm.balanced_accuracy_score(labels, predicted),
        }
    # not in sklearn: by hand from its confusion matrix
    values["specificity"] = tn / (tn + fp) if tn + fp else None
    values["npv"] = tn / (tn + fn) if tn + fn else None
    values = {key: None if value is None or math.isnan(value) else float(value) for key, value in values.items()}
    values["confusion"] = {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}
    return values


def binary_metrics_no_warnings(labels, scores, threshold=0.5):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (numpy division, ...) escaping ours fails the test
        return binary_metrics(labels, scores, threshold)


def assert_plain_json(value):
    """Only python dict/list/str/int/float/None (no numpy scalars, which json would pass silently) and no NaN."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_plain_json(item)
    elif isinstance(value, list):
        for item in value:
            assert_plain_json(item)
    else:
        assert value is None or type(value) in (str, int, float), f"{value!r} is a {type(value)}"
        assert not (type(value) is float and math.isnan(value))


def assert_close_or_none(actual, expected, what):
    if expected is None:
        assert actual is None, what
    else:
        assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12), what


# ------------------------------------------------------------------------------------- random vs sklearn


@pytest.mark.parametrize("seed", SEEDS)
def test_binary_metrics_match_sklearn(seed):
    labels, scores, threshold = random_case(seed)
    ours = binary_metrics_no_warnings(labels, scores, threshold)

    assert ours["auc"] == pytest.approx(skm.roc_auc_score(labels, scores), rel=1e-12, abs=1e-12)
    assert ours["ap"] == pytest.approx(skm.average_precision_score(labels, scores), rel=1e-12, abs=1e-12)
    # sklearn 1.9 clips to the float64 eps; clipping to the DFDC's 1e-15 first makes its clip a no-op
    clipped = np.clip(scores, 1e-15, 1 - 1e-15)
    assert ours["log_loss"] == pytest.approx(skm.log_loss(labels, y_proba=clipped, labels=[0, 1]), rel=1e-12)

    expected = sklearn_threshold_metrics(labels, scores, threshold)
    for key in THRESHOLD_KEYS:
        assert_close_or_none(ours[key], expected[key], key)
    assert ours["confusion"] == expected["confusion"]
    assert ours["count"] == len(labels) and ours["positives"] == int(labels.sum())
    assert_plain_json(ours)


@pytest.mark.parametrize("seed", SEEDS)
def test_curves_match_sklearn(seed):
    labels, scores, _ = random_case(seed)
    for drop_intermediate in (True, False):
        ours = roc_curve(labels, scores, drop_intermediate=drop_intermediate)
        theirs = skm.roc_curve(labels, scores, drop_intermediate=drop_intermediate)
        for our_array, their_array in zip(ours, theirs):
            np.testing.assert_allclose(our_array, their_array, rtol=1e-12, atol=0)
        ours = precision_recall_curve(labels, scores, drop_intermediate=drop_intermediate)
        theirs = skm.precision_recall_curve(labels, scores, drop_intermediate=drop_intermediate)
        for our_array, their_array in zip(ours, theirs):
            np.testing.assert_allclose(our_array, their_array, rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_eer_is_where_fpr_meets_fnr(seed):
    labels, scores, _ = random_case(seed)
    eer = equal_error_rate(labels, scores)
    fpr, tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1 - tpr
    # the crossing lies on the segment between the last point with FPR < FNR and the next one
    after = int(np.argmax(fpr >= fnr))
    before = after - 1
    tolerance = 1e-12
    assert fpr[before] - tolerance <= eer <= fpr[after] + tolerance
    assert fnr[after] - tolerance <= eer <= fnr[before] + tolerance
    # so the ROC point where FPR ~ FNR is within one segment's step of the EER
    closest = int(np.argmin(np.abs(fpr - fnr)))
    step = max(fpr[after] - fpr[before], fnr[before] - fnr[after])
    assert abs(eer - fpr[closest]) <= step + tolerance
    assert abs(eer - fnr[closest]) <= step + tolerance


# ------------------------------------------------------------------------------------------ hand-made


@pytest.mark.parametrize("labels, scores, expected_eer", [
    ([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5),  # the ROC curve passes through (0.5, 0.5)
    ([1, 1, 0, 0, 0], [0.9, 0.3, 0.8, 0.2, 0.1], 1 / 3),  # crossing on a vertical segment at FPR 1/3
    ([1, 1, 0, 0], [0.7, 0.5, 0.5, 0.1], 0.25),  # crossing halfway along a tie's diagonal (0,.5)-(.5,1)
    ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 0.0),  # perfect
    ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9], 1.0),  # perfectly wrong
    ([0, 1, 0, 1, 1], [0.4] * 5, 0.5),  # all tied: the diagonal
])
def test_eer_known_answers(labels, scores, expected_eer):
    assert equal_error_rate(labels, scores) == pytest.approx(expected_eer, abs=1e-12)
    assert binary_metrics_no_warnings(labels, scores)["eer"] == pytest.approx(expected_eer, abs=1e-12)


def test_hand_counted_confusion_metrics():
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    scores = [0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.5, 0.5]  # 0.5 counts as fake at threshold 0.5
    result = binary_metrics_no_warnings(labels, scores)
    assert result["confusion"] == {"tn": 2, "fp": 2, "fn": 1, "tp": 3}
    assert result["specificity"] == pytest.approx(2 / 4)
    assert result["npv"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(3 / 5)
    assert result["recall"] == pytest.approx(3 / 4)
    assert result["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)


def test_log_loss_clips_scores_of_exactly_0_and_1():
    # a confidently right 0/1 score costs ~1e-15, a confidently wrong one -log(1e-15) = 34.54; near 1 the bound is
    # the float64 nearest to 1 - 1e-15, so a real video scored 1.0 costs -log(1 - (1 - 1e-15)) = 34.5396
    result = binary_metrics_no_warnings([1, 0, 1, 0], [1.0, 0.0, 0.0, 1.0])
    upper = 1 - 1e-15
    expected = (-math.log(upper) - math.log(1 - 1e-15) - math.log(1e-15) - math.log(1 - upper)) / 4
    assert result["log_loss"] == pytest.approx(expected, rel=1e-12)
    assert binary_metrics_no_warnings([1], [0.0])["log_loss"] == pytest.approx(34.538776394910684, rel=1e-12)


# ------------------------------------------------------------------------------------- degenerate cases

DEGENERATE = {
    "only real": ([0, 0, 0, 0], [0.1, 0.7, 0.4, 0.2]),
    "only real, none predicted fake": ([0, 0, 0], [0.1, 0.2, 0.3]),
    "only fake": ([1, 1, 1], [0.9, 0.2, 0.6]),
    "only fake, all predicted fake": ([1, 1], [0.9, 0.6]),
    "no predicted fake": ([0, 1, 1, 0], [0.1, 0.4, 0.2, 0.3]),
    "all predicted fake": ([0, 1, 1], [0.6, 0.7, 0.9]),
    "one sample": ([1], [0.7]),
}


@pytest.mark.parametrize("name", DEGENERATE)
def test_degenerate_cases_give_none_or_sklearn_values(name):
    labels, scores = map(np.array, DEGENERATE[name])
    ours = binary_metrics_no_warnings(labels, scores)
    assert_plain_json(ours)
    expected = sklearn_threshold_metrics(labels, scores, 0.5)
    for key in THRESHOLD_KEYS:
        assert_close_or_none(ours[key], expected[key], key)
    assert ours["confusion"] == expected["confusion"]
    # log loss is defined with one class (sklearn needs the class list to know it)
    assert ours["log_loss"] == pytest.approx(skm.log_loss(labels, y_proba=scores, labels=[0, 1]), rel=1e-12)

    single_class = len(set(labels.tolist())) == 1
    if single_class:
        assert ours["auc"] is None and ours["eer"] is None
        with pytest.warns(UndefinedMetricWarning):  # sklearn: NaN and a warning
            assert math.isnan(skm.roc_auc_score(labels, scores))
        with pytest.raises(ValueError):
            roc_curve(labels, scores)
    if not labels.any():
        assert ours["ap"] is None  # sklearn warns and says 0.0
        with pytest.raises(ValueError):
            precision_recall_curve(labels, scores)
    elif single_class:  # only fake: precision 1 at every threshold
        assert ours["ap"] == skm.average_precision_score(labels, scores) == 1.0
        for our_array, their_array in zip(precision_recall_curve(labels, scores),
                                          skm.precision_recall_curve(labels, scores)):
            np.testing.assert_allclose(our_array, their_array)
    else:
        assert ours["ap"] == pytest.approx(skm.average_precision_score(labels, scores), rel=1e-12)
        assert ours["auc"] == pytest.approx(skm.roc_auc_score(labels, scores), rel=1e-12)


def test_undefined_values_are_none_where_sklearn_warns():
    labels, scores = [0, 1, 1, 0], [0.1, 0.4, 0.2, 0.3]  # nothing predicted fake
    with pytest.warns(UndefinedMetricWarning):
        assert skm.precision_score(labels, np.array(scores) >= 0.5) == 0.0
    result = binary_metrics_no_warnings(labels, scores)
    assert result["precision"] is None
    assert result["f1"] == 0.0 and result["mcc"] == 0.0  # defined (fn > 0), as sklearn
    assert result["npv"] == pytest.approx(0.5)


def test_no_samples():
    result = binary_metrics_no_warnings([], [])
    assert result["count"] == 0 and result["positives"] == 0
    assert result["confusion"] == {"tn": 0, "fp": 0, "fn": 0, "tp": 0}
    assert all(result[key] is None for key in ("auc", "log_loss", "ap", "eer", *THRESHOLD_KEYS))


@pytest.mark.parametrize("labels, scores", [
    ([0, 1], [0.1, float("nan")]),
    ([0, 1], [0.1, 1.5]),
    ([0, 1], [-0.1, 0.5]),
    ([0, 2], [0.1, 0.5]),
    ([0, 1, 1], [0.1, 0.5]),
])
def test_invalid_inputs_raise(labels, scores):
    with pytest.raises(ValueError):
        binary_metrics(labels, scores)


# ---------------------------------------------------------------------------------------------- aggregation


def original_confident_strategy(pred, t=0.8):
    """The DFDC winner's code (selimsef, kernel_utils.py), verbatim, as the reference."""
    pred = np.array(pred)
    sz = len(pred)
    fakes = np.count_nonzero(pred > t)
    if fakes > sz // 2.5 and fakes > 11:
        return np.mean(pred[pred > t])
    elif np.count_nonzero(pred < 0.2) > 0.9 * sz:
        return np.mean(pred[pred < 0.2])
    else:
        return np.mean(pred)


def test_registered_rules():
    assert AGGREGATIONS.names() == ["confident", "majority", "max", "mean", "median"]
    with pytest.raises(KeyError, match="did you mean"):
        aggregate([0.5], "maen")


def test_simple_rules():
    scores = [0.1, 0.4, 0.9, 0.2]
    assert aggregate(scores, "mean") == pytest.approx(0.4)
    assert aggregate(scores) == pytest.approx(0.4)  # mean by default
    assert aggregate(scores, "max") == 0.9
    assert aggregate(scores, "median") == pytest.approx(0.3)
    assert aggregate([0.1, 0.5, 0.7, 0.2], "majority") == 0.5  # 0.5 votes fake
    assert aggregate([0.6, 0.6, 0.6, 0.1], "majority") == 0.75
    assert aggregate([0.49, 0.2], "majority") == 0.0
    assert all(type(aggregate(scores, rule)) is float for rule in AGGREGATIONS.names())


def test_majority_frames_vote_at_the_verdict_threshold():
    """The issue's case: every frame (and the head) at 0.7478, the detector's threshold 0.7503. The head calls the
    videos REAL; the majority rule used to let each frame vote at 0.5 (share 1.0, every video FAKE, its accuracy
    row 1.0 where the head's read 0.0). Frames now vote by the verdict's own rule at the verdict's threshold."""
    threshold = 0.7503
    records = [{"key": f"v{index}", "label": 1, "video_score": 0.7478, "frame_scores": [0.7478, 0.7479, 0.7477]}
               for index in range(4)]
    result = evaluate_predictions(records, threshold=threshold)
    assert result["video"]["head"]["accuracy"] == 0.0
    for rule in ("majority", "mean", "max", "confident"):
        assert result["video"][rule]["confusion"] == result["video"]["head"]["confusion"], rule
    assert aggregate(records[0]["frame_scores"], "majority", threshold=threshold) == 0.0

    from dfdtrain.metrics import is_fake

    # the share of frames the verdict rule calls FAKE, at any threshold; at 0.5 as before
    generator = np.random.default_rng(0)
    for threshold in (0.2, 0.5, 0.7503, 0.9):
        scores = generator.random(25)
        assert aggregate(scores, "majority", threshold=threshold) == np.mean(is_fake(scores, threshold))
        assert is_fake(threshold, threshold) and not is_fake(np.nextafter(threshold, 0), threshold)
    assert aggregate([0.6, 0.6, 0.6, 0.1], "majority") == 0.75
    assert aggregate([0.6, 0.6, 0.6, 0.1], "majority", threshold=0.7) == 0.0


def test_confident_many_confident_fakes_gives_their_mean():
    # 30 frames, 15 above 0.8: 15 > 30 / 2.5 = 12 and 15 > 11
    fakes = np.linspace(0.85, 0.99, 15)
    scores = np.r_[fakes, np.full(15, 0.3)]
    assert aggregate(scores, "confident") == pytest.approx(fakes.mean())


def test_confident_too_few_confident_fakes_gives_the_mean():
    scores = np.r_[np.full(12, 0.9), np.full(18, 0.3)]  # 12 is not > 30 / 2.5
    assert aggregate(scores, "confident") == pytest.approx(scores.mean())
    scores = np.r_[np.full(11, 0.9), np.full(9, 0.3)]  # 11 > 20 / 2.5 but not > 11
    assert aggregate(scores, "confident") == pytest.approx(scores.mean())
    scores = np.r_[np.full(12, 0.9), np.full(8, 0.3)]  # 12 > 8 and 12 > 11
    assert aggregate(scores, "confident") == pytest.approx(0.9)
    assert aggregate(np.full(20, 0.8), "confident") == pytest.approx(0.8)  # 0.8 is not above 0.8


def test_confident_mostly_confident_real_gives_their_mean():
    # 20 frames, 19 below 0.2: 19 > 0.9 * 20 = 18
    reals = np.linspace(0.01, 0.19, 19)
    scores = np.r_[reals, 0.95]
    assert aggregate(scores, "confident") == pytest.approx(reals.mean())
    scores = np.r_[np.full(9, 0.1), 0.95]  # 9 is not > 0.9 * 10
    assert aggregate(scores, "confident") == pytest.approx(scores.mean())


def test_confident_mixed_gives_the_mean():
    scores = np.r_[np.full(10, 0.9), np.full(10, 0.1), np.full(10, 0.5)]
    assert aggregate(scores, "confident") == pytest.approx(scores.mean())


def test_confident_matches_the_original_code():
    rng = np.random.default_rng(0)
    branches = set()
    for _ in range(2000):
        count = int(rng.integers(1, 65))
        # mixtures of confident fakes, confident reals and unsure frames, so that every branch is hit
        kinds = rng.choice(3, size=count, p=rng.dirichlet([0.5, 0.5, 0.5]))
        scores = np.choose(kinds, [rng.uniform(0.8, 1.0, count), rng.uniform(0.0, 0.2, count),
                                   rng.uniform(0.2, 0.8, count)])
        scores = np.round(scores, 2)  # lands some scores exactly on 0.8 and 0.2
        assert aggregate(scores, "confident") == original_confident_strategy(scores)
        fake_count, real_count = np.count_nonzero(scores > 0.8), np.count_nonzero(scores < 0.2)
        branches.add("fake" if fake_count > count / 2.5 and fake_count > 11
                      else "real" if real_count > 0.9 * count else "mean")
    assert branches == {"fake", "real", "mean"}


def test_mask_keeps_only_real_frames():
    scores = [0.9, 0.1, 0.5, float("nan")]  # a padded frame may hold anything
    mask = [False, True, True, False]
    assert aggregate(scores, "max", mask=mask) == 0.5
    assert aggregate(scores, "mean", mask=np.array(mask)) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="mask"):
        aggregate(scores, "mean", mask=[1, 1, 0, 0])  # not booleans
    with pytest.raises(ValueError, match="mask"):
        aggregate(scores, "mean", mask=[True, False])  # not one per frame
    with pytest.raises(ValueError, match="no frame"):
        aggregate(scores, "mean", mask=[False] * 4)
    with pytest.raises(ValueError, match="no frame"):
        aggregate([], "mean")
    with pytest.raises(ValueError, match="finite"):
        aggregate(scores, "mean")  # unmasked, the NaN counts


def test_aggregate_many():
    videos = [[0.1, 0.3], [0.9, 0.7, 0.8], [0.4]]
    result = aggregate_many(videos, "mean")
    assert result.dtype == np.float64
    np.testing.assert_allclose(result, [0.2, 0.8, 0.4])
    masks = [[True, False], [False, True, True], [True]]
    np.testing.assert_allclose(aggregate_many(videos, "max", masks=masks), [0.1, 0.8, 0.4])
    assert aggregate_many([], "mean").shape == (0,)


# ---------------------------------------------------------------------------------------------- evaluation


def random_records(seed, count=60, with_head=True):
    rng = np.random.default_rng(seed)
    records = []
    for index in range(count):
        label = int(index % 3 == 0)  # imbalanced: a third fake
        frame_count = int(rng.integers(1, 40))
        video_offset = rng.normal(0, 0.15)  # videos differ, so no rule separates the classes perfectly
        frame_scores = np.clip(rng.normal(0.4 + 0.15 * label + video_offset, 0.2, frame_count), 0, 1).round(2)
        record = {"key": f"video_{index:03d}.mp4", "label": label, "frame_scores": frame_scores.tolist()}
        if with_head:
            record["video_score"] = float(np.clip(rng.normal(0.3 + 0.4 * label, 0.2), 0, 1))
        records.append(record)
    return records


def test_evaluate_predictions_matches_sklearn_and_is_json():
    records = random_records(0)
    result = evaluate_predictions(records)
    json.dumps(result, allow_nan=False)
    assert_plain_json(result)
    assert list(result["video"]) == ["head", "mean", "max", "majority", "confident"]

    labels = [record["label"] for record in records]
    mean_scores = [np.mean(record["frame_scores"]) for record in records]
    assert result["video"]["mean"]["auc"] == pytest.approx(skm.roc_auc_score(labels, mean_scores), rel=1e-12)
    head_scores = [record["video_score"] for record in records]
    assert result["video"]["head"]["auc"] == pytest.approx(skm.roc_auc_score(labels, head_scores), rel=1e-12)
    confident_scores = [original_confident_strategy(record["frame_scores"]) for record in records]
    assert result["video"]["confident"]["auc"] == pytest.approx(skm.roc_auc_score(labels, confident_scores),
                                                                 rel=1e-12)
    frame_labels = [record["label"] for record in records for _ in record["frame_scores"]]
    frame_scores = [score for record in records for score in record["frame_scores"]]
    assert result["frame"]["auc"] == pytest.approx(skm.roc_auc_score(frame_labels, frame_scores), rel=1e-12)
    assert 0.5 < result["video"]["mean"]["auc"] < 1.0
    assert result["videos"] == len(records) == result["video"]["mean"]["count"]
    assert result["frames"] == len(frame_scores) == result["frame"]["count"]


def test_evaluate_predictions_head_only_when_every_video_has_a_score():
    records = random_records(1, count=10, with_head=False)
    result = evaluate_predictions(records, rules=("median",))
    assert list(result["video"]) == ["median"]
    records[3]["video_score"] = None  # None counts as absent
    assert "head" not in evaluate_predictions(records)["video"]
    records[4]["video_score"] = 0.7
    with pytest.raises(ValueError, match="video_000"):  # names the first video without a score
        evaluate_predictions(records)


def test_evaluate_predictions_rejects_bad_records():
    with pytest.raises(ValueError, match="no frame scores"):
        evaluate_predictions([{"key": "a.mp4", "label": 1, "frame_scores": []}])
    with pytest.raises(ValueError, match="label"):
        evaluate_predictions([{"key": "a.mp4", "label": "FAKE", "frame_scores": [0.5]}])
    with pytest.raises(KeyError, match="unknown aggregation rule"):
        evaluate_predictions(random_records(0, count=3), rules=("mean", "vote"))


@pytest.mark.parametrize("seed", range(3))
def test_expected_calibration_error_matches_sklearn_calibration_curve(seed):
    from dfdtrain.metrics import expected_calibration_error

    generator = np.random.default_rng(seed)
    scores = np.r_[generator.random(300), 0.0, 1.0]  # (a score on an inner edge: sklearn bins it lower, we higher)
    labels = (generator.random(scores.size) < scores ** 2).astype(int)
    from sklearn.calibration import calibration_curve

    fraction_fake, mean_score = calibration_curve(labels, scores, n_bins=10, strategy="uniform")
    counts = np.histogram(scores, bins=np.linspace(0, 1, 11))[0]  # sklearn's bins: the last one closed, as ours
    expected = np.sum(counts[counts > 0] * np.abs(fraction_fake - mean_score)) / scores.size
    assert expected_calibration_error(labels, scores) == pytest.approx(expected, abs=1e-12)
    assert binary_metrics(labels, scores)["ece"] == expected_calibration_error(labels, scores)


def test_format_metrics_table():
    table = format_metrics_table(evaluate_predictions(random_records(2)))
    lines = table.splitlines()
    assert lines[0].startswith("60 videos, ")
    assert lines[1].split() == ["level", "auc", "log_loss", "ece", "ap", "eer", "acc", "prec", "rec", "spec", "npv",
                                "f1", "mcc"]
    assert [line.split()[0] for line in lines[3:]] == ["video/head", "video/mean", "video/max", "video/majority",
                                                      "video/confident", "frame"]
    assert len({len(line) for line in lines[1:]}) == 1  # aligned columns
    assert all(len(line.split()) == 13 for line in lines[3:])

    # only real videos: the ranking metrics are undefined and shown as "-"
    only_real = [{"key": "a", "label": 0, "frame_scores": [0.2, 0.3]}, {"key": "b", "label": 0, "frame_scores": [0.1]}]
    frame_row = format_metrics_table(evaluate_predictions(only_real)).splitlines()[-1].split()
    assert frame_row[0] == "frame"
    assert frame_row[1] == "-" and frame_row[4] == "-" and frame_row[5] == "-"  # auc, ap, eer
    assert frame_row[8] == "-"  # recall
    assert float(frame_row[2]) > 0 and float(frame_row[3]) > 0  # log loss and ECE are defined


def test_intervals_need_two_groups_of_each_class():
    """A 1-group set used to get a zero-width interval (every resample is the same videos), which looks certain:
    with fewer than 2 groups of real or of fake samples there is no interval, and interval_problem says why."""
    from dfdtrain.metrics import bootstrap_intervals

    labels, scores = [0, 1], [0.7478, 0.7478]
    assert bootstrap_intervals(labels, scores, ["person", "person"], threshold=0.7503, resamples=200) == {
        name: None for name in ("auc", "ap", "eer", "log_loss", "ece", "accuracy")}

    from dfdtrain.metrics import groups_per_class, interval_problem

    counts = groups_per_class(labels, ["person", "person"])
    assert counts == {"total": 1, "real": 1, "fake": 1}
    problem = interval_problem(counts)
    assert problem.startswith("1 group (1 with real, 1 with fake videos)") and "at least 2 groups of each" in problem
    # 3 groups, but only one holds real videos: still none; 2 of each: intervals
    labels, scores = [0, 1, 1, 1], [0.2, 0.7, 0.8, 0.4]
    assert groups_per_class(labels, ["a", "a", "b", "c"]) == {"total": 3, "real": 1, "fake": 3}
    assert bootstrap_intervals(labels, scores, ["a", "a", "b", "c"], resamples=200)["accuracy"] is None
    labels, scores, groups = [0, 1, 0, 1], [0.2, 0.7, 0.4, 0.6], ["a", "a", "b", "b"]
    assert interval_problem(groups_per_class(labels, groups)) is None
    assert bootstrap_intervals(labels, scores, groups, resamples=200)["accuracy"] is not None


def test_synthetic_twins_are_reported_apart_from_the_real_data():
    from dfdtrain.evaluation.scoring import summarize

    records = [{"key": f"r{index}", "label": 0, "video_score": score, "frame_scores": [score]}
               for index, score in enumerate([0.1, 0.4, 0.7])]
    records.append({"key": "f0", "label": 1, "video_score": 0.8, "frame_scores": [0.8]})
    twins = [{"key": f"r{index}+sbi", "label": 1, "video_score": score, "frame_scores": [score], "synthetic": True,
              "synthesis": "sbi"} for index, score in enumerate([0.5, 0.9, 0.3])]
    metrics = summarize(records + twins, threshold=0.5)
    plain = evaluate_predictions(records, threshold=0.5)
    assert {name: metrics[name] for name in plain} == plain  # the twins never enter the real data's numbers
    synthetic = metrics["synthetic"]
    assert (synthetic["videos"], synthetic["reals"], synthetic["method"]) == (3, 3, "sbi")
    # reals 0.1, 0.4, 0.7 against twins 0.5, 0.9, 0.3: 6 of the 9 pairs ranked right; 4 of 6 called right
    assert synthetic["auc"] == pytest.approx(6 / 9) and synthetic["accuracy"] == pytest.approx(4 / 6)
    assert "synthetic twins (sbi), apart from the above: 3 against 3 real videos" in format_metrics_table(metrics)
    assert "synthetic" not in summarize(records, threshold=0.5)
