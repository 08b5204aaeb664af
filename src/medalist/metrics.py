"""Metrics with their direction, by name or by import path.

Every metric takes ``(y_true, y_pred)`` in the task's array format: ``y_true`` holds class indices
(binary, multiclass), 0/1 columns (multilabel) or values (regression); ``y_pred`` holds
probabilities ``(n, n_outputs)`` or regression values ``(n, n_targets)``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from medalist.errors import ConfigError


@dataclass(frozen=True)
class Metric:
    """A named score and whether larger is better."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    greater_is_better: bool

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> float:
        return float(self.fn(y_true, y_pred))

    def better(self, new: float, old: float | None) -> bool:
        if old is None or np.isnan(old):
            return not np.isnan(new)
        return new > old if self.greater_is_better else new < old


def _labels(y_pred: np.ndarray) -> np.ndarray:
    """Hard labels: argmax for several columns, threshold 0.5 for one."""
    return y_pred.argmax(1) if y_pred.shape[1] > 1 else (y_pred[:, 0] >= 0.5).astype(int)


def accuracy(y_true, y_pred):
    if y_true.ndim == 2:  # multilabel: exact-match ratio
        return skm.accuracy_score(y_true, (y_pred >= 0.5).astype(int))
    return skm.accuracy_score(y_true, _labels(y_pred))


def roc_auc(y_true, y_pred):
    if y_true.ndim == 2:
        return skm.roc_auc_score(y_true, y_pred, average="macro")
    if y_pred.shape[1] == 1:
        return skm.roc_auc_score(y_true, y_pred[:, 0])
    return skm.roc_auc_score(y_true, y_pred, multi_class="ovr", labels=np.arange(y_pred.shape[1]))


def log_loss(y_true, y_pred):
    eps = 1e-15
    if y_true.ndim == 2:  # mean binary log loss over labels
        p = np.clip(y_pred, eps, 1 - eps)
        return float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))
    if y_pred.shape[1] == 1:
        return skm.log_loss(y_true, np.clip(y_pred[:, 0], eps, 1 - eps), labels=[0, 1])
    # As Kaggle scores it: clip, then rescale each row to sum to one (float32 sums drift).
    p = np.clip(np.asarray(y_pred, dtype=np.float64), eps, 1)
    p /= p.sum(axis=1, keepdims=True)
    return skm.log_loss(y_true, p, labels=np.arange(y_pred.shape[1]))


def macro_f1(y_true, y_pred):
    if y_true.ndim == 2:
        return skm.f1_score(y_true, (y_pred >= 0.5).astype(int), average="macro", zero_division=0)
    return skm.f1_score(y_true, _labels(y_pred), average="macro", zero_division=0)


def qwk(y_true, y_pred):
    """Quadratic weighted kappa: class labels from probabilities, or rounded regression values."""
    if np.issubdtype(y_true.dtype, np.floating):  # regression target: round both sides
        truth, hard = np.rint(y_true.ravel()), np.rint(y_pred[:, 0])
        return skm.cohen_kappa_score(truth.astype(int), hard.astype(int), weights="quadratic")
    return skm.cohen_kappa_score(y_true, _labels(y_pred), weights="quadratic")


def rmse(y_true, y_pred):
    return float(np.sqrt(np.mean((y_true.reshape(y_pred.shape) - y_pred) ** 2)))


def mae(y_true, y_pred):
    return float(np.mean(np.abs(y_true.reshape(y_pred.shape) - y_pred)))


BUILTIN: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", accuracy, True),
        Metric("roc_auc", roc_auc, True),
        Metric("log_loss", log_loss, False),
        Metric("macro_f1", macro_f1, True),
        Metric("qwk", qwk, True),
        Metric("rmse", rmse, False),
        Metric("mae", mae, False),
    )
}


def import_object(path: str, key: str = "task.metrics") -> object:
    """Import ``'package.module:name'``; the project's own ``src/`` folder is searched too.

    A generated competition project keeps its code in ``src/<package>``; stages run from the
    project root, so that folder is added to the search path here (only when asked for).
    """
    if ":" not in path:
        raise ConfigError(f"{key}: '{path}' is not a metric name nor 'package.module:function'")
    module_name, attr = path.split(":", 1)
    local_src = Path.cwd() / "src"
    if local_src.is_dir() and str(local_src) not in sys.path:
        sys.path.append(str(local_src))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import '{module_name}': {exc}") from exc
    if not hasattr(module, attr):
        raise ConfigError(f"{key}: module '{module_name}' has no '{attr}'")
    return getattr(module, attr)


def get_metric(name: str, direction: str | None = None) -> Metric:
    """A built-in metric by name, or a function by import path with its direction."""
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise ConfigError(f"task.metrics: unknown metric '{name}'; built-in: {sorted(BUILTIN)}")
    fn = import_object(name)
    if not callable(fn):
        raise ConfigError(f"task.metrics: '{name}' is not callable")
    declared = getattr(fn, "greater_is_better", None)
    if direction is None and declared is None:
        raise ConfigError(
            f"task.metric_direction: say whether '{name}' is maximized or minimized "
            "(or set greater_is_better on the function)"
        )
    greater = direction == "maximize" if direction else bool(declared)
    return Metric(name, fn, greater)
