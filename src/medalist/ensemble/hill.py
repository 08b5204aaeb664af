"""Hill climbing ensemble selection (Caruana et al., ICML 2004), vectorised over candidates.

Start from the empty ensemble; at every step add the model (with replacement by default) whose
addition gives the best OOF score, and stop when no candidate improves it (or ``patience``
steps after that, keeping the best selection seen) or after ``iterations`` additions. The
weights are how often each model was picked, over the total.

The straightforward implementation scores each candidate with its own blend and metric call
(:func:`naive_hill_climb`, kept as the reference). :func:`hill_climb` keeps the running sum of
the picked models and scores every candidate in a few batched array operations (see
:mod:`medalist.ensemble.scorers`); both pick the same models. Multiclass log loss and accuracy
have faster scorers here, which keep their own running state (:meth:`add`) and look at one or
two values per row and candidate instead of a blend of every class: :class:`TrueClassLogLoss`
(the true class's probability and each row's sum) and :class:`ArgmaxAccuracy` (bounds on each
row's argmax, so that only the rows a candidate could flip are looked at, and only for the
candidates that could still be the best of the step).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
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


def _climb(preds, metric, iterations, replacement, score_candidates, patience=0) -> HillResult:
    with warnings.catch_warnings():  # float32 probabilities never sum to exactly one
        warnings.filterwarnings("ignore", message=".*do not sum to one.*")
        return _climb_steps(preds, metric, iterations, replacement, score_candidates, patience)


def _climb_steps(preds, metric, iterations, replacement, score_candidates, patience) -> HillResult:
    n_models = preds.shape[0]
    # A scorer with add() keeps its own running total (and is called with None for it); with
    # leaders() it may score the candidates that cannot be the best of a step with a bound.
    tracking = hasattr(score_candidates, "add")
    score = getattr(score_candidates, "leaders", score_candidates)
    total = None if tracking else np.zeros(preds.shape[1:], dtype=np.float64)
    counts = np.zeros(n_models, dtype=np.int64)
    result = HillResult()
    kept, stale = 0, 0  # the length of the best selection so far; steps since it improved
    for _ in range(iterations):
        candidates = np.arange(n_models) if replacement else np.flatnonzero(counts == 0)
        if candidates.size == 0:
            break
        scores = score(total, int(counts.sum()), candidates)
        best = _pick(scores, metric)
        if kept and not metric.better(scores[best], result.history[kept - 1]):
            stale += 1
            if stale > patience:
                break
        else:
            kept, stale = len(result.selection) + 1, 0
        model = int(candidates[best])
        if tracking:
            score_candidates.add(model)
        else:
            total += preds[model]
        counts[model] += 1
        result.selection.append(model)
        result.history.append(float(scores[best]))
    # The best selection: the steps after it (patience) did not beat it.
    del result.selection[kept:], result.history[kept:]
    counts = np.bincount(np.array(result.selection, dtype=np.int64), minlength=n_models)
    result.weights = counts / max(counts.sum(), 1)
    return result


def hill_climb(
    preds: np.ndarray,
    y: np.ndarray,
    metric: Metric,
    iterations: int = 100,
    replacement: bool = True,
    patience: int = 0,
) -> HillResult:
    """Caruana ensemble selection, every candidate of a step scored in one batched operation.

    Args:
        preds: OOF predictions, shape (n_models, n_rows, n_columns).
        y: targets in the metric's format (class indices, 0/1 columns or values).
        metric: the score to optimise, with its direction.
        iterations: at most this many additions.
        replacement: whether a model may be picked again.
        patience: steps to go on after the score stops improving, keeping the best selection
            seen. 0 stops at the first step that does not improve; more lets the climb add a
            model again (no better by itself) to make room for a small weight on another
            (with one model picked, the next pick can only make it 50:50).

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
    return _climb(preds, metric, iterations, replacement, scorer, patience)


def naive_hill_climb(
    preds: np.ndarray,
    y: np.ndarray,
    metric: Metric,
    iterations: int = 100,
    replacement: bool = True,
    patience: int = 0,
) -> HillResult:
    """The reference: a per-candidate loop that blends and calls the metric for each one.

    Same arguments and result as :func:`hill_climb`.
    """

    def score_each(total, count, candidates):
        return np.array([metric(y, (total + preds[m]) / (count + 1)) for m in candidates])

    return _climb(preds, metric, iterations, replacement, score_each, patience)


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
        return TrueClassLogLoss.build(preds, y) or _per_candidate(metric, preds, y)
    return None


def _per_candidate(metric: Metric, preds: np.ndarray, y: np.ndarray):
    """One metric call per candidate: exact for any input, the slowest scorer."""

    def score_each(total, count, candidates):
        return np.array([metric(y, (total + preds[m]) / (count + 1)) for m in candidates])

    return score_each


def _float_dtype(preds: np.ndarray) -> np.dtype:
    return preds.dtype if np.issubdtype(preds.dtype, np.floating) else np.dtype(np.float64)


def _everyone(candidates: np.ndarray, n_models: int) -> bool:
    return len(candidates) == n_models and bool((candidates == np.arange(n_models)).all())


def _workers(n_models: int) -> int:
    """Threads for the per-model pass: the cores this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4, n_models))


@dataclass
class RowStats:
    """One pass over every model's predictions, in (models, rows) arrays.

    ``true``: each row's true-class value; ``drift``: the row's sum (in float64) minus one,
    stored as float32, and ``drift_sum`` each model's sum of them (in float64); ``lift``: the
    largest other class minus the true one; ``low``/``high``: the smallest and largest value
    anywhere (NaN ignored). ``drift``, ``drift_sum`` and ``lift`` are None when not asked for.
    """

    true: np.ndarray
    drift: np.ndarray | None
    lift: np.ndarray | None
    low: float
    high: float
    drift_sum: np.ndarray | None = None  # each model's sum of row drifts, from float64 sums

    CHUNK = 1 << 17  # values per transposed chunk (512 KiB in float32)

    @classmethod
    def build(cls, preds: np.ndarray, y: np.ndarray, *, drift: bool, lift: bool) -> RowStats:
        """Each model in chunks of rows transposed to (classes, rows), small enough to stay in
        the core's cache for the few passes over them (reductions over classes are fast
        there), the models shared among a few threads (numpy releases the GIL)."""
        n_models, n_rows, n_classes = preds.shape
        dtype = _float_dtype(preds)
        stats = cls(
            true=np.empty((n_models, n_rows), dtype=dtype),
            drift=np.empty((n_models, n_rows), dtype=np.float32) if drift else None,
            lift=np.empty((n_models, n_rows), dtype=dtype) if lift else None,
            low=np.inf,
            high=-np.inf,
            drift_sum=np.zeros(n_models) if drift else None,
        )
        rows_per_chunk = max(1, cls.CHUNK // n_classes)
        workers = _workers(n_models)
        if workers == 1:
            bounds = [stats._models(preds, y, range(n_models), rows_per_chunk)]
        else:
            with ThreadPoolExecutor(workers) as pool:
                parts = [range(w, n_models, workers) for w in range(workers)]
                bounds = list(
                    pool.map(lambda part: stats._models(preds, y, part, rows_per_chunk), parts)
                )
        stats.low = min(low for low, _ in bounds)
        stats.high = max(high for _, high in bounds)
        return stats

    def _models(self, preds, y, models, rows_per_chunk: int) -> tuple[float, float]:
        """Fill the statistics of ``models``; their (smallest, largest) value."""
        n_rows, n_classes = preds.shape[1:]
        buffers = []  # (rows, a (classes, rows) buffer, the true class's index in it, sums)
        for rows in _chunks(n_rows, rows_per_chunk):
            n = rows.stop - rows.start
            plane = np.empty((n_classes, n), dtype=self.true.dtype)
            buffers.append((rows, plane, y[rows] * n + np.arange(n), np.empty(n)))
        low, high = np.inf, -np.inf
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, left to the exact paths
            for m in models:
                table = np.asarray(preds[m])
                for rows, plane, index, sums in buffers:
                    values = plane.reshape(-1)
                    np.copyto(plane, table[rows].T, casting="unsafe")
                    low = min(low, float(np.fmin.reduce(values)))
                    high = max(high, float(np.fmax.reduce(values)))
                    true = self.true[m, rows]
                    values.take(index, out=true, mode="clip")  # valid indices: unbuffered
                    if self.drift is not None:
                        np.add.reduce(plane, axis=0, dtype=np.float64, out=sums)
                        sums -= 1.0
                        self.drift[m, rows] = sums
                        self.drift_sum[m] += np.add.reduce(sums)
                    if self.lift is not None:
                        values[index] = -np.inf
                        lift = self.lift[m, rows]
                        np.maximum.reduce(plane, axis=0, out=lift)
                        lift -= true
        return low, high


class TrueClassLogLoss:
    """Multiclass log loss of every candidate as the metric computes it, from two numbers a row.

    The metric clips the blend ``b = (total + p_m) / n`` (``n = count + 1``) to ``[eps, 1]``,
    rescales each row to sum to one and takes ``-mean(log(b_y / s))``, ``s`` the row's sum. With
    probabilities in ``[0, 1]`` that is ``-mean(log(clip(b_y, eps, 1))) + mean(log(s))``. The
    first term needs the true class's value of each model (``true``); the second needs no blend:
    ``s = 1 + (D_T + D_m) / n`` with ``D`` a row's sum minus one (``count`` for ``total``), and
    ``log(s)`` is its series ``d - d^2 / 2`` (``|d| <= 1e-5`` is checked: the next term is below
    1e-15), so each model's sum of ``D`` and the Gram matrix of the ``D`` (both computed once)
    give every candidate's ``sum(log(s))`` from the pick counts alone.

    Without the rescaling float32 probabilities (rows summing to 1 +- 1e-7) would score 1e-7 off
    the metric, enough to reorder close candidates. Left out are only the ``eps`` clip of the
    classes other than the true one in ``s`` (at most ``n_classes * eps`` per row, 1e-14) and
    sklearn's final clip of ``b_y / s`` below ``1 - 2.2e-16``.
    :meth:`build` returns None where these assumptions do not hold (values outside ``[0, 1]``,
    rows far from summing to one); the climb then calls the metric per candidate.
    """

    MAX_DRIFT = 1e-5

    def __init__(self, y, true, drift, drift_sum, low: float, eps: float = 1e-15):
        self.y, self.eps = y, eps
        self.rows = np.arange(len(y))
        # (models, rows): each model's probability of the true class, in float64 so that the
        # per-step addition to the running total stays in one dtype (exact: float32 widens).
        self.true = true.astype(np.float64)
        self.drift = drift  # (models, rows) float32: each model's row sum minus one
        self.drift_sum = drift_sum  # (models,) float64: each model's sum of row drifts
        # The drifts' Gram matrix gives the square term from the pick counts alone. float32 is
        # enough: the term moves a score by ~1e-15 (5e-11 at the largest drift accepted).
        self.gram = (drift @ drift.T).astype(np.float64)
        self.clipped = not low >= 2 * eps  # no blend value reaches eps unless a value does
        self.buffer = np.empty(true.shape)
        # The running total: its true-class values (as the climb adds them) and pick counts.
        self.truth = np.zeros(len(y))
        self.counts = np.zeros(len(true))
        self.count = 0

    @classmethod
    def build(cls, preds: np.ndarray, y: np.ndarray, eps: float = 1e-15):
        """The scorer, or None where the predictions are not probabilities summing to ~one."""
        stats = RowStats.build(preds, y, drift=True, lift=False)
        if not (stats.low >= 0 and stats.high <= 1):  # NaN passes (it stays NaN, as in the metric)
            return None
        drift = stats.drift
        if max(np.fmax.reduce(drift, axis=None), -np.fmin.reduce(drift, axis=None)) > cls.MAX_DRIFT:
            return None  # (NaN rows stay NaN)
        return cls(y, stats.true, drift, stats.drift_sum, stats.low, eps)

    def add(self, model: int) -> None:
        """The climb picked ``model``: add it to the running total, as the climb adds it."""
        self.truth += self.true[model]  # the same float64 additions as total[i, y]
        self.counts[model] += 1
        self.count += 1

    def __call__(self, total, count: int, candidates: np.ndarray) -> np.ndarray:
        """Every candidate's log loss with ``total`` (None: the running one of add())."""
        every = _everyone(candidates, len(self.true))
        if total is None:
            truth = self.truth
            # D_T = sum of the picked drifts: sum(D_T) and the products from the counts.
            total_linear = self.counts @ self.drift_sum
            gram_counts = self.gram @ self.counts
            total_square, cross = self.counts @ gram_counts, gram_counts[candidates]
        else:
            truth = total[self.rows, self.y]
            total_drift = total.sum(axis=1) - count
            drift = self.drift if every else self.drift[candidates]
            total_linear, total_square = total_drift.sum(), total_drift @ total_drift
            cross = drift @ total_drift.astype(np.float32)
        true = self.true if every else self.true[candidates]
        n = count + 1
        q = self.buffer[: len(candidates)]
        np.add(true, truth[None], out=q)
        # log(clip(q / n, eps, 1)) as log(max(q, n eps)) - log(n): q <= n for probabilities.
        if self.clipped:
            np.maximum(q, self.eps * n, out=q)
        np.log(q, out=q)
        first = np.log(n) - np.add.reduce(q, axis=1) / len(self.y)
        # sum(log(s)) = sum(d) - sum(d^2) / 2, d = (D_T + D_m) / n.
        linear = (total_linear + self.drift_sum[candidates]) / n
        square = total_square + 2 * cross + np.diagonal(self.gram)[candidates]
        return first + (linear - square / (2 * n**2)) / len(self.y)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


class ArgmaxAccuracy:
    """Multiclass argmax accuracy of every candidate blend, exactly, deciding most rows by bounds.

    Per model and row the scorer keeps the true class's value ``p_y`` and the lift ``max_{c !=
    y} p_c - p_y``; per row the largest lift of any model and the largest ``p_y``. For the
    running total ``T`` let ``M = T_y - T_k`` be the true class's margin over the top rival
    class ``k`` and ``M2`` the margin over the second one. With a slack far above float
    rounding:

    - ``M`` above every model's lift: the row is right whatever the candidate;
    - ``M`` below the smallest prediction minus every ``p_y``: wrong whatever the candidate;
    - else per candidate: right when its lift stays below ``M``; wrong when ``p_y`` is too
      small for even the smallest ``p_k``; then, with ``p_k`` gathered, wrong when ``p_k -
      p_y`` exceeds ``M``, right when it stays below ``M`` and the lift below ``M2``; the pairs
      left (near ties) are blended in full with the reference's arithmetic (``(total + p) /
      (count + 1)``, argmax, ties to the first class).

    Each stage bounds every candidate's hits, and :meth:`leaders` (what the climb calls) stops
    refining a candidate once its bound is below another's sure hits: it cannot be the best of
    the step. The empty ensemble (each model alone) is exact from the lifts' signs. So the
    climb's picks and scores equal the per-candidate loop's, for a few passes over the rows
    still open instead of a blend of every class per candidate.
    """

    def __init__(self, preds: np.ndarray, y: np.ndarray):
        n_models, n_rows, n_classes = preds.shape
        self.preds, self.y, self.n_classes = preds, y, n_classes
        self.table = preds.reshape(n_models * n_rows, n_classes)  # row m * n_rows + i
        self.flat = preds.reshape(-1)
        self.plane_index = y * n_rows + np.arange(n_rows)  # the true class in a (classes, rows)
        self.dtype = dtype = _float_dtype(preds)
        stats = RowStats.build(preds, y, drift=False, lift=True)
        self.true, self.lift = stats.true, stats.lift  # p_y, max_{c != y} p_c - p_y
        low, high = stats.low, stats.high
        hits = np.array([self._alone(m, lift) for m, lift in enumerate(self.lift)])
        self.lift_max = self.lift.max(axis=0)  # NaN where any model has NaN
        true_max = self.true.max(axis=0)
        self.single = hits / n_rows  # each model's own accuracy (count 0)
        self.low = low  # the smallest prediction
        # Below this margin no candidate can lift the true class over the rival.
        self.hopeless = low - true_max.astype(np.float64)
        self.eps = float(np.finfo(dtype).eps)
        self.scale = 1.0 + max(abs(low), abs(high))
        # The running total as (classes, rows) with -inf at the true class, kept by add().
        self.others = np.zeros((n_classes, n_rows))
        self.others.reshape(-1)[self.plane_index] = -np.inf
        self.truth = np.zeros(n_rows)
        self.count = 0
        self.stored = _RowStore(self.true, self.lift)

    def _alone(self, model: int, lift: np.ndarray) -> int:
        """Rows where the model alone is right: no other class reaches the true one."""
        hits = int(np.count_nonzero(lift < 0))
        if hits + np.count_nonzero(lift > 0) < len(lift):  # equal values (first wins), NaN
            ties = np.flatnonzero(~((lift < 0) | (lift > 0)))
            table = np.asarray(self.preds[model][ties])
            hits += int(np.count_nonzero(table.argmax(axis=1) == self.y[ties]))
        return hits

    def add(self, model: int) -> None:
        """The climb picked ``model``: add it to the running total, as the climb adds it."""
        self.others += np.asarray(self.preds[model]).T  # -inf at the true class stays -inf
        self.truth += self.true[model]  # exact: the stored values are the predictions'
        self.count += 1

    def _state(self, total, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(others, truth) of ``total``; None: the running ones that add() keeps."""
        if total is None:
            if count != self.count:
                raise ValueError(f"the scorer holds {self.count} models, not {count}")
            return self.others, self.truth
        plane = np.array(total.T, order="C", copy=True, dtype=np.float64)
        truth = plane.reshape(-1)[self.plane_index]
        plane.reshape(-1)[self.plane_index] = -np.inf
        return plane, truth

    def __call__(self, total, count: int, candidates: np.ndarray) -> np.ndarray:
        """The accuracy of every candidate blend, ``total`` (None: the running one) + each."""
        return self._score(total, count, np.asarray(candidates), every=True)

    def leaders(self, total, count: int, candidates: np.ndarray) -> np.ndarray:
        """Exact scores of the candidates that could be the best; for the others a bound on
        their score that is below the best one (so the climb picks as with exact scores)."""
        return self._score(total, count, np.asarray(candidates), every=False)

    def _score(self, total, count, candidates, every: bool) -> np.ndarray:
        n_rows = len(self.y)
        if count == 0 and (total is None or not np.any(total)):  # each candidate alone
            return self.single[candidates]
        # Rounding in the blends is ~1e-16 of their size (count + 1 times the largest input),
        # in the stored lifts one unit of their precision.
        slack = (1e-9 * (count + 1) + 8 * self.eps) * self.scale
        others, truth = self._state(total, count)
        margin = truth - np.maximum.reduce(others, axis=0)
        with np.errstate(invalid="ignore"):
            safe = margin > self.lift_max + slack  # right for every candidate
            settled = safe | (margin < self.hopeless - slack)  # ... or wrong for every one
        rows = np.flatnonzero(~settled)  # NaN margins land here too
        hits = np.full(len(candidates), float(np.count_nonzero(safe)))
        if rows.size:
            hits += self._open_rows(others, truth, count, candidates, rows, slack, every)
        return hits / n_rows

    def _open_rows(self, others, truth, count, candidates, rows, slack, every) -> np.ndarray:
        """Hits of each candidate among the open ``rows`` (with ``every``, or of the leaders)."""
        top = others.take(rows, axis=1)  # (classes, open rows)
        best = np.maximum.reduce(top, axis=0)
        rival = np.full(len(rows), self.n_classes - 1, dtype=np.intp)
        for c in range(self.n_classes - 2, -1, -1):  # the first class reaching the maximum
            np.copyto(rival, c, where=top[c] == best)
        truth = truth[rows]
        margin = truth - best
        top.reshape(-1)[rival * len(rows) + np.arange(len(rows))] = -np.inf
        margin_2 = truth - np.maximum.reduce(top, axis=0)
        slot = self.stored.get(rows)  # where the rows' true and lift values are stored
        true, lift = self.stored.columns(slot)  # (models, open rows)
        if not _everyone(candidates, len(self.lift)):
            true, lift = true[candidates], lift[candidates]
        n_rows = len(self.y)
        with np.errstate(invalid="ignore"):
            # From the stored values alone: every other class stays below the true one
            # (p_c - p_y <= lift < M), or the rival gains at least the smallest prediction.
            right = lift < self._below(margin - slack)
            wrong = true < self._below((self.low - slack) - margin)
        hits = np.count_nonzero(right, axis=1).astype(np.float64)  # hits for certain
        wrong |= right
        open_ = np.logical_not(wrong, out=wrong)
        bound = hits + np.count_nonzero(open_, axis=1)  # and at most
        alive = self._alive(hits, bound, every)
        pair = np.flatnonzero(open_ if alive.all() else open_ & alive[:, None])
        which, where = np.divmod(pair, len(rows))
        if which.size:
            with np.errstate(invalid="ignore"):
                # With p_k gathered: p_k - p_y, exact in float64 (two float32 values).
                model = candidates[which]
                cell = (model * n_rows + rows[where]) * self.n_classes + rival[where]
                stored = self.stored.cells(model, slot[where])
                true_p, lift_p = (values.take(stored) for values in self.stored.flat)
                gap = np.subtract(self.flat.take(cell), true_p, dtype=np.float64)
                right = gap < margin[where] - slack
                right &= lift_p < margin_2[where] - slack
                near = gap > margin[where] + slack  # wrong, for now
                near |= right
                np.logical_not(near, out=near)
            hits += np.bincount(which[right], minlength=len(candidates))
            bound[alive] = hits[alive] + np.bincount(which[near], minlength=len(candidates))[alive]
            alive &= self._alive(hits, bound, every)
            near &= alive[which]
            if near.any():  # near ties: blended in full, as the reference does
                which, where = which[near], where[near]
                row = rows[where]
                blend = others.take(row, axis=1).T  # the total's rows, -inf at the true class
                blend[np.arange(len(row)), self.y[row]] = truth[where]
                blend += self.table.take(candidates[which] * n_rows + row, axis=0)
                blend /= count + 1
                correct = blend.argmax(axis=1) == self.y[row]
                hits += np.bincount(which[correct], minlength=len(candidates))
        # A candidate out of the running scores its bound: below another's sure hits.
        return np.where(alive, hits, bound)

    @staticmethod
    def _alive(sure: np.ndarray, bound: np.ndarray, every: bool) -> np.ndarray:
        """Candidates still refined: all, or those whose bound reaches the best sure hits."""
        if every:
            return np.ones(len(sure), dtype=bool)
        return bound >= sure.max()

    def _below(self, threshold: np.ndarray) -> np.ndarray:
        """Thresholds in the stored precision: ``x < result`` implies ``x < threshold``."""
        down = threshold.astype(self.dtype)
        if down.dtype == threshold.dtype:
            return down
        return np.nextafter(down, -np.inf, out=down, where=down > threshold)

    def _above(self, threshold: np.ndarray) -> np.ndarray:
        """Thresholds in the stored precision: ``x > result`` implies ``x > threshold``."""
        up = threshold.astype(self.dtype)
        if up.dtype == threshold.dtype:
            return up
        return np.nextafter(up, np.inf, out=up, where=up < threshold)


class _RowStore:
    """(models, rows) arrays gathered for open rows into a compact store, once per row.

    Gathering a few percent of the rows of a (models, rows) array reads most of its memory. The
    open rows of a climb shrink from step to step, so each is gathered once into slots.
    """

    def __init__(self, *arrays: np.ndarray):
        self.arrays = arrays
        self.slot = np.full(arrays[0].shape[1], -1, dtype=np.intp)  # a row's slot, -1: none
        self.store = [np.empty((a.shape[0], 0), dtype=a.dtype) for a in arrays]
        self.used = 0

    def get(self, rows: np.ndarray) -> np.ndarray:
        """The slots of ``rows``, gathering the rows not stored yet."""
        slot = self.slot[rows]
        new = slot < 0
        if new.any():
            fresh = rows[new]
            start = self.used
            slot[new] = self.slot[fresh] = self._grow(len(fresh))
            for array, store in zip(self.arrays, self.store, strict=True):
                for values, stored in zip(array, store, strict=True):
                    values.take(fresh, out=stored[start : self.used], mode="clip")
        return slot

    def columns(self, slot: np.ndarray) -> list[np.ndarray]:
        """Each array's stored columns ``slot``, (models, len(slot)): views when consecutive."""
        if slot.size and slot[-1] - slot[0] == len(slot) - 1 and (np.diff(slot) == 1).all():
            return [store[:, slot[0] : slot[-1] + 1] for store in self.store]
        return [store.take(slot, axis=1) for store in self.store]

    def cells(self, model: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """Flat indices of (model, slot) pairs in each store (see :attr:`flat`)."""
        return model * self.store[0].shape[1] + slot

    @property
    def flat(self) -> list[np.ndarray]:
        return [store.reshape(-1) for store in self.store]

    def _grow(self, n: int) -> np.ndarray:
        """``n`` fresh slots; the store grows (doubles) when full."""
        start, self.used = self.used, self.used + n
        if self.used > self.store[0].shape[1]:
            size = max(self.used, 2 * self.store[0].shape[1])
            for i, old in enumerate(self.store):
                self.store[i] = np.empty((old.shape[0], size), dtype=old.dtype)
                self.store[i][:, : old.shape[1]] = old
        return np.arange(start, self.used)
