"""Hill climbing ensemble selection (Caruana et al., ICML 2004), vectorised over candidates.

Start from the empty ensemble; at every step add the model (with replacement by default) whose
addition gives the best OOF score, and stop when no candidate improves it or after
``iterations`` additions. The weights are how often each model was picked, over the total.

The straightforward implementation scores each candidate with its own blend and metric call
(:func:`naive_hill_climb`, kept as the reference and the P7 benchmark baseline).
:func:`hill_climb` keeps the running sum of the picked models and scores every candidate in a
few batched array operations (see :mod:`medalist.ensemble.scorers`); both pick the same models.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from medalist.ensemble.scorers import batch_scorer
from medalist.metrics import Metric


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
    scorer = batch_scorer(metric, preds, y)
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
