"""Score every hill-climbing candidate at once from the running sum of the picked models.

A scorer is ``score(total, count, candidates) -> scores``: ``total`` is the sum of the ``count``
models picked so far, shape (n_rows, n_columns), and candidate ``m`` is scored on the blend
``(total + preds[m]) / (count + 1)``. The built-in log loss, accuracy, roc_auc, rmse and mae
are vectorised across candidates; any other metric falls back to one call per candidate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import numpy as np
from scipy.stats import rankdata

from medalist.metrics import BUILTIN, Metric

log = logging.getLogger(__name__)
Scorer = Callable[[np.ndarray, int, np.ndarray], np.ndarray]
EPS = 1e-15
CHUNK_VALUES = 1 << 21  # values per batched temporary (16 MiB in float64)


def _chunks(candidates: np.ndarray, values_per_candidate: int) -> Iterator[slice]:
    step = max(1, CHUNK_VALUES // max(values_per_candidate, 1))
    for start in range(0, len(candidates), step):
        yield slice(start, start + step)


def _blends(preds, total, count, candidates) -> Iterator[tuple[slice, np.ndarray]]:
    """Candidates' blends in chunks, shape (chunk, n_rows, n_columns)."""
    for part in _chunks(candidates, total.size):
        yield part, (total[None] + preds[candidates[part]]) / (count + 1)


def _multiclass_log_loss(preds, y) -> Scorer:
    rows = np.arange(len(y))
    true = preds[:, rows, y]  # (n_models, n_rows): probability of the true class

    def score(total, count, candidates):
        q = (total[rows, y][None] + true[candidates]) / (count + 1)
        return -np.log(np.clip(q, EPS, 1.0)).mean(axis=1)

    return score


def _log_loss(preds, y) -> Scorer:
    if y.ndim == 1 and preds.shape[2] > 1:
        return _multiclass_log_loss(preds, y)
    positive = y.reshape(len(y), -1) == 1  # binary (n, 1) or multilabel (n, n_labels)

    def score(total, count, candidates):
        out = np.empty(len(candidates))
        for part, blend in _blends(preds, total, count, candidates):
            p = np.clip(blend, EPS, 1 - EPS)
            out[part] = -np.where(positive, np.log(p), np.log1p(-p)).mean(axis=(1, 2))
        return out

    return score


def _threshold_accuracy(preds, y) -> Scorer:
    truth = y.reshape(len(y), -1) == 1

    def score(total, count, candidates):
        out = np.empty(len(candidates))
        for part, blend in _blends(preds, total, count, candidates):
            out[part] = ((blend >= 0.5) == truth).all(axis=2).mean(axis=1)
        return out

    return score


def _class_swings(preds, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row and class: the most and least any model lifts class c over the true class.

    Returns ``(highest, lowest, single)``: ``max_m`` and ``min_m`` of ``preds[m, i, c] -
    preds[m, i, y_i]`` (-inf at the true class), and each model's own accuracy.
    """
    rows = np.arange(len(y))
    highest = np.full(preds.shape[1:], -np.inf)
    lowest = np.full(preds.shape[1:], np.inf)
    single = np.empty(len(preds))
    for m, table in enumerate(preds):
        lift = table - table[rows, y][:, None]
        np.maximum(highest, lift, out=highest)
        np.minimum(lowest, lift, out=lowest)
        single[m] = np.mean(table.argmax(axis=1) == y)
    highest[rows, y] = lowest[rows, y] = -np.inf
    return highest, lowest, single


def _multiclass_accuracy(preds, y) -> Scorer:
    """Argmax accuracy, blending in full only the rows some candidate could flip.

    Class c threatens the true class of row i when ``total`` plus the largest lift any model
    gives c (``highest``) reaches it. A row without threats is right for every candidate; a
    row where some class stays ahead even with the smallest lift (``lowest``) is wrong for
    every candidate; a row with one threat compares two gathered values per candidate; only
    the rest is blended over every class. A small slack absorbs rounding in the bounds, so the
    result equals the argmax of every blend (ties to the first class, as ``argmax``).
    """
    highest, lowest, single = _class_swings(preds, y)
    n_rows, n_classes = preds.shape[1:]
    rows = np.arange(n_rows)
    flat = preds.reshape(len(preds), -1)
    true = preds[:, rows, y]
    eps = np.finfo(preds.dtype).eps if np.issubdtype(preds.dtype, np.floating) else 0.0
    scale = 1.0 + float(np.abs(preds).max())

    def score(total, count, candidates):
        if count == 0:
            return single[candidates]
        slack = (8 * eps + 1e-12 * (count + 1)) * scale
        truth = total[rows, y]
        gap = total - truth[:, None]  # < 0: class behind the true class
        threat = gap + highest >= -slack
        lost = (gap + lowest > slack).any(axis=1)  # no candidate can save these rows
        threat[lost] = False
        threats = threat.sum(axis=1)
        hits = np.full(len(candidates), np.sum((threats == 0) & ~lost), dtype=np.int64)
        i = np.flatnonzero(threats == 1)
        rival = threat[i].argmax(axis=1)
        mine = truth[i][None] + true[candidates[:, None], i[None]]
        theirs = total[i, rival][None] + flat[candidates[:, None], (i * n_classes + rival)[None]]
        hits += ((mine > theirs) | ((mine == theirs) & (y[i] < rival))).sum(axis=1)
        many = np.flatnonzero(threats > 1)
        for part in _chunks(many, len(candidates) * n_classes):
            i = many[part]
            blend = total[i][None] + preds[candidates[:, None], i[None]]
            hits += (blend.argmax(axis=2) == y[i]).sum(axis=1)
        return hits / n_rows

    return score


def _accuracy(preds, y) -> Scorer:
    if y.ndim == 1 and preds.shape[2] > 1:
        return _multiclass_accuracy(preds, y)
    return _threshold_accuracy(preds, y)


def _binary_auc(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row of ``scores`` (n_candidates, n_rows), ties counted half."""
    ranks = rankdata(scores, axis=1)
    n_pos = positive.sum()
    n_neg = positive.size - n_pos
    return (ranks[:, positive].sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _roc_auc(preds, y) -> Scorer:
    if y.ndim == 1 and preds.shape[2] > 1:  # one-vs-rest, macro average
        truth = y[:, None] == np.arange(preds.shape[2])[None]
    else:
        truth = y.reshape(len(y), -1) == 1

    def score(total, count, candidates):
        out = np.zeros(len(candidates))
        for part, blend in _blends(preds, total, count, candidates):
            for column in range(truth.shape[1]):
                out[part] += _binary_auc(blend[:, :, column], truth[:, column])
        return out / truth.shape[1]

    return score


def _error(kind: str) -> Callable:
    def make(preds, y) -> Scorer:
        target = y.reshape(preds.shape[1:])

        def score(total, count, candidates):
            out = np.empty(len(candidates))
            for part, blend in _blends(preds, total, count, candidates):
                diff = blend - target[None]
                out[part] = (
                    np.sqrt((diff**2).mean(axis=(1, 2)))
                    if kind == "rmse"
                    else np.abs(diff).mean(axis=(1, 2))
                )
            return out

        return score

    return make


def _fallback(metric: Metric, preds, y) -> Scorer:
    def score(total, count, candidates):
        return np.array([metric(y, (total + preds[m]) / (count + 1)) for m in candidates])

    return score


VECTORISED = {
    "log_loss": _log_loss,
    "accuracy": _accuracy,
    "roc_auc": _roc_auc,
    "rmse": _error("rmse"),
    "mae": _error("mae"),
}


def batch_scorer(metric: Metric, preds: np.ndarray, y: np.ndarray) -> Scorer:
    """The candidate scorer of ``metric``: vectorised for the built-ins listed above."""
    builtin = BUILTIN.get(metric.name)
    if builtin is not None and builtin.fn is metric.fn and metric.name in VECTORISED:
        return VECTORISED[metric.name](preds, y)
    log.info("hill climbing: %s is scored one candidate at a time", metric.name)
    return _fallback(metric, preds, y)
