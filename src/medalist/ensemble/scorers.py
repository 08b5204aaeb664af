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
CHUNK_VALUES = 1 << 23  # values per batched temporary (64 MiB in float64)


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


def _multiclass_accuracy(preds, y) -> Scorer:
    """Argmax accuracy without forming every blend: bounds settle most (candidate, row) pairs.

    Row i is right for candidate m when its true class beats every other class of
    ``total + preds[m]``. Above it: the other classes' ``max(total) + max(preds[m])``; below
    it: the class leading ``total`` and the class leading ``preds[m]`` (other than the true
    one). Only the pairs between the bounds are checked in full. Rounded float addition is
    monotone, so the bounds hold exactly.
    """
    rows = np.arange(len(y))
    true = preds[:, rows, y]  # (n_models, n_rows)
    other_max = np.empty_like(true)
    model_leader = np.empty(true.shape, dtype=np.int64)
    for m in range(len(preds)):
        masked = preds[m].astype(np.float64, copy=True)
        masked[rows, y] = -np.inf
        model_leader[m] = masked.argmax(axis=1)
        other_max[m] = masked[rows, model_leader[m]]

    def score(total, count, candidates):
        others = total.copy()
        others[rows, y] = -np.inf
        leader = others.argmax(axis=1)
        leader_total = others[rows, leader]
        mine = total[rows, y][None] + true[candidates]
        right = mine > leader_total[None] + other_max[candidates]
        wrong = leader_total[None] + preds[candidates[:, None], rows[None], leader[None]] > mine
        rival = model_leader[candidates]
        wrong |= total[rows[None], rival] + other_max[candidates] > mine
        unsure_m, unsure_row = np.nonzero(~(right | wrong))
        for part in _chunks(unsure_m, preds.shape[2]):
            m, i = candidates[unsure_m[part]], unsure_row[part]
            hit = (total[i] + preds[m, i]).argmax(axis=1) == y[i]
            right[unsure_m[part], i] = hit
        return right.mean(axis=1)

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
