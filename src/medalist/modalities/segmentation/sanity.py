"""The leak alarm on masks: what :mod:`medalist.honest.sanity` asks of a mask task.

A row's label is its mask (:class:`~medalist.modalities.segmentation.task.RowMasks`), and the
alarm's shuffle moves whole masks between groups of identical images of one fold. A mask fits
only an image of its own size, so rows exchange masks only with rows of the same fold *and* the
same image size (:func:`size_kinds` gives each row its size's number; the alarm permutes within
each (fold, size) block, and identical images of different sizes are never one group). A fold
with a single image of some size keeps that image's own mask: nothing of its size can replace it,
and it is still scored (chance is then that mask's score, the same in every shuffle).

Scores (:func:`scores`): each metric as the task scores masks (Dice, IoU per image at threshold
0.5, their mean) of the fixed OOF masks against the shuffled masks and against each fresh
shuffle. The true masks of the scored rows are read once and kept in memory, and the pixel counts
of each (predicted image, true mask) pair computed once: a shuffle only re-pairs them.

The prior's score (reported beside chance): the mean training mask per pixel is not defined
across image sizes, so the prior is a constant mask at each image's own size, each channel at the
fraction of foreground pixels of the scored masks (multiclass: each class's pixel fraction, whose
argmax is the commonest class everywhere). At threshold 0.5 that is the empty mask wherever the
foreground covers under half the pixels: what a model that learnt nothing but the pixel prior
predicts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.config import Config
from medalist.modalities import image
from medalist.modalities.segmentation import store
from medalist.modalities.segmentation.masks import image_size


def size_kinds(cfg: Config, train: pd.DataFrame, source: str) -> np.ndarray:
    """Each row's image size as a number (rows of one size share it), from the file headers."""
    paths = image.image_paths(cfg, train, "train", source)
    numbers: dict[tuple[int, int], int] = {}
    sizes = (image_size(p, f"{source}: row {row}") for row, p in enumerate(paths))
    return np.array([numbers.setdefault(s, len(numbers)) for s in sizes], dtype=np.int64)


def labels_sha256(masks) -> str:
    """The sha256 of masks in order (their shapes, types and pixels): which labels a run used."""
    hasher = hashlib.sha256()
    for row in range(len(masks)):
        mask = np.ascontiguousarray(masks[row])
        hasher.update(f"{mask.dtype}{mask.shape}".encode())
        hasher.update(mask.tobytes())
    return hasher.hexdigest()


def read_oof(folder: Path) -> tuple[list, store.Probabilities]:
    """The ids and OOF probability masks of the run in ``folder``."""
    return store.read_probabilities(Path(folder) / store.OOF_MASKS)


def scores(task, observed, nulls: list, predictions) -> dict[str, tuple]:
    """Each metric's (score against ``observed``, scores against each of ``nulls``, score of the
    constant prior) for the OOF masks ``predictions``; ``observed`` and ``nulls`` are
    :class:`~medalist.modalities.segmentation.task.RowMasks` in the predictions' order."""
    truth: dict[int, np.ndarray] = {}  # row -> its true mask, read once
    counts: dict[tuple[int, int], tuple] = {}  # (image, row) -> pixel counts, computed once

    def score(labels) -> dict[str, float]:
        per_image = []
        for image_row, row in enumerate(int(r) for r in labels.rows):
            if row not in truth:
                truth[row] = np.asarray(labels.targets[row])
            if (image_row, row) not in counts:
                probs = np.asarray(predictions[image_row])
                counts[image_row, row] = task.counts(probs, truth[row])
            per_image.append(counts[image_row, row])
        return task.scores_from_counts(per_image)

    at_observed = score(observed)
    at_nulls = [score(labels) for labels in nulls]
    masks = [truth[int(row)] for row in observed.rows]
    at_prior = task.score(masks, prior_masks(task, masks))
    return {
        name: (at_observed[name], np.array([s[name] for s in at_nulls]), at_prior[name])
        for name in at_observed
    }


def prior_masks(task, masks: list[np.ndarray]) -> list[np.ndarray]:
    """The constant prior of ``masks`` (see the module docstring) at each mask's size."""
    channels = task.num_outputs
    if task.mode == "multiclass":
        pixels = sum(np.bincount(m.ravel(), minlength=channels)[:channels] for m in masks)
    else:
        pixels = sum(m.reshape(channels, -1).sum(axis=1) for m in masks)
    total = sum(m.shape[-1] * m.shape[-2] for m in masks)
    fraction = (np.asarray(pixels, dtype=np.float64) / max(total, 1)).astype(np.float32)
    return [np.broadcast_to(fraction[:, None, None], (channels, *m.shape[-2:])) for m in masks]
