"""Hill climbing ensemble selection (Caruana et al., ICML 2004), vectorised over candidates.

Start from the empty ensemble; at every step add the model (with replacement by default) whose
addition gives the best OOF score, and stop when no candidate improves it or after
``iterations`` additions. The weights are how often each model was picked, over the total.

The straightforward implementation scores each candidate with its own blend and metric call
(:func:`naive_hill_climb`, kept as the reference). :func:`hill_climb` keeps the running sum of
the picked models and scores every candidate in a few batched array operations (see
:mod:`medalist.ensemble.scorers`); both pick the same models. Multiclass log loss and accuracy
have faster scorers here, which look at one value per row and candidate instead of a blend of
every class: :class:`ArgmaxAccuracy` bounds each row's argmax so that only the rows a candidate
could flip are blended in full.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from medalist.ensemble.scorers import batch_scorer
from medalist.metrics import BUILTIN, Metric


@dataclass
class HillResult:
    """The picked models in order, their counts as weights, and the score after each pick."""

    selection: list[int] = field(default_factory=list)
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0))
    history: list[float] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.history[-1] if self.history else float("nan")


def _pick(scores: np.ndarray, metric: Metric) -> int:
    """Index of the best score (the first on ties); NaN never wins."""
    signed = np.where(np.isnan(scores), -np.inf, scores if metric.greater_is_better else -scores)
    return int(np.argmax(signed))


def _climb(preds, metric, iterations, replacement, score_candidates) -> HillResult:
    with warnings.catch_warnings():  # float32 probabilities never sum to exactly one
        warnings.filterwarnings("ignore", message=".*do not sum to one.*")
        return _climb_steps(preds, metric, iterations, replacement, score_candidates)


def _climb_steps(preds, metric, iterations, replacement, score_candidates) -> HillResult:
    n_models = preds.shape[0]
    total = np.zeros(preds.shape[1:], dtype=np.float64)
    counts = np.zeros(n_models, dtype=np.int64)
    result = HillResult()
    for _ in range(iterations):
        candidates = np.arange(n_models) if replacement else np.flatnonzero(counts == 0)
        if candidates.size == 0:
            break
        scores = score_candidates(total, int(counts.sum()), candidates)
        best = _pick(scores, metric)
        if result.history and not metric.better(scores[best], result.history[-1]):
            break
        model = int(candidates[best])
        total += preds[model]
        if hasattr(score_candidates, "add"):
            score_candidates.add(model)
        counts[model] += 1
        result.selection.append(model)
        result.history.append(float(scores[best]))
    result.weights = counts / max(counts.sum(), 1)
    return result


def hill_climb(
    preds: np.ndarray,
    y: np.ndarray,
    metric: Metric,
    iterations: int = 100,
    replacement: bool = True,
) -> HillResult:
    """Caruana ensemble selection, every candidate of a step scored in one batched operation.

    Args:
        preds: OOF predictions, shape (n_models, n_rows, n_columns).
        y: targets in the metric's format (class indices, 0/1 columns or values).
        metric: the score to optimise, with its direction.
        iterations: at most this many additions.
        replacement: whether a model may be picked again.

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
    scorer = _row_scorer(metric, preds, y) or batch_scorer(metric, preds, y)
    return _climb(preds, metric, iterations, replacement, scorer)


def naive_hill_climb(
    preds: np.ndarray,
    y: np.ndarray,
    metric: Metric,
    iterations: int = 100,
    replacement: bool = True,
) -> HillResult:
    """The reference: a per-candidate loop that blends and calls the metric for each one.

    Same arguments and result as :func:`hill_climb`.
    """

    def score_each(total, count, candidates):
        return np.array([metric(y, (total + preds[m]) / (count + 1)) for m in candidates])

    return _climb(preds, metric, iterations, replacement, score_each)


# ---------------------------------------------------------------------------------------------
# Multiclass scorers that touch one value per row and candidate


def _row_scorer(metric: Metric, preds: np.ndarray, y: np.ndarray):
    """A faster scorer for multiclass log loss and accuracy (built-in metrics), else None."""
    builtin = BUILTIN.get(metric.name)
    multiclass = y.ndim == 1 and preds.ndim == 3 and preds.shape[2] > 1
    if builtin is None or builtin.fn is not metric.fn or not multiclass or len(preds) == 0:
        return None
    if metric.name == "accuracy":
        return ArgmaxAccuracy(preds, y)
    if metric.name == "log_loss":
        return TrueClassLogLoss(preds, y)
    return None


class TrueClassLogLoss:
    """Multiclass log loss of every candidate from the true class's probability alone.

    ``score(total, count, candidates)``: ``-mean(log(clip((total[i, y_i] + p_m[i, y_i]) /
    (count + 1), eps, 1)))`` per candidate m, as the batched scorer computes it, in place in one
    (candidates, rows) buffer and without the division.
    """

    def __init__(self, preds: np.ndarray, y: np.ndarray, eps: float = 1e-15):
        rows = np.arange(len(y))
        self.rows, self.y, self.eps = rows, y, eps
        flat = preds.reshape(len(preds), -1)  # a flat take is faster than 3-d fancy indexing
        self.true = flat.take(rows * preds.shape[2] + y, axis=1)  # (n_models, n_rows)
        self.buffer = np.empty(self.true.shape)

    def __call__(self, total: np.ndarray, count: int, candidates: np.ndarray) -> np.ndarray:
        every = (
            len(candidates) == len(self.true) and (candidates == np.arange(len(self.true))).all()
        )
        true = self.true if every else self.true[candidates]
        q = self.buffer[: len(candidates)]
        np.add(true, total[self.rows, self.y][None], out=q)
        # log(clip(q / n, eps, 1)) as log(clip(q, n eps, n)) - log(n): one pass fewer.
        n = count + 1
        np.clip(q, self.eps * n, float(n), out=q)
        np.log(q, out=q)
        return np.log(n) - q.mean(axis=1)


class ArgmaxAccuracy:
    """Multiclass argmax accuracy of every candidate blend, exactly, from bounds on each row.

    For row i with true class y let ``T = total[i, y]``, ``R1`` the largest other class of
    ``total`` (class ``k``) and ``R2`` the second largest. Candidate m adds ``p = preds[m, i]``;
    precomputed per model and row is ``lift = max_{c != y} p_c - p_y``. The blend's true class
    loses when ``R1 + p_k > T + p_y`` and wins when ``T + p_y`` beats both ``R1 + p_k`` and
    ``R2 + max_{c != y} p_c``. A row where ``T - R1 > lift`` for every model is right for every
    candidate and costs nothing more; in the other rows each (row, candidate) pair is decided by
    these two comparisons, and a pair within a slack far above float rounding of a tie is blended
    in full with the reference's arithmetic (``(total + p) / (count + 1)``, argmax, ties to the
    first class). So the scores equal the per-candidate loop's, for a few passes over ``total``
    and one gathered value per open pair instead of a blend of every class per candidate.
    """

    def __init__(self, preds: np.ndarray, y: np.ndarray):
        n_models, n_rows, n_classes = preds.shape
        self.preds, self.y, self.n_classes = preds, y, n_classes
        self.flat = preds.reshape(n_models, n_rows * n_classes)
        self.rows = np.arange(n_rows)
        self.dtype = preds.dtype if np.issubdtype(preds.dtype, np.floating) else np.float64
        # In the predictions' precision (a float32 transpose is several times cheaper), which
        # the slack of __call__ covers.
        true = np.empty((n_models, n_rows), dtype=self.dtype)
        lift = np.empty((n_models, n_rows), dtype=self.dtype)
        largest = 0.0
        for m in range(n_models):
            plane = self._plane(m)
            largest = max(largest, float(plane.max()), -float(plane.min()))
            true[m] = plane[y, self.rows]
            plane[y, self.rows] = -np.inf
            np.subtract(np.maximum.reduce(plane, axis=0), true[m], out=lift[m])
        self.lift_max = lift.max(axis=0).astype(np.float64)
        self.eps = float(np.finfo(self.dtype).eps)
        self.true, self.lift = true, lift  # (models, rows)
        self.scale = 1.0 + largest
        # The running total as (classes, rows) with -inf at the true class, kept by add().
        self.others = np.zeros((n_classes, n_rows))
        self.others[y, self.rows] = -np.inf
        self.truth = np.zeros(n_rows)
        self.count = 0

    def _plane(self, model: int) -> np.ndarray:
        """A (classes, rows) copy of one model's predictions: reductions over classes are fast."""
        return np.array(np.asarray(self.preds[model], dtype=self.dtype).T, order="C", copy=True)

    def add(self, model: int) -> None:
        """The climb picked ``model``: add it to the running total, as the climb adds it."""
        self.others += self._plane(model)  # -inf at the true class stays -inf
        self.truth += self.true[model]  # exact: the stored values are the predictions'
        self.count += 1

    def _state(self, total: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(others, truth) of ``total``: the running ones when they match, else from ``total``."""
        if count == self.count:
            return self.others.copy(), self.truth
        plane = np.array(total.T, order="C", copy=True)
        truth = plane[self.y, self.rows]
        plane[self.y, self.rows] = -np.inf
        return plane, truth

    def __call__(self, total: np.ndarray, count: int, candidates: np.ndarray) -> np.ndarray:
        # Rounding in the blends is ~1e-16 of their size (count + 1 times the largest input),
        # in the stored lifts one unit of their precision.
        slack = (1e-9 * (count + 1) + 8 * self.eps) * self.scale
        n_models = len(self.lift)
        every = len(candidates) == n_models and bool((candidates == np.arange(n_models)).all())
        if count == 0:  # each model alone: its true class wins when no other class reaches it
            lift = self.lift if every else self.lift[candidates]
            return self._decide(total, count, candidates, self.rows, lift < -slack, lift > slack)
        plane, truth = self._state(total, count)
        rival = np.maximum.reduce(plane, axis=0)
        rival_class = np.zeros(len(self.y), dtype=np.intp)
        for c in range(self.n_classes - 1, -1, -1):  # the first class reaching the maximum
            rival_class[plane[c] == rival] = c
        plane[rival_class, self.rows] = -np.inf
        second = np.maximum.reduce(plane, axis=0)
        margin = truth - rival
        safe = margin > self.lift_max + slack  # right for every candidate
        rows = np.flatnonzero(~safe)  # NaN margins land here too
        if not rows.size:
            return np.full(len(candidates), np.count_nonzero(safe) / len(self.y))
        # Per open pair (candidate, row): the candidate's margin of the top rival class k.
        index = rows * self.n_classes + rival_class[rows]
        gap = np.stack([self.flat[m].take(index) for m in candidates]).astype(np.float64)
        true = self.true if every else self.true[candidates]
        lift = self.lift if every else self.lift[candidates]
        gap -= true.take(rows, axis=1)  # p_k - p_y, (candidates, open rows)
        margin_k, margin_2 = margin[rows][None], (truth - second)[rows][None]
        wrong = gap > margin_k + slack
        right = (gap < margin_k - slack) & (lift.take(rows, axis=1) < margin_2 - slack)
        hits = self._decide(total, count, candidates, rows, right, wrong) * len(self.y)
        return (hits + np.count_nonzero(safe)) / len(self.y)

    def _decide(self, total, count, candidates, rows, right, wrong) -> np.ndarray:
        """Accuracy per candidate over ``rows`` given decided pairs; the rest blended in full."""
        hits = right.sum(axis=1).astype(np.float64)
        which, where = np.nonzero(~(right | wrong))
        if which.size:
            row = rows[where]
            blend = (total[row] + self.preds[candidates[which], row]) / (count + 1)
            correct = blend.argmax(axis=1) == self.y[row]
            hits += np.bincount(which, weights=correct, minlength=len(candidates))
        return hits / len(self.y)
