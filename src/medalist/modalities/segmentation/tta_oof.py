"""TTA on the OOF masks (``infer.tta_oof``): what the views bring to CV, and the threshold and
minimum size chosen on masks predicted as the test masks are.

``train`` chooses the post-processing (``postprocess.json``) on OOF masks predicted without
views; the test masks are predicted with ``infer.tta``, and averaging views smooths the
probabilities, which can move the best threshold. With ``infer.tta_oof`` each fold's validation
images are predicted again by the fold's prediction weights, with the views, and ``infer``
writes beside the test masks:

- ``oof_tta.masks.safetensors``: those masks, in train order (as ``oof.masks.safetensors``);
- ``tta.json``: ``views``, ``merge``, ``infer`` (the settings of ``infer.json``), ``cv`` (the
  plain OOF masks' scores), ``cv_tta`` (the TTA OOF masks') and ``postprocess`` (the threshold
  and minimum size searched on the TTA OOF masks, with its score; None for multiclass masks).

The submission applies ``tta.json``'s choice instead of ``postprocess.json``'s while it belongs
to the test masks of the last ``infer`` (:func:`tta_choice`): every mask ``infer`` first removes
both files (:func:`remove_tta_oof`), so an ``infer`` without ``tta_oof`` goes back to
``postprocess.json``, and the settings it was predicted with must be those of ``infer.json``.
``medalist package`` ships ``tta.json`` and ``infer.json`` with ``postprocess.json``, so the
bundle applies the same choice by the same rule.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.config import Config
from medalist.errors import DataError
from medalist.io import write_json
from medalist.layout import FULL_FIT, experiment_dir, prediction_weights, train_path
from medalist.modalities.segmentation import store
from medalist.prediction.infer import INFERENCE_KEYS, inference_settings

log = logging.getLogger(__name__)

OOF_TTA_MASKS = "oof_tta.masks.safetensors"
REPORT = "tta.json"
INFER_SETTINGS = "infer.json"  # what ``infer`` writes: the views behind the test masks
_warned: set[str] = set()  # the stale-choice warning once per folder, not once per image


def remove_tta_oof(cfg: Config) -> None:
    """Remove the TTA OOF masks and ``tta.json`` of an earlier ``infer``: they belong to its
    test masks, which the ``infer`` now running replaces."""
    folder = experiment_dir(cfg)
    for name in (OOF_TTA_MASKS, REPORT):
        (folder / name).unlink(missing_ok=True)


def run_tta_oof(
    own, cfg: Config, modality, accelerator, train: pd.DataFrame, folds_table, folds, views
) -> dict:
    """Predict each trained fold's validation images with its prediction weights and
    ``views``; write ``oof_tta.masks.safetensors`` and ``tta.json`` (main process); returns
    the report (empty without a fold of validation images, or off the main process).

    ``own`` is the task's :class:`~.predictions.MaskPredictions`.
    """
    if not accelerator.is_main_process:
        return {}
    folder = experiment_dir(cfg)
    plain = _plain_masks(folder)  # train's, checked before any prediction
    fold_of_row = folds_table["fold"].to_numpy()
    rows, levels = [], []  # each fold's masks kept as the levels they are written as
    for fold in [f for f in folds if f != FULL_FIT]:
        fold_rows = np.flatnonzero(fold_of_row == fold)
        subset = train.iloc[fold_rows].reset_index(drop=True)
        dataset = modality.build_dataset(
            cfg, subset, None, split="train", train=False, source=str(train_path(cfg))
        )
        paths = prediction_weights(cfg, fold)
        masks = own.predict_files(cfg, modality, accelerator, paths, dataset, views)
        levels += [store.quantise(mask) for mask in masks]
        rows += fold_rows.tolist()
    if not rows:
        log.info("infer.tta_oof: no trained fold has validation images; nothing to predict")
        return {}
    order = np.argsort(rows, kind="stable")
    rows = np.asarray(rows)[order]
    masks = store.Probabilities([levels[i] for i in order])
    return write_tta_oof(own, cfg, train, rows, masks, views, plain)


def write_tta_oof(
    own, cfg: Config, train: pd.DataFrame, rows, masks: store.Probabilities, views, plain=None
) -> dict:
    """Write the TTA OOF ``masks`` of the train rows ``rows`` (in that order, ascending) and
    ``tta.json``: their scores beside the plain OOF masks' and the post-processing searched on
    them; returns the report. ``masks`` hold the levels the file stores, so what is scored is
    what is written."""
    folder = experiment_dir(cfg)
    plain = _plain_masks(folder) if plain is None else plain
    ids = train[cfg.competition.id_column].iloc[rows].tolist()
    known = {str(i) for i in plain[0]}
    missing = [str(i) for i in ids if str(i) not in known]
    if missing:
        raise DataError(f"{folder / store.OOF_MASKS} has no mask of ids {missing[:5]}; run train")
    store.write_masks(folder / OOF_TTA_MASKS, ids, masks)
    targets = own.task.encode_targets(train)[rows]
    choice = own.search(cfg, targets, masks, write=False)
    plain_ids, plain_masks = plain
    position = {str(i): k for k, i in enumerate(plain_ids)}
    report = {
        "views": list(views),
        "merge": cfg.infer.tta_merge,
        "infer": inference_settings(cfg),
        "cv": own.task.score(targets, plain_masks[[position[str(i)] for i in ids]]),
        "cv_tta": own.task.score(targets, masks),
        "postprocess": choice,
    }
    write_json(folder / REPORT, report)
    log.info("CV without TTA %s, with TTA %s", report["cv"], report["cv_tta"])
    if choice is not None:
        log.info(
            "post-processing on TTA OOF (the submission's): threshold %.2f, min size %d px: "
            "%s %.5g",
            choice["threshold"],
            choice["min_size"],
            choice["metric"],
            choice["score"],
        )
    return report


def _plain_masks(folder: Path) -> tuple[list, store.Probabilities]:
    """The plain OOF masks (``train``'s, what ``cv`` scores) and their ids."""
    path = folder / store.OOF_MASKS
    if not path.is_file():
        raise DataError(f"{path} not found: train writes the OOF masks; run train first")
    return store.read_probabilities(path)


def tta_choice(folder: Path) -> dict | None:
    """The threshold and minimum size searched on the TTA OOF masks of ``folder`` (``tta.json``),
    when they belong to its test masks: the views, merge and precision of ``infer.json``. None
    without them (``infer`` ran without ``tta_oof``, or multiclass masks); a warning and None
    when they were predicted with other settings than the test masks."""
    report_path, settings_path = folder / REPORT, folder / INFER_SETTINGS
    if not report_path.is_file():
        return None
    report = json.loads(report_path.read_text(encoding="utf-8"))
    if report.get("postprocess") is None:
        return None
    settings = (
        json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    )
    used = report.get("infer") or {}
    stale = [key for key in INFERENCE_KEYS if used.get(key) != settings.get(key)]
    if stale:
        if str(report_path) not in _warned:
            _warned.add(str(report_path))
            log.warning(
                "%s: its post-processing was searched with other infer settings (%s) than the "
                "test masks' (%s); applying postprocess.json's instead",
                report_path,
                stale,
                settings_path,
            )
        return None
    return report["postprocess"]
