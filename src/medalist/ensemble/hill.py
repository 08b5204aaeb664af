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
row's argmax, so that only the rows a candidate could flip are looked at, the running total is
kept for those rows only, and the near ties only of the candidates that could still be the best
of the step are blended in full). Both share their work among a few threads (numpy releases the
GIL): the log loss by chunks of rows, the accuracy by contiguous shards of rows.
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
    try:
        with warnings.catch_warnings():  # float32 probabilities never sum to exactly one
            warnings.filterwarnings("ignore", message=".*do not sum to one.*")
            return _climb_steps(preds, metric, iterations, replacement, score_candidates, patience)
    finally:
        if hasattr(score_candidates, "close"):  # a scorer's threads
            score_candidates.close()


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


def _workers(n_parts: int) -> int:
    """Threads for ``n_parts`` pieces of work: the cores this process may use, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4, n_parts))


@dataclass
class RowStats:
    """One pass over every model's predictions, in (models, rows) arrays, for the log-loss scorer.

    ``true``: each row's true-class value; ``drift``: the row's sum (in float64) minus one,
    stored as float32, and ``drift_sum`` each model's sum of them (in float64); ``low``/``high``:
    the smallest and largest value anywhere (NaN ignored). ``drift`` and ``drift_sum`` are None
    when not asked for.
    """

    true: np.ndarray
    drift: np.ndarray | None
    low: float
    high: float
    drift_sum: np.ndarray | None = None  # each model's sum of row drifts, from float64 sums

    CHUNK = 1 << 17  # values per transposed chunk (512 KiB in float32)

    @classmethod
    def build(cls, preds: np.ndarray, y: np.ndarray, *, drift: bool, threads=None) -> RowStats:
        """Each model in chunks of rows transposed to (classes, rows), small enough to stay in
        the core's cache for the few passes over them (reductions over classes are fast
        there), the models shared among a few threads (numpy releases the GIL)."""
        n_models, n_rows, n_classes = preds.shape
        stats = cls(
            true=np.empty((n_models, n_rows), dtype=_float_dtype(preds)),
            drift=np.empty((n_models, n_rows), dtype=np.float32) if drift else None,
            low=np.inf,
            high=-np.inf,
            drift_sum=np.zeros(n_models) if drift else None,
        )
        rows_per_chunk = max(1, cls.CHUNK // n_classes)
        parts = _shares(range(n_models))
        bounds = _threads(
            lambda part: stats._models(preds, y, part, rows_per_chunk), parts, threads
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
                    low, high = _transpose(table[rows], plane, index, self.true[m, rows], low, high)
                    if self.drift is not None:
                        np.add.reduce(plane, axis=0, dtype=np.float64, out=sums)
                        sums -= 1.0
                        self.drift[m, rows] = sums
                        self.drift_sum[m] += np.add.reduce(sums)
        return low, high


def _transpose(block, plane, index, true, low: float, high: float) -> tuple[float, float]:
    """Copy ``block`` (rows, classes) into ``plane`` (classes, rows) and each row's true-class
    value (at ``index`` of the flat plane) into ``true``; the (smallest, largest) value so far."""
    values = plane.reshape(-1)
    np.copyto(plane, block.T, casting="unsafe")
    low = min(low, float(np.fmin.reduce(values)))
    high = max(high, float(np.fmax.reduce(values)))
    values.take(index, out=true, mode="clip")  # valid indices: unbuffered
    return low, high


def _shares(items) -> list:
    """``items`` dealt round-robin to the threads of :func:`_threads`."""
    workers = _workers(len(items))
    return [items[w::workers] for w in range(min(workers, len(items)))] or [items]


def _threads(fn, parts: list, threads: _Threads | None = None) -> list:
    """``fn`` of each part, the parts on threads when there are several (``threads``' own, or
    started for this call)."""
    if len(parts) == 1:
        return [fn(parts[0])]
    if threads is not None:
        return threads.map(fn, parts)
    with ThreadPoolExecutor(len(parts)) as pool:
        return list(pool.map(fn, parts))


class _Threads:
    """A scorer's threads: started on first use, kept for its steps, stopped by :meth:`close`
    (or when it is collected)."""

    def __init__(self):
        self.pool: ThreadPoolExecutor | None = None

    def map(self, fn, parts: list) -> list:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(4)  # (_workers deals at most 4 parts)
        return list(self.pool.map(fn, parts))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


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
    CHUNK = 1 << 13  # rows a chunk of the per-step logs (all candidates' rows: in cache)

    def __init__(self, y, true, drift, drift_sum, low: float, eps: float = 1e-15, threads=None):
        self.y, self.eps = y, eps
        self.threads = threads or _Threads()
        self.rows = np.arange(len(y))
        self.true = true  # (models, rows): each model's probability of the true class
        self.drift = drift  # (models, rows) float32: each model's row sum minus one
        self.drift_sum = drift_sum  # (models,) float64: each model's sum of row drifts
        # The drifts' Gram matrix gives the square term from the pick counts alone. float32 is
        # enough: the term moves a score by ~1e-15 (5e-11 at the largest drift accepted).
        self.gram = (drift @ drift.T).astype(np.float64)
        self.clipped = not low >= 2 * eps  # no blend value reaches eps unless a value does
        # The running total: its true-class values (as the climb adds them) and pick counts.
        self.truth = np.zeros(len(y))
        self.counts = np.zeros(len(true))
        self.count = 0

    @classmethod
    def build(cls, preds: np.ndarray, y: np.ndarray, eps: float = 1e-15):
        """The scorer, or None where the predictions are not probabilities summing to ~one."""
        threads = _Threads()
        stats = RowStats.build(preds, y, drift=True, threads=threads)
        drift = stats.drift
        # Values outside [0, 1] or rows far from summing to one (NaN passes both checks: it
        # stays NaN, as in the metric).
        refused = not (stats.low >= 0 and stats.high <= 1) or (
            max(np.fmax.reduce(drift, axis=None), -np.fmin.reduce(drift, axis=None)) > cls.MAX_DRIFT
        )
        if refused:
            threads.close()
            return None
        return cls(y, stats.true, drift, stats.drift_sum, stats.low, eps, threads)

    def close(self) -> None:
        """Stop the scorer's threads."""
        self.threads.close()

    def _logs(self, truth, n: int, candidates, every: bool, chunks) -> np.ndarray:
        """Each candidate's sum of ``log(max(truth + p_y, n eps))`` over the rows of ``chunks``
        (the clipped log of the blend's true class, times ``n``), a chunk at a time in cache."""
        sums = np.zeros(len(candidates))
        buffer = np.empty(len(candidates) * self.CHUNK)
        for rows in chunks:
            q = buffer[: len(candidates) * (rows.stop - rows.start)].reshape(len(candidates), -1)
            np.add(self.true[:, rows] if every else self.true[candidates, rows], truth[rows], out=q)
            # log(clip(q / n, eps, 1)) as log(max(q, n eps)) - log(n): q <= n for probabilities.
            if self.clipped:
                np.maximum(q, self.eps * n, out=q)
            np.log(q, out=q)
            sums += np.add.reduce(q, axis=1)
        return sums

    def add(self, model: int) -> None:
        """The climb picked ``model``: add it to the running total, as the climb adds it."""
        self.truth += self.true[model]  # the same float64 additions as total[i, y] (exact)
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
        n = count + 1
        parts = _shares(_chunks(len(self.y), self.CHUNK))
        logs = _threads(
            lambda part: self._logs(truth, n, candidates, every, part), parts, self.threads
        )
        first = np.log(n) - np.sum(logs, axis=0) / len(self.y)
        # sum(log(s)) = sum(d) - sum(d^2) / 2, d = (D_T + D_m) / n.
        linear = (total_linear + self.drift_sum[candidates]) / n
        square = total_square + 2 * cross + np.diagonal(self.gram)[candidates]
        return first + (linear - square / (2 * n**2)) / len(self.y)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


@dataclass
class ArgmaxStats:
    """One pass over every model's predictions for :class:`ArgmaxAccuracy`.

    ``true`` and ``lift`` are (rows, models), so that the rows a step looks at are gathered as
    whole lines: each model's true-class value ``p_y`` and lift ``max_{c != y} p_c - p_y``.
    Per row: ``lift_max`` and ``true_max`` over the models (NaN where any model has NaN); per
    model: ``hits``, the rows where it alone is right (argmax, ties to the first class);
    ``low``/``high``: the smallest and largest value anywhere (NaN ignored).
    """

    true: np.ndarray
    lift: np.ndarray
    lift_max: np.ndarray
    true_max: np.ndarray
    hits: np.ndarray
    low: float
    high: float

    CHUNK = 1 << 17  # values per transposed chunk (512 KiB in float32)

    @classmethod
    def build(cls, preds: np.ndarray, y: np.ndarray, threads=None) -> ArgmaxStats:
        """Chunks of rows, each model's part transposed to (classes, rows) in cache (reductions
        over classes are fast there); the chunks shared among a few threads."""
        n_models, n_rows, n_classes = preds.shape
        dtype = _float_dtype(preds)
        stats = cls(
            true=np.empty((n_rows, n_models), dtype=dtype),
            lift=np.empty((n_rows, n_models), dtype=dtype),
            lift_max=np.empty(n_rows, dtype=dtype),
            true_max=np.empty(n_rows, dtype=dtype),
            hits=np.zeros(n_models, dtype=np.int64),
            low=np.inf,
            high=-np.inf,
        )
        chunks = _chunks(n_rows, max(1, cls.CHUNK // n_classes))
        results = _threads(lambda part: stats._rows(preds, y, part), _shares(chunks), threads)
        ties = []  # (model, row) pairs with equal values or NaN: argmax of the model's row
        for low, high, hits, tied in results:
            stats.low, stats.high = min(stats.low, low), max(stats.high, high)
            stats.hits += hits
            ties += tied
        if ties:
            model, row = (np.concatenate(parts) for parts in zip(*ties, strict=True))
            table = preds.reshape(n_models * n_rows, n_classes)
            right = table.take(model * n_rows + row, axis=0).argmax(axis=1) == y[row]
            stats.hits += np.bincount(model[right], minlength=n_models)
        return stats

    def _rows(self, preds, y, chunks):
        """Fill the statistics of the rows in ``chunks``: (smallest, largest value, each model's
        sure hits, the undecided (model, row) pairs)."""
        n_models, _, n_classes = preds.shape
        size = max(rows.stop - rows.start for rows in chunks)
        buffers = [np.empty(k * size, dtype=self.true.dtype) for k in (n_classes, n_models)]
        lift_buffer = np.empty(n_models * size, dtype=self.true.dtype)
        low, high = np.inf, -np.inf
        hits, ties = np.zeros(n_models, dtype=np.int64), []
        with np.errstate(invalid="ignore"):  # inf - inf: NaN, left to the exact paths
            for rows in chunks:
                n = rows.stop - rows.start
                plane = buffers[0][: n_classes * n].reshape(n_classes, n)
                true = buffers[1][: n_models * n].reshape(n_models, n)
                lift = lift_buffer[: n_models * n].reshape(n_models, n)
                index = y[rows] * n + np.arange(n)
                for m in range(n_models):
                    low, high = _transpose(preds[m, rows], plane, index, true[m], low, high)
                    plane.reshape(-1)[index] = -np.inf
                    np.maximum.reduce(plane, axis=0, out=lift[m])
                    lift[m] -= true[m]
                np.maximum.reduce(lift, axis=0, out=self.lift_max[rows])
                np.maximum.reduce(true, axis=0, out=self.true_max[rows])
                below, above = lift < 0, lift > 0
                hits += np.count_nonzero(below, axis=1)
                below |= above
                if not below.all():
                    model, row = np.nonzero(~below)
                    ties.append((model, row + rows.start))
                self.true[rows] = true.T
                self.lift[rows] = lift.T
        return low, high, hits, ties


class ArgmaxAccuracy:
    """Multiclass argmax accuracy of every candidate blend, exactly, deciding most rows by bounds.

    Per model and row the scorer keeps the true class's value ``p_y`` and the lift ``max_{c !=
    y} p_c - p_y`` (:class:`ArgmaxStats`); per row the largest lift of any model and the largest
    ``p_y``. For the running total ``T`` let ``M = T_y - T_k`` be the true class's margin over
    the top rival class ``k`` and ``M2`` the margin over the second one. With a slack far above
    float rounding:

    - ``M`` above every model's lift: the row is right whatever the candidate;
    - ``M`` below the smallest prediction minus every ``p_y``: wrong whatever the candidate;
    - else per candidate: right when its lift stays below ``M``; wrong when ``p_y`` is too
      small for even the smallest ``p_k``; then, with ``p_k`` gathered, wrong when ``p_k -
      p_y`` exceeds ``M``, right when it stays below ``M`` and the lift below ``M2``; the pairs
      left (near ties) are blended in full with the reference's arithmetic (``(total + p) /
      (count + 1)``, argmax, ties to the first class).

    The running total is kept only for the rows still open: a row settled at a step keeps
    bounds on its margin instead, which each addition moves by what the added model can change
    (down by its lift, up by the largest ``p_y`` minus the smallest prediction); when the
    bounds no longer settle it, its total is summed again from the picked models in the climb's
    order (the same float64 additions). The rows are split into a few contiguous shards, each
    kept and scored by its own thread. Each stage bounds every candidate's hits, and
    :meth:`leaders` (what the climb calls) blends the near ties only of the candidates whose
    bound reaches another's sure hits: the others cannot be the best of the step. The empty
    ensemble (each model alone) is exact from the lifts' signs. So the climb's picks and scores
    equal the per-candidate loop's, for a few passes over the rows still open instead of a
    blend of every class per candidate.
    """

    BLOCK = 8192  # open rows a block: its (rows, models) arrays stay in the core's cache

    def __init__(self, preds: np.ndarray, y: np.ndarray):
        n_models, n_rows, n_classes = preds.shape
        self.preds, self.y, self.n_classes = preds, y, n_classes
        self.table = preds.reshape(n_models * n_rows, n_classes)  # row m * n_rows + i
        self.flat = preds.reshape(-1)
        self.dtype = dtype = _float_dtype(preds)
        self.threads = _Threads()
        stats = ArgmaxStats.build(preds, y, self.threads)
        self.true, self.lift = stats.true, stats.lift  # (rows, models): p_y, max_{c != y} - p_y
        self.lift_max = stats.lift_max  # NaN where any model has NaN
        self.single = stats.hits / n_rows  # each model's own accuracy (count 0)
        self.low = stats.low  # the smallest prediction
        # Below this margin no candidate can lift the true class over the rival.
        self.hopeless = stats.low - stats.true_max.astype(np.float64)
        self.eps = float(np.finfo(dtype).eps)
        self.scale = 1.0 + max(abs(stats.low), abs(stats.high))
        self.count = 0
        self.picks: list[int] = []
        self.pending: list[tuple[int, int]] = []  # (picked, count before): not yet added
        # Rows not tracked: bounds on their margin (the tracked rows' totals: in the shards).
        self.lower, self.upper = np.zeros(n_rows), np.zeros(n_rows)
        self.tracked = np.zeros(n_rows, dtype=bool)
        spans = _chunks(n_rows, max(1, -(-n_rows // _workers(n_rows))))
        self.shards = [_Shard(self, span) for span in spans]

    def close(self) -> None:
        """Stop the scorer's threads."""
        self.threads.close()

    def add(self, model: int) -> None:
        """The climb picked ``model``: the shards add it to their totals before the next score,
        as the climb adds it."""
        self.picks.append(model)
        self.pending.append((model, self.count))
        self.count += 1

    def __call__(self, total, count: int, candidates: np.ndarray) -> np.ndarray:
        """The accuracy of every candidate blend, ``total`` (None: the running one) + each."""
        return self._score(total, count, np.asarray(candidates), every=True)

    def leaders(self, total, count: int, candidates: np.ndarray) -> np.ndarray:
        """Exact scores of the candidates that could be the best; for the others a bound on
        their score that is below the best one (so the climb picks as with exact scores)."""
        return self._score(total, count, np.asarray(candidates), every=False)

    def _score(self, total, count, candidates, every: bool) -> np.ndarray:
        if count == 0 and (total is None or not np.any(total)):  # each candidate alone
            return self.single[candidates]
        # Rounding in the blends is ~1e-16 of their size (count + 1 times the largest input),
        # in the stored lifts one unit of their precision.
        slack = (1e-9 * (count + 1) + 8 * self.eps) * self.scale
        if total is None:
            if count != self.count:
                raise ValueError(f"the scorer holds {self.count} models, not {count}")
            shards = self.shards
            pending, self.pending = self.pending, []
            found = _threads(
                lambda shard: shard.step(pending, candidates, slack), shards, self.threads
            )
        else:
            shards = [_Shard(self, slice(0, len(self.y)))]
            found = [shards[0].given(total, candidates, slack)]
        sure = sum(part[0] for part in found)
        hits = sure + np.sum([part[1] for part in found], axis=0)
        near = [np.bincount(part[2], minlength=len(candidates)) for part in found]
        bound = hits + np.sum(near, axis=0)  # hits at most
        alive = np.ones(len(candidates), dtype=bool) if every else bound >= hits.max()
        work = [(shard, part[2], part[3]) for shard, part in zip(shards, found, strict=True)]
        if any(alive[which].any() for _, which, _ in work):
            hits += np.sum(
                _threads(
                    lambda job: job[0].near(job[1], job[2], alive, count, candidates),
                    work,
                    self.threads,
                ),
                axis=0,
            )
        # A candidate out of the running scores its bound: below another's sure hits.
        return np.where(alive, hits, bound) / len(self.y)

    def _below(self, threshold: np.ndarray) -> np.ndarray:
        """Thresholds in the stored precision: ``x < result`` implies ``x < threshold``."""
        down = threshold.astype(self.dtype)
        if down.dtype == threshold.dtype:
            return down
        return np.nextafter(down, -np.inf, out=down, where=down > threshold)


class _Shard:
    """The rows ``span`` of an :class:`ArgmaxAccuracy`: the running total of its open rows as
    (classes, rows) with -inf at the true class (``others``) and the true class's (``truth``),
    the bounds of the others (in the scorer's arrays), and the step's scoring of its rows."""

    def __init__(self, scorer: ArgmaxAccuracy, span: slice):
        self.scorer, self.span = scorer, span
        self.rows = np.zeros(0, dtype=np.intp)
        self.others = np.zeros((scorer.n_classes, 0))
        self.truth = np.zeros(0)
        self.margin = np.zeros(0)

    def step(self, pending: list[tuple[int, int]], candidates: np.ndarray, slack: float):
        """Add the models picked since the last step, find the open rows and score them:
        (rows right for every candidate, each candidate's sure hits among the open rows, the
        (candidate, open row) pairs left)."""
        with np.errstate(invalid="ignore"):
            for model, count in pending:
                self._add(model, count)
            sure = self._settle(slack)
            hits, which, where = self._pairs(candidates, slack)
        return sure, hits, which, where

    def given(self, total: np.ndarray, candidates: np.ndarray, slack: float):
        """:meth:`step` for a total given in full (every row's totals, no bounds kept)."""
        scorer = self.scorer
        n_rows = len(scorer.y)
        plane = np.array(total.T, order="C", copy=True, dtype=np.float64)
        at_true = scorer.y * n_rows + np.arange(n_rows)  # the true class in the flat plane
        truth = plane.reshape(-1)[at_true]
        plane.reshape(-1)[at_true] = -np.inf
        with np.errstate(invalid="ignore"):
            margin = truth - np.maximum.reduce(plane, axis=0)
            safe = margin > scorer.lift_max + slack  # right for every candidate
            rows = np.flatnonzero(~(safe | (margin < scorer.hopeless - slack)))  # NaN: open
            self.rows, self.truth, self.margin = rows, truth[rows], margin[rows]
            self.others = plane.take(rows, axis=1)
            hits, which, where = self._pairs(candidates, slack)
        return np.count_nonzero(safe), hits, which, where

    def _add(self, model: int, count: int) -> None:
        """Add ``model`` to the tracked rows' totals (as the climb adds it) and move the other
        rows' bounds by what it can change: down by its lift, up by the largest ``p_y`` minus
        the smallest prediction, each up to rounding (the stored lifts are rounded to the
        predictions' precision, the totals to float64)."""
        scorer, span = self.scorer, self.span
        drift = (4 * scorer.eps + 8 * np.finfo(np.float64).eps * (count + 1)) * scorer.scale
        lift = np.add(scorer.lift[span, model], drift, dtype=np.float64)  # a strided column
        lower, upper = scorer.lower[span], scorer.upper[span]
        if count == 0:  # the margin is the model's own: -lift, to its rounding
            np.negative(lift, out=lower)
            np.subtract(2 * drift, lift, out=upper)
        else:
            lower -= lift
            upper -= scorer.hopeless[span]
            upper += drift
        if self.rows.size:
            self.others += scorer.preds[model].take(self.rows, axis=0).T
            self.truth += scorer.true[self.rows, model]  # exact: the predictions' own values

    def _settle(self, slack: float) -> int:
        """Track the rows whose bounds no longer settle them (their totals summed again from
        the picks), leave the tracked rows that settle to bounds (their exact margin); the rows
        right for every candidate."""
        scorer, span = self.scorer, self.span
        lower, upper, tracked = scorer.lower[span], scorer.upper[span], scorer.tracked[span]
        safe = lower > scorer.lift_max[span] + slack  # (tracked rows: stale bounds)
        fresh = np.flatnonzero(~(tracked | safe | (upper < scorer.hopeless[span] - slack)))
        sure = np.count_nonzero(safe & ~tracked)  # the untracked rows right for every candidate
        if fresh.size:
            tracked[fresh] = True
            fresh += span.start
            block = np.zeros((len(fresh), scorer.n_classes))
            for model in scorer.picks:  # the climb's additions, in its order
                block += scorer.preds[model].take(fresh, axis=0)
            at_true = (np.arange(len(fresh)), scorer.y[fresh])
            self.truth = np.concatenate([self.truth, block[at_true]])
            block[at_true] = -np.inf
            self.others = np.concatenate([self.others, block.T], axis=1)
            self.rows = np.concatenate([self.rows, fresh])
        rows = self.rows
        margin = self.truth - np.maximum.reduce(self.others, axis=0)
        settled = margin > scorer.lift_max[rows] + slack
        sure += np.count_nonzero(settled)
        settled |= margin < scorer.hopeless[rows] - slack
        if settled.any():
            done = rows[settled]
            scorer.lower[done] = scorer.upper[done] = margin[settled]
            scorer.tracked[done] = False
            keep = np.flatnonzero(~settled)
            self.rows, self.truth, margin = rows[keep], self.truth[keep], margin[keep]
            self.others = self.others.take(keep, axis=1)  # (C order: rows along the lines)
        self.margin = margin
        return int(sure)

    def _pairs(self, candidates: np.ndarray, slack: float):
        """(each candidate's sure hits among the open rows, the (candidate, open row) pairs
        left: near ties), block by block."""
        hits = np.zeros(len(candidates))
        which, where = [np.zeros(0, dtype=np.intp)], [np.zeros(0, dtype=np.intp)]
        for block in _chunks(len(self.rows), self.scorer.BLOCK):
            found = self._block(block, candidates, slack)
            hits += found[0]
            which.append(found[1])
            where.append(found[2])
        return hits, np.concatenate(which), np.concatenate(where)

    def _block(self, block: slice, candidates: np.ndarray, slack: float):
        """:meth:`_pairs` of the open rows ``block``."""
        scorer = self.scorer
        truth, margin, rows = self.truth[block], self.margin[block], self.rows[block]
        n_open, n_candidates, n_classes = len(rows), len(candidates), scorer.n_classes
        top = np.array(self.others[:, block], order="C")  # the rival is set to -inf below
        best = np.maximum.reduce(top, axis=0)
        rival = np.full(n_open, n_classes - 1, dtype=np.intp)
        for c in range(n_classes - 2, -1, -1):  # the first class reaching the maximum
            np.copyto(rival, c, where=top[c] == best)
        top.reshape(-1)[rival * n_open + np.arange(n_open)] = -np.inf
        margin_2 = truth - np.maximum.reduce(top, axis=0)
        true, lift = scorer.true.take(rows, axis=0), scorer.lift.take(rows, axis=0)
        if not _everyone(candidates, scorer.lift.shape[1]):
            true, lift = true.take(candidates, axis=1), lift.take(candidates, axis=1)
        # From the stored values alone: every other class stays below the true one (p_c - p_y
        # <= lift < M), or the rival gains at least the smallest prediction.
        right = lift < scorer._below(margin - slack)[:, None]
        wrong = true < scorer._below((scorer.low - slack) - margin)[:, None]
        hits = np.count_nonzero(right, axis=0).astype(np.float64)
        wrong |= right
        pair = np.flatnonzero(np.logical_not(wrong, out=wrong))
        where, which = np.divmod(pair, n_candidates)
        # With p_k gathered: p_k - p_y, exact in float64 (two float32 values).
        cell = (candidates[which] * len(scorer.y) + rows[where]) * n_classes
        cell += rival[where]
        gap = np.subtract(scorer.flat.take(cell), true.reshape(-1).take(pair), dtype=np.float64)
        right = gap < margin[where] - slack
        right &= lift.reshape(-1).take(pair) < margin_2[where] - slack
        near = gap > margin[where] + slack  # wrong, for now
        near |= right
        np.logical_not(near, out=near)
        hits += np.bincount(which[right], minlength=n_candidates)
        return hits, which[near], where[near] + block.start

    def near(self, which, where, alive, count: int, candidates: np.ndarray) -> np.ndarray:
        """Hits of each candidate among the near ties (``which``, ``where``) of the candidates
        still ``alive``: each blended in full, as the reference does."""
        scorer = self.scorer
        hits = np.zeros(len(candidates))
        keep = alive[which]
        if not keep.any():
            return hits
        which, where = which[keep], where[keep]
        row = self.rows[where]
        blend = self.others.take(where, axis=1).T  # the total's rows, -inf at the true class
        blend[np.arange(len(row)), scorer.y[row]] = self.truth[where]
        blend += scorer.table.take(candidates[which] * len(scorer.y) + row, axis=0)
        blend /= count + 1
        correct = blend.argmax(axis=1) == scorer.y[row]
        return hits + np.bincount(which[correct], minlength=len(candidates))
