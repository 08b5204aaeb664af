"""Blenders: a fit on OOF predictions, then the same blend applied to any predictions.

Every blender takes predictions shaped (n_models, n_rows, n_columns) and returns one table
shaped (n_rows, n_columns). ``mean``, ``rank`` and ``logit`` learn nothing from the labels;
``weighted`` and ``hill_climb`` learn weights on the rows they are fitted on, so their honest
score comes from a nested fit (see :mod:`medalist.ensemble.nested`).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, logit, softmax
from scipy.stats import rankdata

from medalist.ensemble.hill import hill_climb
from medalist.metrics import BUILTIN, Metric

RANK_METRICS = ("roc_auc",)
CLIP = 1e-7


def rank_only(metric: Metric) -> bool:
    """Whether ``metric`` depends only on the order of each column (so a rank mean is fair)."""
    builtin = BUILTIN.get(metric.name)
    if builtin is not None and builtin.fn is metric.fn:
        return metric.name in RANK_METRICS
    return bool(getattr(metric.fn, "rank_only", False))


def weighted_mean(preds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_m weights[m] * preds[m]``, shape (n_rows, n_columns)."""
    return np.tensordot(np.asarray(weights, dtype=np.float64), preds, axes=1)


class Blender:
    """Equal-weight mean of probabilities or values (the base of every linear blend)."""

    learns = False  # whether fit() uses the labels (then only a nested score is honest)

    def __init__(self, task_type: str, metric: Metric):
        self.task_type, self.metric = task_type, metric
        self.weights: np.ndarray | None = None

    def fit(self, preds: np.ndarray, y: np.ndarray) -> Blender:
        self.weights = np.full(len(preds), 1.0 / len(preds))
        return self

    def predict(self, preds: np.ndarray) -> np.ndarray:
        return weighted_mean(preds, self.weights)

    def describe(self, names: list[str]) -> dict:
        return {"weights": dict(zip(names, map(float, self.weights), strict=True))}


class RankBlender(Blender):
    """Mean of each model's ranks per column, scaled to (0, 1]; for rank-only metrics."""

    def predict(self, preds: np.ndarray) -> np.ndarray:
        ranks = rankdata(preds, axis=1) / preds.shape[1]
        return weighted_mean(ranks, self.weights)


class LogitBlender(Blender):
    """Geometric mean (multiclass, renormalised) or mean of logits (binary, multilabel)."""

    def predict(self, preds: np.ndarray) -> np.ndarray:
        clipped = np.clip(preds, CLIP, 1 - CLIP)
        if self.task_type == "multiclass":
            return softmax(weighted_mean(np.log(clipped), self.weights), axis=1)
        return expit(weighted_mean(logit(clipped), self.weights))


class HillBlender(Blender):
    """Caruana hill climbing on the metric; the weights are the pick counts."""

    learns = True

    def __init__(
        self,
        task_type: str,
        metric: Metric,
        iterations: int,
        replacement: bool,
        patience: int = 0,
    ):
        super().__init__(task_type, metric)
        self.iterations, self.replacement, self.patience = iterations, replacement, patience
        self.selection: list[int] = []

    def fit(self, preds: np.ndarray, y: np.ndarray) -> HillBlender:
        result = hill_climb(preds, y, self.metric, self.iterations, self.replacement, self.patience)
        self.weights, self.selection = result.weights, result.selection
        return self

    def describe(self, names: list[str]) -> dict:
        return super().describe(names) | {"selection": [names[m] for m in self.selection]}


class WeightedBlender(Blender):
    """Weights on the simplex (non-negative, summing to one) minimising an OOF objective.

    SLSQP with analytic gradients. The objective is the metric itself for log_loss, rmse and
    mae; a piecewise-constant metric (accuracy, roc_auc, f1, ...) has no useful gradient, so
    its weights minimise log loss (classification) or squared error (regression) instead.
    """

    learns = True

    def fit(self, preds: np.ndarray, y: np.ndarray) -> WeightedBlender:
        objective = _objective(self.metric, self.task_type, preds, y)
        n_models = len(preds)
        result = minimize(
            objective,
            np.full(n_models, 1.0 / n_models),
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * n_models,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": np.ones_like}],
            options={"maxiter": 500, "ftol": 1e-12},
        )
        weights = np.clip(result.x, 0.0, None)
        self.weights = weights / weights.sum()
        return self


def weight_objective(metric: Metric, task_type: str) -> str:
    """The loss the ``weighted`` blend minimises: the metric when smooth, else a surrogate."""
    builtin = BUILTIN.get(metric.name)
    name = metric.name if builtin is not None and builtin.fn is metric.fn else ""
    if task_type == "regression":
        return "mae" if name == "mae" else "squared_error"
    return "log_loss"


def _objective(metric: Metric, task_type: str, preds: np.ndarray, y: np.ndarray):
    """``f(w) -> (value, gradient)`` of the loss the weights minimise."""
    objective = weight_objective(metric, task_type)
    if objective == "log_loss":
        return _log_loss_objective(preds, y)
    target = y.reshape(preds.shape[1:])
    return _error_objective(preds, target, absolute=objective == "mae")


def _log_loss_objective(preds: np.ndarray, y: np.ndarray):
    if y.ndim == 1 and preds.shape[2] > 1:  # probability of the true class
        true = preds[:, np.arange(len(y)), y].reshape(len(preds), -1)
    else:
        positive = y.reshape(len(y), -1) == 1
        true = np.where(positive[None], preds, 1 - preds).reshape(len(preds), -1)

    def value(w):
        q = np.clip(w @ true, CLIP, None)
        return -np.mean(np.log(q)), -(true / q).mean(axis=1)

    return value


def _error_objective(preds: np.ndarray, target: np.ndarray, absolute: bool):
    flat, goal = preds.reshape(len(preds), -1), target.reshape(-1)

    def value(w):
        residual = w @ flat - goal
        if absolute:
            return np.mean(np.abs(residual)), (flat * np.sign(residual)).mean(axis=1)
        return np.mean(residual**2), 2 * (flat * residual).mean(axis=1)

    return value
