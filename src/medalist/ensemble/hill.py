"""Hill climbing ensemble selection (Caruana et al., ICML 2004).

Start from the empty ensemble; at every step add the model whose addition gives the best OOF
score; stop when none improves it (or ``patience`` steps later, keeping the best selection
seen) or after ``iterations`` additions. The weights are the pick counts over their total.

A step scores each candidate ``m`` on the blend ``(total + preds[m]) / (count + 1)``, ``total``
the sum of the ``count`` models picked so far. :func:`naive_hill_climb`, the reference, calls
the metric once per candidate (:func:`per_candidate`); :func:`hill_climb` scores all of them
together for the built-in metrics (:func:`batch_scorer`), to the reference's scores within 1e-9.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from medalist.metrics import BUILTIN, Metric

log = logging.getLogger(__name__)
Scorer = Callable[[np.ndarray, int, np.ndarray], np.ndarray]  # (total, count, candidates)
EPS = 1e-15  # the metrics' clip of probabilities
CHUNK_VALUES = 1 << 20  # float64 values per temporary (8 MiB)


@dataclass
class HillResult:
    """The picked models in order, their counts (``picks``) and shares of the total
    (``weights``), and the score after each pick."""

    selection: list[int] = field(default_factory=list)
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    picks: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    history: list[float] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.history[-1] if self.history else float("nan")


def _pick(scores: np.ndarray, metric: Metric) -> int:
    """Index of the best score (the first on ties); NaN never wins."""
    signed = np.where(np.isnan(scores), -np.inf, scores if metric.greater_is_better else -scores)
    return int(np.argmax(signed))


def climb(
    n_models: int,
    metric: Metric,
    iterations: int,
    replacement: bool,
    patience: int,
    score: Callable[[np.ndarray, int], np.ndarray],
    add: Callable[[int], None],
) -> HillResult:
    """The selection itself, whatever the predictions are: ``score(candidates, count)`` scores
    the blend of the ``count`` models picked so far with each candidate added, and ``add(model)``
    adds a picked model to that blend (tables here, masks in
    :mod:`medalist.modalities.segmentation.blend`). The weights are the pick counts over their
    total; ``picks`` the counts themselves."""
    counts = np.zeros(n_models, dtype=np.int64)
    result = HillResult()
    kept, stale = 0, 0  # the length of the best selection so far; steps since it improved
    for _ in range(iterations):
        candidates = np.arange(n_models) if replacement else np.flatnonzero(counts == 0)
        if candidates.size == 0:
            break
        scores = score(candidates, int(counts.sum()))
        best = _pick(scores, metric)
        if kept and not metric.better(scores[best], result.history[kept - 1]):
            stale += 1
            if stale > patience:
                break
        else:
            kept, stale = len(result.selection) + 1, 0
        model = int(candidates[best])
        add(model)
        counts[model] += 1
        result.selection.append(model)
        result.history.append(float(scores[best]))
    # The best selection: the steps after it (patience) did not beat it.
    del result.selection[kept:], result.history[kept:]
    result.picks = np.bincount(np.array(result.selection, dtype=np.int64), minlength=n_models)
    result.weights = result.picks / max(result.picks.sum(), 1)
    return result


def _climb(preds, metric, iterations, replacement, patience, score: Scorer) -> HillResult:
    """:func:`climb` on prediction tables (n_models, n_rows, n_columns), with a table scorer."""
    total = np.zeros(preds.shape[1:], dtype=np.float64)  # the sum of the picked models

    def add(model: int) -> None:
        total[...] += preds[model]

    return climb(
        len(preds),
        metric,
        iterations,
        replacement,
        patience,
        lambda candidates, count: score(total, count, candidates),
        add,
    )


def hill_climb(
    preds: np.ndarray,
    y: np.ndarray,
    metric: Metric,
    iterations: int = 100,
    replacement: bool = True,
    patience: int = 0,
) -> HillResult:
    """Caruana ensemble selection, the candidates of a step scored together.

    Args:
        preds: OOF predictions, shape (n_models, n_rows, n_columns).
        y: targets in the metric's format (class indices, 0/1 columns or values).
        metric: the score to optimise, with its direction.
        iterations: at most this many additions.
        replacement: whether a model may be picked again.
        patience: steps to go on after the score stops improving, keeping the best selection
            seen: lets the climb re-pick a model (no better by itself) to make room for a small
            weight on another (after one pick the next can only make it 50:50).

    Returns:
        The selection, weights (non-negative, summing to one) and score history.

    Example:
        >>> from medalist.metrics import get_metric
        >>> y = np.array([0, 1, 1, 0])
        >>> good = np.array([[0.1], [0.9], [0.8], [0.3]])
        >>> bad = np.array([[0.6], [0.4], [0.5], [0.5]])
        >>> hill_climb(np.stack([bad, good]), y, get_metric("log_loss")).weights.tolist()
        [0.0, 1.0]
    """
    return _climb(preds, metric, iterations, replacement, patience, batch_scorer(metric, preds, y))


def naive_hill_climb(preds, y, metric, iterations=100, replacement=True, patience=0) -> HillResult:
    """The reference: a blend and a metric call per candidate. Arguments as :func:`hill_climb`."""
    return _climb(preds, metric, iterations, replacement, patience, per_candidate(metric, preds, y))


# Scorers: ``score(total, count, candidates) -> scores``, the blends as in the module docstring.


def per_candidate(metric: Metric, preds: np.ndarray, y: np.ndarray) -> Scorer:
    """The reference scorer for any metric: one blend and one metric call per candidate."""

    def score(total, count, candidates):
        with warnings.catch_warnings():  # float32 probabilities never sum to exactly one
            warnings.filterwarnings("ignore", message=".*do not sum to one.*")
            return np.array([metric(y, (total + preds[m]) / (count + 1)) for m in candidates])

    return score


def _by_chunks(fn, candidates: np.ndarray, values_per_candidate: int) -> np.ndarray:
    """``fn(chunk of candidates) -> their scores``, over chunks of at most CHUNK_VALUES."""
    out = np.empty(len(candidates))
    step = max(1, CHUNK_VALUES // max(values_per_candidate, 1))
    for start in range(0, len(candidates), step):
        out[start : start + step] = fn(candidates[start : start + step])
    return out


# Scores of blends (chunk, n_rows, n_columns), as the metrics compute them for one blend.
def _log_loss(b, y):  # binary (one column) or multilabel: mean binary log loss
    target, p = y.reshape(b.shape[1:]).astype(np.float64), np.clip(b, EPS, 1 - EPS)
    return -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p), axis=(1, 2))


def _accuracy(b, y):  # binary or multilabel: every label right at threshold 0.5
    return np.mean(np.all((b >= 0.5) == (y.reshape(b.shape[1:]) == 1), axis=2), axis=1)


def _roc_auc(b, y):  # Mann-Whitney per column, ties counted half; classes one-vs-rest
    truth = y[:, None] == np.arange(b.shape[2]) if y.ndim == 1 and b.shape[2] > 1 else y == 1
    truth = truth.reshape(b.shape[1:])
    n_pos = truth.sum(axis=0)
    u = np.sum(rankdata(b, axis=1) * truth, axis=1) - n_pos * (n_pos + 1) / 2
    return np.mean(u / (n_pos * (len(truth) - n_pos)), axis=1)


def _blended(preds: np.ndarray, y: np.ndarray, fn) -> Scorer:
    """The scorer of ``fn(blends, y) -> scores``: the candidates' blends, a chunk at a time."""

    def score(total, count, candidates):
        def chunk(part):
            return fn((total[None] + preds[part]) / (count + 1), y)

        return _by_chunks(chunk, candidates, total.size)

    return score


def _multiclass_log_loss(preds: np.ndarray, y: np.ndarray) -> Scorer | None:
    """The metric clips ``b`` to [eps, 1] and rescales each row to sum to one: a row scores
    ``log(s / clip(b_y))``, ``s`` the row's sum of ``b``, i.e. ``log(S / max(B_y, n eps))``
    with ``B = total + p`` and ``n = count + 1`` (``b_y <= 1`` for probabilities). Two numbers
    per row and candidate. Leaving out the clip of the other classes moves ``s`` by at most
    ``n_classes * eps``: hence values in [0, 1] with rows summing to 1 +- 1e-3 only (else None)."""
    sums = np.einsum("mrc->mr", preds, dtype=np.float64)  # row sums (einsum: 2-3x .sum's speed)
    probabilities = np.nanmin(preds, initial=0) >= 0 and np.nanmax(preds, initial=1) <= 1
    if not (probabilities and np.nanmax(np.abs(sums - 1), initial=0) <= 1e-3):
        return None  # (NaN passes: it stays NaN, as in the metric)
    rows = np.arange(len(y))
    true = preds[:, rows, y].astype(np.float64)  # (models, rows)

    def score(total, count, candidates):
        total_y, total_sum = total[rows, y], np.einsum("rc->r", total)

        def chunk(part):  # in place: fewer passes over (chunk, n_rows)
            ratio, true_y = sums[part], true[part]
            ratio += total_sum
            true_y += total_y
            ratio /= np.maximum(true_y, (count + 1) * EPS, out=true_y)
            return np.mean(np.log(ratio, out=ratio), axis=1)

        return _by_chunks(chunk, candidates, len(rows))

    return score


def _argmax_is(blend: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``blend.argmax(axis=0) == y`` (the first maximum, or the first NaN), ``blend`` (classes,
    rows) overwritten: elementwise passes, far faster than ``argmax`` over short rows."""
    cols = np.arange(len(y))
    true = blend[y, cols]
    for c in range(1, len(blend)):  # blend[c] becomes the max of classes 0..c (NaN wins)
        np.maximum(blend[c - 1], blend[c], out=blend[c])
    earlier = np.where(y > 0, blend[y - 1, cols], -np.inf)  # the max before the true class
    beats = (true >= blend[-1]) & (true > earlier)  # (any NaN: False)
    return beats | (np.isnan(true) & ~np.isnan(earlier))


def _max_lifted(total: np.ndarray, bound: np.ndarray) -> np.ndarray:
    """``max_c (total[:, c] + bound[c])`` per row, a class at a time (NaN propagates)."""
    out, column = total[:, 0] + bound[0], np.empty(len(total))
    for c in range(1, len(bound)):
        np.maximum(out, np.add(total[:, c], bound[c], out=column), out=out)
    return out


def _multiclass_accuracy(preds: np.ndarray, y: np.ndarray) -> Scorer:
    """Argmax accuracy, blending only the rows that some candidate could decide either way.

    Candidate m's blend puts class c below the true class when ``T_c + L_mc < T_y`` (``T``:
    the total, ``L_mc = p_mc - p_my``). With ``hi_c = max_m L_mc`` and ``lo_c = min_m L_mc``
    per row, a row with ``max_c (T_c + hi_c) < T_y - slack`` is right for every candidate, one
    with ``max_c (T_c + lo_c) > T_y + slack`` wrong for every one (c != y); each candidate
    blends the other rows as the reference does. The slack is far above the rounding of ``L``
    and of the blends, so the accuracy is exactly the reference's (NaN rows are blended).
    The bounds and blends are held as (classes, rows): reductions over the classes are fast.
    """
    n_rows, n_classes = preds.shape[1:]
    rows = np.arange(n_rows)
    true = preds[:, rows, y]  # (models, rows)
    dtype = np.result_type(preds.dtype, np.float32)
    hi, lo = np.empty((2, n_classes, n_rows), dtype=dtype)
    step = max(1, CHUNK_VALUES // (len(preds) * n_classes))  # rows a block
    for block in (slice(start, start + step) for start in range(0, n_rows, step)):
        lift = np.subtract(preds[:, block], true[:, block, None], dtype=dtype)
        hi[:, block], lo[:, block] = lift.max(axis=0).T, lift.min(axis=0).T  # NaN propagates
    hi[y, rows] = lo[y, rows] = -np.inf
    size = 1.0 + max(float(np.nanmax(preds, initial=0)), -float(np.nanmin(preds, initial=0)))

    def score(total, count, candidates):
        n, slack = count + 1, size * (4 * np.finfo(dtype).eps + 1e-9 * (count + 1))
        total_y = total[rows, y]
        right = _max_lifted(total, hi) < total_y - slack  # (NaN: not right)
        wrong = _max_lifted(total, lo) > total_y + slack
        open_ = np.flatnonzero(~(right | wrong))
        total_open, y_open = np.ascontiguousarray(total[open_].T), y[open_]

        def hits(m):  # the reference's blend, on the open rows only
            blend = np.add(total_open, preds[m].take(open_, axis=0).T)
            blend /= n
            return np.count_nonzero(_argmax_is(blend, y_open))

        return (np.count_nonzero(right) + np.array([hits(m) for m in candidates])) / n_rows

    return score


BLENDED = {
    "log_loss": _log_loss,
    "accuracy": _accuracy,
    "roc_auc": _roc_auc,
    "rmse": lambda b, y: np.sqrt(np.mean((y.reshape(b.shape[1:]) - b) ** 2, axis=(1, 2))),
    "mae": lambda b, y: np.mean(np.abs(y.reshape(b.shape[1:]) - b), axis=(1, 2)),
}
MULTICLASS = {"log_loss": _multiclass_log_loss, "accuracy": _multiclass_accuracy}


def batch_scorer(metric: Metric, preds: np.ndarray, y: np.ndarray) -> Scorer:
    """The candidate scorer of ``metric``: vectorised for the built-ins above, else (and for
    multiclass log loss on values that are not probabilities) the reference."""
    scorer = None
    if BUILTIN.get(metric.name) == metric and len(preds):
        if y.ndim == 1 and preds.shape[2] > 1 and metric.name in MULTICLASS:
            scorer = MULTICLASS[metric.name](preds, y)
        elif metric.name in BLENDED:
            scorer = _blended(preds, y, BLENDED[metric.name])
    if scorer is None:
        log.info("hill climbing: %s is scored one candidate at a time", metric.name)
        return per_candidate(metric, preds, y)
    return scorer
