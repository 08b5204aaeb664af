"""The ``distill`` stage: a teacher's per-fold soft targets for a student, without leaking folds.

For each fold k the student trains (``train.folds``, or every fold), the teacher's fold-k model
(trained on exactly fold k's training rows) predicts those training rows, and the predictions at
temperature ``distill.temperature`` are written to ``outputs/distill/<teacher>/fold<k>.parquet``
(the id column and the task's prediction columns). A full-fit student (``train.folds: [-1]``)
gets the teacher's full fit's predictions of every training row (``full.parquet``): a full fit
has no validation rows to leak into. ``teacher.json`` records the teacher, the folds manifest
hash it was checked against, the temperature, the weight files of each fold and each file's
sha256. ``train`` with ``distill.teacher`` mixes them with the labels
(:mod:`medalist.training.distill`).

The teacher's OOF predictions are never used: a row of fold j was predicted by the teacher's
fold-j model, which trained on fold k's rows, so fold k's labels would reach fold k's student and
inflate its CV. The teacher is the experiment as trained (``outputs/<teacher>/config.yaml``: its
modality, model and weights), predicting as ``infer`` does (``infer.tta`` of that config).

A task with its own predictions (masks) predicts and writes each fold's file itself
(``fold<k>.masks.safetensors``, its ``distill_fold``), recorded in ``teacher.json`` as above.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from medalist.config import Config, resolve_config
from medalist.data import read_train
from medalist.errors import ConfigError, FoldsMismatchError
from medalist.folds import load_folds
from medalist.io import sha256_file, write_json, write_parquet
from medalist.layout import (
    FULL_FIT,
    distill_dir,
    distill_record,
    fold_name,
    has_prediction_weights,
    outputs_dir,
    prediction_weights,
    train_path,
)
from medalist.modalities import get_modality
from medalist.prediction.infer import load_task, predict_fold
from medalist.prediction.pseudo import folds_hash
from medalist.tasks import build_task
from medalist.training.distill import check_learner, check_student, check_task, soften
from medalist.training.runtime import make_accelerator, make_loader, process_state

log = logging.getLogger(__name__)


def teacher_config(cfg: Config) -> Config:
    """The teacher experiment's own resolved config, reading this project's files.

    Raises:
        ConfigError: the teacher has no saved config, or averages seeds (no weights of its own).
    """
    teacher = cfg.distill.teacher
    saved = outputs_dir(cfg) / teacher / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"distill.teacher: {saved} not found; train '{teacher}' first")
    tcfg = resolve_config(saved)
    if tcfg.train.seeds:
        raise ConfigError(
            f"distill.teacher: '{teacher}' averages seeds {tcfg.train.seeds}, which have no "
            f"weights of their own together; name one seed's experiment ('{teacher}@s<seed>')"
        )
    paths = {key: getattr(cfg.competition, key) for key in ("data_dir", "folds_dir", "outputs_dir")}
    return tcfg.model_copy(update={"competition": tcfg.competition.model_copy(update=paths)})


def student_folds(cfg: Config, fold_of_row: np.ndarray) -> list[int]:
    """The folds the student trains: ``train.folds`` (``[-1]``: its full fit), or every fold of
    the fold file."""
    available = sorted(int(f) for f in np.unique(fold_of_row))
    wanted = list(dict.fromkeys(cfg.train.folds)) if cfg.train.folds is not None else available
    unknown = [f for f in wanted if f != FULL_FIT and f not in available]
    if unknown:
        raise ConfigError(f"train.folds: {unknown} not in the fold file (folds {available})")
    return wanted


def _check_teacher(cfg: Config, tcfg: Config, folds: list[int], pred_columns: list[str]) -> None:
    teacher = cfg.distill.teacher
    task_file = outputs_dir(cfg) / teacher / "task.json"
    if not task_file.is_file():
        raise ConfigError(f"distill.teacher: {task_file} not found; train '{teacher}' first")
    info = json.loads(task_file.read_text())
    if info.get("folds_sha256") != folds_hash(cfg):
        raise FoldsMismatchError(
            f"distill.teacher: '{teacher}' was trained on other folds than "
            f"{cfg.competition.folds_dir}/folds.json; its fold-k models saw other rows than the "
            "student's fold k, whose labels would leak; train the teacher on these folds"
        )
    if info["pred_columns"] != pred_columns:
        raise ConfigError(
            f"distill.teacher: '{teacher}' predicts {info['pred_columns']}, the student's task "
            f"{pred_columns}; a teacher of the same task and targets is needed"
        )
    if FULL_FIT in folds and not has_prediction_weights(tcfg, FULL_FIT):
        raise ConfigError(
            f"distill.teacher: '{teacher}' has no full fit (outputs/{teacher}/full/), whose "
            "predictions of every row a full-fit student (train.folds: [-1]) learns from; train "
            f"'{teacher}' with train.folds=[-1] first"
        )
    missing = [f for f in folds if not has_prediction_weights(tcfg, f)]
    if missing:
        raise ConfigError(
            f"distill.teacher: '{teacher}' has no trained weights for fold(s) {missing}, which "
            f"the student trains (train.folds); train those folds of '{teacher}' first"
        )


def _table_fold(cfg, tcfg, task, modality, accelerator, fold, subset, views) -> dict:
    """The teacher's fold-``fold`` soft targets of the rows ``subset`` as ``fold<k>.parquet``
    (written by the main process); returns the file's record."""
    dataset = modality.build_dataset(
        tcfg,
        subset,
        None,
        split="train",
        train=False,
        source=str(train_path(tcfg)),
        views=views,
    )
    loader = make_loader(dataset, tcfg.infer.batch_size, shuffle=False, cfg=tcfg)
    loader = accelerator.prepare(loader)
    probs = predict_fold(tcfg, task, modality, accelerator, fold, loader, views)
    table = pd.DataFrame(
        soften(task.type, probs, cfg.distill.temperature), columns=task.pred_columns
    )
    id_column = cfg.competition.id_column
    table.insert(0, id_column, subset[id_column].to_numpy())
    entry = {"sha256": None, "rows": len(table)}
    if accelerator.is_main_process:
        path = write_parquet(distill_dir(cfg) / f"{fold_name(fold)}.parquet", table)
        entry["sha256"] = sha256_file(path)
    return entry


def run(cfg: Config) -> dict:
    """Write the teacher's soft targets of each student fold's training rows; returns the record."""
    if cfg.distill.teacher is None:
        raise ConfigError("distill.teacher: not set; name the teacher experiment to distil")
    check_student(cfg)
    train = read_train(cfg)
    fold_of_row = load_folds(
        cfg.competition.folds_dir,
        train,
        id_column=cfg.competition.id_column,
        target_columns=cfg.competition.target_columns,
    )["fold"].to_numpy()
    folds = student_folds(cfg, fold_of_row)
    student_task = build_task(cfg, train)
    check_learner(cfg, get_modality(cfg.modality).fold_learner(cfg, student_task))
    check_task(cfg, student_task)
    tcfg = teacher_config(cfg)
    _check_teacher(cfg, tcfg, folds, student_task.pred_columns)
    modality = get_modality(tcfg.modality)
    task = load_task(tcfg, train)
    views = modality.expand_views(tcfg.infer.tta)
    modality.check_inputs(tcfg, train, "train", str(train_path(tcfg)))
    accelerator = make_accelerator(tcfg)
    state = process_state(cfg)
    files = {}
    for fold in folds:
        rows = np.flatnonzero(fold_of_row != fold) if fold != FULL_FIT else np.arange(len(train))
        subset = train.iloc[rows].reset_index(drop=True)
        name = fold_name(fold)
        if task.own_predictions is not None:  # masks: the task predicts and writes its own file
            entry = task.own_predictions.distill_fold(
                cfg, tcfg, modality, accelerator, fold, subset, views
            )
        else:
            entry = _table_fold(cfg, tcfg, task, modality, accelerator, fold, subset, views)
        weights = [path.name for path in prediction_weights(tcfg, fold)]
        files[name] = {**entry, "weights": weights}
        log.info(
            "distill: %s's %s model predicted %d training rows at T=%g",
            cfg.distill.teacher,
            name,
            entry["rows"],
            cfg.distill.temperature,
        )
    record = {
        "teacher": cfg.distill.teacher,
        "folds_sha256": folds_hash(cfg),
        "temperature": cfg.distill.temperature,
        "views": views,
        "files": files,
    }
    if state.is_main_process:
        write_json(distill_record(cfg), record)
    state.wait_for_everyone()
    return record
