"""The ``infer`` stage: test predictions of every trained fold, and their average.

Reads each fold's prediction weights (those that scored its OOF rows, as ``fold{k}/scores.json``
records them: the model's, the EMA's or SWA's, or the mean of its snapshots), ``task.json`` and
``data/test.csv``. Writes ``outputs/<experiment>/fold{k}/test.parquet`` and the fold average
``test.parquet``, in the prediction-table format (id, then one column per output), and
``infer.json``: the views and merge they were predicted with (what ``medalist package`` ships,
whatever config trained the folds).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from medalist.config import Config
from medalist.data import read_test, read_train
from medalist.errors import DataError
from medalist.folds import load_folds
from medalist.io import write_json, write_parquet
from medalist.layout import (
    FULL_FIT,
    experiment_dir,
    fold_dir,
    has_prediction_weights,
    prediction_weights,
    test_path,
    train_path,
)
from medalist.modalities import get_modality
from medalist.prediction.tta import batched_views, merge
from medalist.tasks import Task, build_task
from medalist.training.runtime import check_precision, make_accelerator, make_loader
from medalist.training.stage import mean_prediction
from medalist.training.weights import load_weights

log = logging.getLogger(__name__)


def trained_folds(cfg: Config) -> list[int]:
    """Folds with saved weights: the configured ones, or every fold folder found."""
    out = experiment_dir(cfg)
    if cfg.train.folds is not None:
        folds = list(cfg.train.folds)
    else:
        folds = sorted(int(p.name[4:]) for p in out.glob("fold*") if p.name[4:].isdigit())
        folds += [FULL_FIT] if fold_dir(cfg, FULL_FIT).is_dir() else []
    missing = [f for f in folds if not has_prediction_weights(cfg, f)]
    if not folds or missing:
        raise DataError(
            f"{out}: no trained weights for fold(s) {missing or 'any'}; run train first"
        )
    return folds


def load_task(cfg: Config, train: pd.DataFrame) -> Task:
    """The task as it was trained (its classes and columns come from task.json)."""
    task = build_task(cfg, train)
    info = json.loads((experiment_dir(cfg) / "task.json").read_text())
    task.classes = info["classes"]
    return task


@torch.no_grad()
def predict(model, loader, accelerator, task: Task, views: list[str], how: str, progress=False):
    """Merged TTA predictions of every row, in row order (probabilities or values)."""
    model.eval()
    indices, outputs = [], []
    for batch in tqdm(loader, desc="predict", leave=False, disable=None if progress else True):
        merged = merge(task.type, batched_views(model, batch["input"], views), how)
        index, merged = accelerator.gather_for_metrics((batch["index"], merged))
        indices.append(index.cpu())
        outputs.append(merged.cpu())
    order = np.argsort(torch.cat(indices).numpy(), kind="stable")
    return torch.cat(outputs).numpy()[order]


def predict_files(
    cfg: Config,
    task: Task,
    modality,
    accelerator,
    paths: list[Path],
    loader,
    views: list[str],
    progress: bool = False,
    on_file: Callable[[Path, float, float], None] | None = None,
) -> np.ndarray:
    """The mean of the merged TTA predictions of ``loader``'s rows by each weight file in
    ``paths`` (one, or the snapshots of a snapshot ensemble), as a fold's OOF was made.

    ``on_file(path, load_seconds, predict_seconds)`` runs after each file (the bundle's timing).
    """
    outputs = []
    for path in paths:
        started = time.perf_counter()
        model = accelerator.prepare(load_weights(modality.build_model(cfg, task), path))
        loaded = time.perf_counter()
        outputs.append(
            predict(model, loader, accelerator, task, views, cfg.infer.tta_merge, progress)
        )
        if on_file is not None:
            on_file(path, loaded - started, time.perf_counter() - loaded)
        accelerator.free_memory(model)
    return mean_prediction(outputs)


def predict_fold(cfg, task, modality, accelerator, fold, loader, views, progress=False):
    """A fold's predictions of ``loader``'s rows, from the weights that scored its OOF rows."""
    paths = prediction_weights(cfg, fold)
    return predict_files(cfg, task, modality, accelerator, paths, loader, views, progress)


def run(cfg: Config) -> pd.DataFrame:
    """Predict the test set with every trained fold; returns the averaged prediction table."""
    # An unknown view or a precision the device cannot run stops here, before any work.
    check_precision(cfg)
    modality = get_modality(cfg.modality)
    views = modality.expand_views(cfg.infer.tta)
    train = read_train(cfg)
    folds_table = load_folds(
        cfg.competition.folds_dir,
        train,
        id_column=cfg.competition.id_column,
        target_columns=cfg.competition.target_columns,
    )
    task = load_task(cfg, train)
    test = read_test(cfg)
    modality.check_inputs(cfg, test, "test", str(test_path(cfg)))  # every row, before any work
    dataset = modality.build_dataset(
        cfg, test, None, split="test", train=False, source=str(test_path(cfg)), views=views
    )
    folds = trained_folds(cfg)
    accelerator = make_accelerator(cfg)
    loader = accelerator.prepare(make_loader(dataset, cfg.infer.batch_size, shuffle=False, cfg=cfg))
    per_fold = []
    for fold in folds:
        probs = predict_fold(
            cfg, task, modality, accelerator, fold, loader, views, cfg.train.progress
        )
        per_fold.append(probs)
        if accelerator.is_main_process:
            write_parquet(fold_dir(cfg, fold) / "test.parquet", _table(cfg, task, test, probs))
    table = _table(cfg, task, test, np.mean(per_fold, axis=0))
    if accelerator.is_main_process:
        write_parquet(experiment_dir(cfg) / "test.parquet", table)
        # The settings behind test.parquet: `medalist package` ships them with the weights.
        write_json(experiment_dir(cfg) / "infer.json", inference_settings(cfg))
        log.info(
            "test predictions of %d fold(s), %d view(s) written to %s",
            len(folds),
            len(views),
            experiment_dir(cfg),
        )
    if cfg.infer.tta_oof:
        tta_oof(cfg, task, modality, accelerator, train, folds_table, folds, views)
    return table


INFERENCE_KEYS = ("tta", "tta_merge")  # the infer settings that change the predicted values


def inference_settings(cfg: Config) -> dict:
    """The ``infer`` settings that shape the predictions (views and their merge)."""
    return {key: getattr(cfg.infer, key) for key in INFERENCE_KEYS}


def tta_oof(cfg, task, modality, accelerator, train, folds_table, folds, views) -> dict:
    """The OOF predictions again, with the test-time views: what TTA really brings to CV.

    Writes ``oof_tta.parquet`` and ``tta.json`` (CV without and with TTA).
    """
    id_column = cfg.competition.id_column
    targets = task.encode_targets(train)
    fold_of_row = folds_table["fold"].to_numpy()
    parts, rows_all = [], []
    for fold in [f for f in folds if f != FULL_FIT]:
        rows = np.flatnonzero(fold_of_row == fold)
        subset = train.iloc[rows].reset_index(drop=True)
        dataset = modality.build_dataset(
            cfg, subset, None, split="train", train=False, source=str(train_path(cfg)), views=views
        )
        loader = accelerator.prepare(
            make_loader(dataset, cfg.infer.batch_size, shuffle=False, cfg=cfg)
        )
        probs = predict_fold(cfg, task, modality, accelerator, fold, loader, views)
        part = pd.DataFrame(probs, columns=task.pred_columns)
        part.insert(0, "fold", fold)
        part.insert(0, id_column, subset[id_column].to_numpy())
        parts.append(part)
        rows_all.append(rows)
    if not parts:
        return {}
    oof = pd.concat(parts, ignore_index=True)
    rows = np.concatenate(rows_all)
    order = np.argsort(rows, kind="stable")
    oof, rows = oof.iloc[order].reset_index(drop=True), rows[order]
    plain = pd.read_parquet(experiment_dir(cfg) / "oof.parquet")
    plain = plain.set_index(plain[id_column].astype(str)).loc[oof[id_column].astype(str)]
    report = {
        "views": views,
        "merge": cfg.infer.tta_merge,
        "cv": task.score(targets[rows], plain[task.pred_columns].to_numpy()),
        "cv_tta": task.score(targets[rows], oof[task.pred_columns].to_numpy()),
    }
    if accelerator.is_main_process:
        write_parquet(experiment_dir(cfg) / "oof_tta.parquet", oof)
        write_json(experiment_dir(cfg) / "tta.json", report)
        log.info("CV without TTA %s, with TTA %s", report["cv"], report["cv_tta"])
    return report


def _table(cfg: Config, task: Task, test: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame(values, columns=task.pred_columns)
    table.insert(0, cfg.competition.id_column, test[cfg.competition.id_column].to_numpy())
    return table


def read_predictions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"prediction table not found: {path}; run infer first")
    return pd.read_parquet(path)
