"""The seed-averaged model of ``train.seeds`` (:mod:`medalist.honest.seeds`) made of masks.

Each seed trains and predicts as an experiment of its own, ``outputs/<experiment>@s<seed>/``.
The averaged model's masks are each image's mean over the seeds' stored masks
(:func:`~.store.average_masks`, which refuses seeds whose files hold other ids or shapes):

- OOF (``oof.masks.safetensors``, train order): scored as stored, per fold and as one
  experiment's OOF is, with the post-processing searched on these averaged masks
  (``postprocess.json``, which the submission of the averaged model applies);
- test (``test.masks.safetensors``): the seeds' test masks after ``infer``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.config import Config
from medalist.data import read_train
from medalist.errors import DataError
from medalist.layout import experiment_dir
from medalist.modalities.segmentation import store, tta_oof


def seed_mean(cfg: Config, folders: list[Path], name: str, stage: str) -> tuple[list, list]:
    """The ids and per-image mean masks of the file ``name`` in every seed's folder."""
    label = f"experiment '{cfg.train.experiment}'"
    paths = [folder / name for folder in folders]
    for path in paths:
        if not path.is_file():
            raise DataError(f"{label}: {path} not found (run `medalist {stage}` first)")
    try:
        return store.average_masks(paths)
    except DataError as exc:
        raise DataError(
            f"{label}: the seeds' {name} hold different images; run `medalist {stage}` for "
            f"them again ({exc})"
        ) from None


def average_oof(owner, cfg: Config, folders: list[Path], targets, folds: pd.DataFrame) -> dict:
    """Write the seeds' mean OOF masks and score them: per fold, then as
    ``owner.score_oof`` scores one experiment's OOF (CV, ``cv_test_like``, ``complete``, the
    post-processing search).

    Args:
        owner: the task's :class:`~.predictions.MaskPredictions`.
        folders: the seeds' experiment folders.
        targets: the train masks (:class:`~.task.RowMasks`), train row order.
        folds: the project's folds in train row order (:func:`medalist.folds.load_folds`).
    """
    ids, mean = seed_mean(cfg, folders, store.OOF_MASKS, "train")
    rows, masks = _in_train_order(cfg, folds[cfg.competition.id_column], ids, mean, store.OOF_MASKS)
    fold_of_row = folds["fold"].to_numpy()[rows]
    per_fold = {}
    for fold in sorted(np.unique(fold_of_row)):
        picked = np.flatnonzero(fold_of_row == fold)
        per_fold[str(int(fold))] = owner.task.score(targets[rows[picked]], masks[picked])
    # The folds table holds the train ids in train order: all score_oof reads of the train table.
    return {"folds": per_fold, **owner.score_oof(cfg, folds, targets, folds, rows, masks)}


def average_test(owner, cfg: Config, folders: list[Path]) -> pd.DataFrame:
    """Write the seeds' mean test masks in ``outputs/<experiment>/``; returns the test ids.

    With ``infer.tta_oof`` (each seed's ``infer`` predicted its OOF masks with the views), also
    the seeds' mean TTA OOF masks and ``tta.json``, whose post-processing the averaged model's
    submission then applies (:mod:`~.tta_oof`); without it, an earlier run's TTA files are
    removed, as every mask ``infer`` removes them.
    """
    ids, masks = seed_mean(cfg, folders, store.TEST_MASKS, "infer")
    store.write_masks(experiment_dir(cfg) / store.TEST_MASKS, ids, masks)
    tta_oof.remove_tta_oof(cfg)
    if cfg.infer.tta_oof:
        oof_ids, oof_mean = seed_mean(cfg, folders, tta_oof.OOF_TTA_MASKS, "infer")
        train = read_train(cfg)
        rows, oof_masks = _in_train_order(
            cfg, train[cfg.competition.id_column], oof_ids, oof_mean, tta_oof.OOF_TTA_MASKS
        )
        views = json.loads((folders[0] / tta_oof.REPORT).read_text(encoding="utf-8"))["views"]
        tta_oof.write_tta_oof(owner, cfg, train, rows, oof_masks, views)
    return pd.DataFrame({cfg.competition.id_column: ids})


def _in_train_order(
    cfg: Config, train_ids: pd.Series, ids: list, masks: list[np.ndarray], name: str
) -> tuple[np.ndarray, store.Probabilities]:
    """The train rows of ``ids`` in ascending order, and their masks in that order as the file
    stores them (quantised), so that what is scored is what is written."""
    position = {str(i): row for row, i in enumerate(train_ids.astype(str))}
    unknown = [i for i in ids if str(i) not in position]
    if unknown:
        raise DataError(
            f"experiment '{cfg.train.experiment}': the seeds' {name} hold ids that are not "
            f"train ids, e.g. {unknown[:5]}"
        )
    rows = np.array([position[str(i)] for i in ids], dtype=int)
    order = np.argsort(rows, kind="stable")
    return rows[order], store.Probabilities([store.quantise(masks[i]) for i in order])
