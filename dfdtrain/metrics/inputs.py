"""The checks every metric makes of its inputs: labels are 0 (real) or 1 (fake), scores are finite probabilities,
one of each per sample. A bad input is a ValueError naming what is wrong, before any metric is computed."""

import numpy as np


def as_labels(labels):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D sequence, got shape {labels.shape}")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (real) or 1 (fake), got values {np.unique(labels)[:10].tolist()}")
    return labels.astype(np.int64)


def as_scores(scores, what="scores"):
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} must be finite (found NaN or inf)")
    if scores.size and (scores.min() < 0.0 or scores.max() > 1.0):
        raise ValueError(f"{what} must be probabilities in [0, 1], got range [{scores.min()}, {scores.max()}]")
    return scores


def as_labels_and_scores(labels, scores):
    labels = as_labels(labels)
    scores = as_scores(scores)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}")
    return labels, scores
