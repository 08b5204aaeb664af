"""Probability masks to final masks: a threshold, then small connected components removed.

Both are chosen on the OOF probability masks, where the true masks are known, and applied
unchanged to the test set: :func:`search` scores every (threshold, min_size) pair of a grid by
the mean Dice (or IoU) of :mod:`~medalist.modalities.segmentation.scoring` and keeps the best.
Binary and multilabel masks only (one threshold and one size for every channel); a multiclass
mask is an argmax, with no threshold to choose.

Ties (equal scores, as on a plateau of thresholds that give the same masks) go to the choice that
changes the plain prediction least: the smallest ``min_size`` first (0 removes nothing), then the
threshold nearest 0.5, then the higher of two thresholds equally near.

Components are 8-connected by default (diagonal neighbours join, as OpenCV's
``connectedComponents`` counts them); ``connectivity=4`` joins edge neighbours only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from medalist.modalities.segmentation.scoring import from_counts

CONNECTIVITY = (4, 8)
CHOICE_FILE = "postprocess.json"  # the threshold and minimum size chosen on an experiment's OOF
# About how many pixels the search labels at once: 2**24 is 64 MiB of probabilities and as much
# of component labels.
CHUNK_PIXELS = 2**24


def _structure(connectivity: int) -> np.ndarray:
    """Neighbours within one mask of a stack (S, H, W): never across masks."""
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    return structure


def _stack(masks: np.ndarray) -> np.ndarray:
    """Masks (..., H, W) as one stack (S, H, W), labelled in one call."""
    return masks.reshape(-1, *masks.shape[-2:])


def remove_small_components(masks: np.ndarray, min_size: int, connectivity: int = 8) -> np.ndarray:
    """Boolean masks (..., H, W) without their components of fewer than ``min_size`` pixels."""
    masks, structure = np.asarray(masks).astype(bool), _structure(connectivity)
    if min_size <= 1:  # every component has a pixel at least
        return masks
    labels, _ = ndimage.label(_stack(masks), structure=structure)
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False  # the background
    return keep[labels].reshape(masks.shape)


def postprocess(
    probs: np.ndarray, threshold: float, min_size: int, connectivity: int = 8
) -> np.ndarray:
    """Boolean masks: probabilities >= ``threshold``, components under ``min_size`` removed."""
    return remove_small_components(np.asarray(probs) >= threshold, min_size, connectivity)


def final_masks(probs: np.ndarray, multiclass: bool, choice: dict | None) -> np.ndarray:
    """One image's final boolean masks (C, H, W) from its probabilities, as the submission
    encodes them: the one-hot argmax for multiclass, else the ``threshold``, ``min_size`` and
    ``connectivity`` of ``choice`` (``postprocess.json``'s keys)."""
    if multiclass:
        return np.arange(len(probs))[:, None, None] == probs.argmax(0)[None]
    return postprocess(
        probs, choice["threshold"], choice["min_size"], choice.get("connectivity", 8)
    )


@dataclass(frozen=True)
class Choice:
    """The chosen post-processing and the score of every pair of the grid."""

    threshold: float
    min_size: int
    score: float
    table: pd.DataFrame  # threshold, min_size, score: one row per pair, in grid order


def search(
    probs: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    thresholds: Sequence[float],
    min_sizes: Sequence[int],
    *,
    metric: str = "dice",
    empty: str = "one",
    connectivity: int = 8,
    chunk_pixels: int = CHUNK_PIXELS,
) -> Choice:
    """The (threshold, min_size) pair of the grid with the best mean score on OOF masks.

    Args:
        probs: each image's OOF probabilities, (C, H, W) or (H, W) floats; images may differ in
            size (an array (N, ...) is N images; any sequence, read image by image: masks kept
            as levels, :class:`~medalist.modalities.segmentation.store.Probabilities`).
        masks: each image's true mask, of its probabilities' shape, values >= 0.5 counting as
            true (any sequence, read once per image).
        thresholds: thresholds to try, in [0, 1].
        min_sizes: minimum component sizes to try, in pixels (0: keep every component).
        metric, empty: as :func:`medalist.modalities.segmentation.scoring.score_table`.
        connectivity: 8 or 4.
        chunk_pixels: about how many pixels are labelled at once; images of one size are
            stacked up to it, so memory stays bounded however many OOF images there are.

    The score of a pair is the mean over every image and channel. Each threshold labels a
    chunk's masks once; every min_size is then a sum over the components' sizes and true pixels
    (``bincount``), not another pass over the pixels.
    """
    if len(probs) != len(masks):
        raise ValueError(f"probabilities and masks of one shape, got {len(probs)} and {len(masks)}")
    if not len(probs):
        raise ValueError("no masks to search the post-processing on")
    grid_t = np.asarray(thresholds, dtype=np.float64)
    grid_m = np.asarray(min_sizes, dtype=np.int64)
    if not grid_t.size or not grid_m.size:
        raise ValueError("thresholds and min_sizes need at least one value each")
    if not ((grid_t >= 0) & (grid_t <= 1)).all() or (grid_m < 0).any():
        raise ValueError(f"thresholds in [0, 1] and min_sizes >= 0, got {thresholds}, {min_sizes}")
    structure = _structure(connectivity)
    # Each image's counts: (thresholds, min_sizes, its channels), true pixels per channel.
    per_image: list = [None] * len(probs)
    for rows in _chunks(probs, chunk_pixels):
        chunk_probs, truth = [], []
        for i in rows:  # each image read once: probs and masks may read from files
            p, t = np.asarray(probs[i]), np.asarray(masks[i])
            if not np.issubdtype(p.dtype, np.floating) or p.shape != t.shape:
                raise ValueError(
                    f"image {i}: float probabilities and masks of one shape, got {p.shape}, "
                    f"{t.shape}"
                )
            chunk_probs.append(p)
            truth.append(t >= 0.5)
        chunk_probs, truth = _stack(np.stack(chunk_probs)), _stack(np.stack(truth))
        hits = np.empty((grid_t.size, grid_m.size, len(truth)))
        predicted = np.empty_like(hits)
        for t, threshold in enumerate(grid_t):
            hits[t], predicted[t] = _kept_counts(chunk_probs >= threshold, truth, grid_m, structure)
        true_pixels = truth.reshape(len(truth), -1).sum(1)
        channels = len(truth) // len(rows)
        for k, i in enumerate(rows):
            mine = slice(k * channels, (k + 1) * channels)
            per_image[i] = (hits[..., mine], predicted[..., mine], true_pixels[mine])
    # Every channel of every image is one mask, in image order as one stack would hold them.
    hits, predicted, true_pixels = (
        np.concatenate([counts[j] for counts in per_image], axis=-1) for j in range(3)
    )
    scores = from_counts(hits, predicted, true_pixels, metric=metric, empty=empty)
    scored = ~np.isnan(scores)
    counts = scored.sum(-1)
    means = np.where(
        counts > 0, np.where(scored, scores, 0).sum(-1) / np.maximum(counts, 1), np.nan
    )
    if np.isnan(means).all():
        raise ValueError(
            "every mask pair is skipped (empty='skip' on empty masks): nothing to score"
        )
    t, m = _best(means, grid_t, grid_m)
    table = pd.DataFrame(
        {
            "threshold": np.repeat(grid_t, grid_m.size),
            "min_size": np.tile(grid_m, grid_t.size),
            "score": means.ravel(),
        }
    )
    return Choice(float(grid_t[t]), int(grid_m[m]), float(means[t, m]), table)


def _chunks(probs: Sequence[np.ndarray], chunk_pixels: int):
    """Groups of image positions of one shape, each of at most ``chunk_pixels`` pixels (one
    image at least), in image order within each shape."""
    by_shape: dict[tuple, list[int]] = {}
    for i in range(len(probs)):
        by_shape.setdefault(np.shape(probs[i]), []).append(i)
    for shape, rows in by_shape.items():
        per_chunk = max(1, chunk_pixels // max(1, int(np.prod(shape))))
        for start in range(0, len(rows), per_chunk):
            yield rows[start : start + per_chunk]


def _kept_counts(hard, truth, min_sizes, structure) -> tuple[np.ndarray, np.ndarray]:
    """Per min_size and mask: true pixels kept and pixels kept, each (min_sizes, S)."""
    labels, n = ndimage.label(hard, structure=structure)
    flat = labels.ravel()
    size = np.bincount(flat, minlength=n + 1)
    true_in = np.bincount(flat, weights=truth.ravel(), minlength=n + 1)
    # The mask each component lies in: where its bounding box starts along the stack.
    owner = np.array([0] + [box[0].start for box in ndimage.find_objects(labels)], dtype=np.int64)
    hits = np.empty((len(min_sizes), len(hard)))
    predicted = np.empty_like(hits)
    for i, min_size in enumerate(min_sizes):
        keep = size >= min_size
        keep[0] = False
        hits[i] = np.bincount(owner[keep], weights=true_in[keep], minlength=len(hard))
        predicted[i] = np.bincount(owner[keep], weights=size[keep], minlength=len(hard))
    return hits, predicted


def _best(means: np.ndarray, thresholds: np.ndarray, min_sizes: np.ndarray) -> tuple[int, int]:
    """The best cell of (thresholds, min_sizes); ties broken as the module docstring says."""
    best = np.nanmax(means)
    tied = zip(*np.nonzero(np.isclose(means, best, rtol=0, atol=1e-12)), strict=True)
    return min(
        tied, key=lambda c: (min_sizes[c[1]], abs(thresholds[c[0]] - 0.5), -thresholds[c[0]])
    )
