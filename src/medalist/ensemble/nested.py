"""Honest CV of a blend: fitted on the other folds' OOF rows, scored on the held-out fold.

The in-sample figure fits the blend (weights, hill-climbing selection, level-2 model) on every
OOF row and scores it on the same rows: it is optimistic whenever the blend learns from the
labels. The nested figure fits one blend per fold on the other folds and scores each on its
own fold; a blend that learns nothing (mean, rank, logit) has the same figure for both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from medalist.ensemble.blend import Blender
from medalist.metrics import Metric


def nested_predictions(
    make: Callable[[], Blender], preds: np.ndarray, y: np.ndarray, fold: np.ndarray
) -> tuple[np.ndarray, dict[int, Blender]]:
    """Out-of-fold blend of every row, and the blender fitted for each fold.

    Args:
        make: returns a new, unfitted blender.
        preds: OOF predictions (n_models, n_rows, n_columns).
        y: targets in train row order.
        fold: the fold of every row (folds.csv).
    """
    out = np.zeros(preds.shape[1:])
    fitted = {}
    for held_out in np.unique(fold):
        train, valid = fold != held_out, fold == held_out
        blender = make().fit(preds[:, train], y[train])
        out[valid] = blender.predict(preds[:, valid])
        fitted[int(held_out)] = blender
    return out, fitted


def score(
    metrics: list[Metric],
    y: np.ndarray,
    pred: np.ndarray,
    fold: np.ndarray,
    test_like: np.ndarray | None = None,
) -> dict[str, dict]:
    """Pooled CV per metric, per-fold scores, and their mean and std; with ``test_like`` (0/1
    per row, ``folds.test_like``) also ``cv_test_like``, the CV on the flagged rows alone."""
    per_fold = {
        str(k): {m.name: m(y[fold == k], pred[fold == k]) for m in metrics} for k in np.unique(fold)
    }
    flagged = {} if test_like is None else {"cv_test_like": test_like == 1}
    return {
        **{key: {m.name: m(y[rows], pred[rows]) for m in metrics} for key, rows in flagged.items()},
        "cv": {m.name: m(y, pred) for m in metrics},
        "folds": per_fold,
        "fold_mean": {
            m.name: float(np.mean([s[m.name] for s in per_fold.values()])) for m in metrics
        },
        "fold_std": {
            m.name: float(np.std([s[m.name] for s in per_fold.values()])) for m in metrics
        },
    }
