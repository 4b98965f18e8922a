"""The metrics need no scikit-learn: importing dfdtrain's metrics leaves sklearn unimported."""

import math
import subprocess
import sys

import numpy as np
import pytest

from support import REPO

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


# ------------------------------------------------------------------------------------------ hand-made


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


def test_library_does_not_import_sklearn():
    code = "import sys, dfdtrain.metrics; assert not any(name.startswith('sklearn') for name in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
