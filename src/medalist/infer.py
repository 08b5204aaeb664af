"""The ``infer`` stage: test predictions of every trained fold, and their average.

Reads ``outputs/<experiment>/fold*/model.safetensors``, ``task.json`` and ``data/test.csv``.
Writes ``outputs/<experiment>/fold{k}/test.parquet`` and the fold average ``test.parquet``, in the
prediction-table format (id, then one column per output).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medalist.config import Config
from medalist.data import experiment_dir, read_test, read_train, test_path
from medalist.errors import DataError
from medalist.folds import load_folds
from medalist.io import write_parquet
from medalist.loop import make_accelerator, make_loader, predict_logits
from medalist.tasks import Task, build_task
from medalist.train import FULL_FIT, MODALITIES, fold_dir, prediction_weights
from medalist.weights import load_weights

log = logging.getLogger(__name__)


def trained_folds(cfg: Config) -> list[int]:
    """Folds with saved weights: the configured ones, or every fold folder found."""
    out = experiment_dir(cfg)
    if cfg.train.folds is not None:
        folds = list(cfg.train.folds)
    else:
        folds = sorted(int(p.name[4:]) for p in out.glob("fold*") if p.name[4:].isdigit())
        folds += [FULL_FIT] if (out / "full").is_dir() else []
    missing = [f for f in folds if not prediction_weights(cfg, f).is_file()]
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


def run(cfg: Config) -> pd.DataFrame:
    """Predict the test set with every trained fold; returns the averaged prediction table."""
    train = read_train(cfg)
    load_folds(
        cfg.competition.folds_dir,
        train,
        id_column=cfg.competition.id_column,
        target_columns=cfg.competition.target_columns,
    )
    task = load_task(cfg, train)
    test = read_test(cfg)
    modality = MODALITIES[cfg.modality]
    dataset = modality.build_dataset(
        cfg, test, None, split="test", train=False, source=str(test_path(cfg))
    )
    folds = trained_folds(cfg)
    accelerator = make_accelerator(cfg)
    loader = accelerator.prepare(make_loader(dataset, cfg.infer.batch_size, shuffle=False, cfg=cfg))
    per_fold = []
    for fold in folds:
        model = load_weights(modality.build_model(cfg, task), prediction_weights(cfg, fold))
        model = accelerator.prepare(model)
        _, logits = predict_logits(model, loader, accelerator, progress=cfg.train.progress)
        probs = task.activate(torch.from_numpy(logits)).numpy()
        per_fold.append(probs)
        if accelerator.is_main_process:
            write_parquet(fold_dir(cfg, fold) / "test.parquet", _table(cfg, task, test, probs))
        accelerator.free_memory(model)
    table = _table(cfg, task, test, np.mean(per_fold, axis=0))
    if accelerator.is_main_process:
        write_parquet(experiment_dir(cfg) / "test.parquet", table)
        log.info("test predictions of %d fold(s) written to %s", len(folds), experiment_dir(cfg))
    return table


def _table(cfg: Config, task: Task, test: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame(values, columns=task.pred_columns)
    table.insert(0, cfg.competition.id_column, test[cfg.competition.id_column].to_numpy())
    return table


def read_predictions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"prediction table not found: {path}; run infer first")
    return pd.read_parquet(path)
