"""Dice and IoU of predicted masks, per image and per channel (or class), and their mean.

With ``I`` the predicted pixels that are true, ``P`` the predicted ones and ``T`` the true ones
of one image and one channel::

    dice = 2 I / (P + T)        iou = I / (P + T - I)

Both are undefined when ``P = T = 0`` (nothing predicted on an empty mask). ``empty`` says what
that pair scores: ``"one"`` scores it 1, as Kaggle's segmentation metrics do (the prediction is
right); ``"skip"`` leaves it out of the mean (NaN in the table), so that the score measures only
the images with something to find or something wrongly found. An empty mask with a non-empty
prediction, or the reverse, scores 0 either way.

The mean is over every (image, channel) pair of the table, as Kaggle averages over
(ImageId, ClassId) rows; NaN when every pair is skipped.

Modes: ``binary`` and ``multilabel`` probabilities (N, C, H, W) (binary: C = 1, or (N, H, W))
become masks at ``threshold``, each channel scored against its true mask (N, C, H, W), values
>= 0.5 counting as true; ``multiclass`` probabilities (N, C, H, W) become one class per pixel by
argmax, scored per class against class indices (N, H, W).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from medalist.metrics import Metric

MODES = ("binary", "multiclass", "multilabel")
METRICS = ("dice", "iou")
EMPTY = ("one", "skip")


def from_counts(
    intersection: np.ndarray,
    predicted: np.ndarray,
    true: np.ndarray,
    metric: str = "dice",
    empty: str = "one",
) -> np.ndarray:
    """Dice or IoU from pixel counts (any shape, element by element), empty pairs as ``empty``."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if empty not in EMPTY:
        raise ValueError(f"empty must be one of {EMPTY}, got {empty!r}")
    intersection, predicted, true = (
        np.asarray(a, dtype=np.float64) for a in (intersection, predicted, true)
    )
    total = predicted + true
    denominator = total if metric == "dice" else total - intersection
    numerator = 2 * intersection if metric == "dice" else intersection
    both_empty = total == 0
    out = numerator / np.where(both_empty, 1.0, denominator)
    out[both_empty] = 1.0 if empty == "one" else np.nan
    return out


def binary_counts(predicted: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, ...]:
    """(intersection, predicted, true) pixel counts of boolean masks (N, C, H, W), each (N, C)."""
    predicted, true = predicted.reshape(*predicted.shape[:2], -1), true.reshape(*true.shape[:2], -1)
    return (predicted & true).sum(-1), predicted.sum(-1), true.sum(-1)


def class_counts(predicted: np.ndarray, true: np.ndarray, classes: int) -> tuple[np.ndarray, ...]:
    """(intersection, predicted, true) pixel counts per class of class-index masks (N, H, W).

    One ``bincount`` of ``(image, true class, predicted class)`` gives each image's confusion
    matrix (N, classes, classes): its diagonal, column sums and row sums.
    """
    n = len(true)
    flat_true, flat_pred = true.reshape(n, -1).astype(np.int64), predicted.reshape(n, -1)
    if flat_true.size and (flat_true.min() < 0 or flat_true.max() >= classes):
        raise ValueError(f"true class indices must lie in [0, {classes})")
    image = np.arange(n, dtype=np.int64)[:, None]
    cells = (image * classes + flat_true) * classes + flat_pred
    confusion = np.bincount(cells.ravel(), minlength=n * classes * classes)
    confusion = confusion.reshape(n, classes, classes)
    return confusion.diagonal(axis1=1, axis2=2), confusion.sum(1), confusion.sum(2)


def score_table(
    probs: np.ndarray,
    masks: np.ndarray,
    mode: str,
    *,
    metric: str = "dice",
    threshold: float = 0.5,
    empty: str = "one",
) -> np.ndarray:
    """The score of each image and channel (or class), shape (N, C); NaN where skipped.

    Args:
        probs: probabilities, (N, C, H, W) (binary also (N, H, W)), floats.
        masks: true masks, as ``probs`` for binary and multilabel, class indices (N, H, W) for
            multiclass.
        mode: ``binary``, ``multilabel`` or ``multiclass``.
        metric: ``dice`` or ``iou``.
        threshold: a pixel is predicted where its probability is >= threshold (not multiclass).
        empty: ``one`` or ``skip``; see the module docstring.
    """
    probs, masks = np.asarray(probs), np.asarray(masks)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not np.issubdtype(probs.dtype, np.floating):
        raise ValueError(f"probabilities must be floats (dequantise first), got {probs.dtype}")
    if mode == "multiclass":
        if probs.ndim != 4 or masks.shape != probs.shape[:1] + probs.shape[2:]:
            raise ValueError(
                f"probs (N, C, H, W) and masks (N, H, W), got {probs.shape}, {masks.shape}"
            )
        counts = class_counts(probs.argmax(1), masks, probs.shape[1])
    else:
        if mode == "binary" and probs.ndim == 3:
            probs = probs[:, None]
        if mode == "binary" and masks.ndim == 3:
            masks = masks[:, None]
        if probs.ndim != 4 or masks.shape != probs.shape:
            raise ValueError(
                f"probs and masks (N, C, H, W) alike, got {probs.shape}, {masks.shape}"
            )
        counts = binary_counts(probs >= threshold, masks >= 0.5)
    return from_counts(*counts, metric=metric, empty=empty)


def mean_score(table: np.ndarray) -> float:
    """The mean over every scored (image, channel) pair; NaN when none is scored."""
    table = np.asarray(table, dtype=np.float64)
    scored = table[~np.isnan(table)]
    return float(scored.mean()) if scored.size else float("nan")


def mask_metric(name: str, mode: str, empty: str) -> Metric:
    """``dice`` or ``iou`` as a :class:`~medalist.metrics.Metric` (greater is better) of stacked
    probability masks: ``metric(masks, probs)`` is the mean of :func:`score_table`."""
    return Metric(name, partial(_stacked_score, mode=mode, metric=name, empty=empty), True)


def _stacked_score(y_true, y_pred, *, mode: str, metric: str, empty: str) -> float:
    return mean_score(score_table(y_pred, y_true, mode, metric=metric, empty=empty))
