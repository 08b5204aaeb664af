"""The ``train`` stage: every configured fold (or a full fit), then OOF, metrics and the ledger.

Reads ``data/train.csv``, ``folds/`` and the config. Writes under ``outputs/<experiment>/``:
``config.yaml`` (resolved), ``task.json``, ``fold{k}/model.safetensors`` (+ the evaluated
weights ``ema.safetensors`` or ``swa.safetensors``, or ``snapshot{c}.safetensors``),
``fold{k}/oof.parquet``, ``fold{k}/scores.json`` (its scores, and the weight files its OOF rows
came from: :func:`prediction_weights`), and once every fold is done ``oof.parquet``,
``metrics.json`` and ``log.csv``, plus a row in ``outputs/ledger.csv``. A fold whose files are
complete for the same training config is not trained again, so re-running after an interruption
continues.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medalist.config import Config
from medalist.data import read_test, read_train
from medalist.errors import ConfigError, DataError
from medalist.folds import load_folds
from medalist.honest.seeds import average_oof, seed_config
from medalist.honest.test_like import test_like_scores
from medalist.io import write_json, write_parquet, write_text
from medalist.layout import (
    FULL_FIT,
    MODEL_WEIGHTS,
    experiment_dir,
    fold_dir,
    has_prediction_weights,
    test_path,
    train_path,
    training_hash,
    weights_file,
)
from medalist.modalities import get_modality
from medalist.prediction.pseudo import as_hard, folds_hash, labels_mode, load_for_fold
from medalist.reporting.ledger import append_ledger
from medalist.tasks import Task, build_task
from medalist.training.checkpoint import clear_checkpoints
from medalist.training.distill import check_learner, check_student, check_task, mix
from medalist.training.distill import load_for_fold as distill_targets
from medalist.training.fold_setup import check_compile
from medalist.training.loop import fit_fold
from medalist.training.runtime import (
    check_precision,
    make_accelerator,
    make_loader,
    predict_logits,
    process_state,
    seed_everything,
)
from medalist.training.tracking import RunTracker, check_trackers
from medalist.training.weights import load_state_into, load_weights, save_weights
from medalist.tricks.losses import soft_targets
from medalist.tricks.registry import build_tricks
from medalist.tricks.schedule import snapshot_names

log = logging.getLogger(__name__)


def fold_done(cfg: Config, fold: int) -> bool:
    """Whether the fold's files are complete for this training config."""
    folder = fold_dir(cfg, fold)
    if not has_prediction_weights(cfg, fold):
        return False
    record = json.loads((folder / "scores.json").read_text())
    # A network's fold also keeps its trained weights when it predicts with others (EMA, SWA).
    if "learner" not in record and not (folder / MODEL_WEIGHTS).is_file():
        return False
    return record.get("training_hash") == training_hash(cfg)


def _selected_folds(cfg: Config, folds: pd.DataFrame) -> list[int]:
    available = sorted(int(f) for f in folds["fold"].unique())
    wanted = cfg.train.folds if cfg.train.folds is not None else available
    unknown = [f for f in wanted if f != FULL_FIT and f not in available]
    if unknown:
        raise ConfigError(f"train.folds: {unknown} not in the fold file (folds {available})")
    return list(wanted)


def save_task(cfg: Config, task: Task) -> None:
    info = {
        "type": task.type,
        "classes": task.classes,
        "target_columns": task.target_columns,
        "pred_columns": task.pred_columns,
        "metrics": [m.name for m in task.metrics],
        "folds_sha256": folds_hash(cfg),
    }
    write_json(experiment_dir(cfg) / "task.json", info)


def run(cfg: Config, *, targets: np.ndarray | None = None, ledger: bool = True) -> dict:
    """Train the configured folds; returns the metrics dict also written to metrics.json.

    Args:
        cfg: the resolved config.
        targets: the encoded labels to train on and score against instead of train.csv's, one
            per train row (the leak alarm's shuffled labels); None: train.csv's.
        ledger: add the run to ``outputs/ledger.csv``.
    """
    if cfg.train.seeds:
        return _run_seeds(cfg, ledger=ledger)
    check_student(cfg)  # what distillation does not do is refused before any work
    started = time.perf_counter()
    check_precision(cfg)
    check_trackers(cfg)
    modality = get_modality(cfg.modality)
    source = str(train_path(cfg))
    train = read_train(cfg)
    task = build_task(cfg, train)
    check_task(cfg, task)  # a task that cannot learn from soft targets, before any work
    encoded = task.encode_targets(train, source=source)
    if targets is not None and len(targets) != len(encoded):
        raise DataError(f"{source}: {len(encoded)} rows, but {len(targets)} labels were given")
    targets = encoded if targets is None else targets
    folds = load_folds(
        cfg.competition.folds_dir,
        train,
        id_column=cfg.competition.id_column,
        target_columns=cfg.competition.target_columns,
    )
    fold_of_row = folds["fold"].to_numpy()
    selected = _selected_folds(cfg, folds)
    modality.check_inputs(cfg, train, "train", source)  # every row checked before any training
    learner = modality.fold_learner(cfg, task)
    check_learner(cfg, learner)  # a student of class labels only, before any fold is fitted
    out = experiment_dir(cfg)
    accelerator = make_accelerator(cfg, log_with=cfg.tracking.trackers)
    if cfg.train.compile:
        check_compile(accelerator.device)  # before writing anything or training a fold
    log.info(
        "accelerate: %s with %d process(es) on %s, precision %s",
        accelerator.distributed_type.value,
        accelerator.num_processes,
        accelerator.device,
        cfg.train.mixed_precision,
    )
    if accelerator.is_main_process:  # only the main process writes files
        write_text(out / "config.yaml", cfg.to_yaml())
        save_task(cfg, task)
    tracker = RunTracker(cfg, accelerator)
    tracker.start()
    metrics: dict = {}
    try:
        for fold in selected:
            if fold_done(cfg, fold):
                log.info("fold %s: complete for this config, not retrained", fold)
                continue
            train_rows = (
                np.flatnonzero(fold_of_row != fold) if fold != FULL_FIT else np.arange(len(train))
            )
            valid_rows = np.flatnonzero(fold_of_row == fold) if fold != FULL_FIT else None
            if learner is not None:  # fitted by its library, on the main process
                if accelerator.is_main_process:
                    _fit_learner_fold(
                        cfg, task, modality, learner, train, targets, train_rows, valid_rows, fold
                    )
            else:
                _train_fold(
                    cfg,
                    task,
                    modality,
                    train,
                    targets,
                    train_rows,
                    valid_rows,
                    fold,
                    accelerator,
                    tracker.epoch,
                )
            accelerator.wait_for_everyone()  # the fold's files are written before anyone reads
            if learner is None:  # a network's memory back (a garbage collection: 0.5 s)
                accelerator.free_memory()
        if not accelerator.is_main_process:
            return {}
        metrics = summarize(cfg, task, train, targets, folds, selected)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        write_json(out / "metrics.json", metrics)
        if ledger:
            append_ledger(cfg, metrics, device=str(accelerator.device))
        return metrics
    finally:
        tracker.finish(metrics)  # the CV when the run got that far; the trackers closed


def _run_seeds(cfg: Config, ledger: bool) -> dict:
    """``train.seeds``: the experiment once per seed (``<experiment>@s<seed>``, each with its
    own files and ledger row), then the seed-averaged model in ``outputs/<experiment>/`` (see
    :mod:`medalist.honest.seeds`), written by the main process while the others wait."""
    per_seed = {seed: run(seed_config(cfg, seed), ledger=ledger) for seed in cfg.train.seeds}
    state = process_state(cfg)
    metrics: dict = {}
    if state.is_main_process:
        metrics = _average_seeds(cfg, per_seed, ledger)
    state.wait_for_everyone()
    return metrics


def _average_seeds(cfg: Config, per_seed: dict, ledger: bool) -> dict:
    train = read_train(cfg)
    task = build_task(cfg, train)
    targets = task.encode_targets(train, source=str(train_path(cfg)))
    c = cfg.competition
    folds = load_folds(c.folds_dir, train, id_column=c.id_column, target_columns=c.target_columns)
    metrics = average_oof(cfg, task, targets, folds, per_seed)
    main = task.main_metric.name
    if "cv" in metrics:
        log.info(
            "seeds %s: %s %.5g +- %.3g across seeds; the seed-averaged model %.5g",
            cfg.train.seeds,
            main,
            metrics["seed_mean"][main],
            metrics["seed_std"][main],
            metrics["cv"][main],
        )
    if ledger:
        append_ledger(cfg, metrics, device=f"mean of {len(cfg.train.seeds)} seeds")
    return metrics


def _train_targets(
    cfg: Config,
    task: Task,
    targets: np.ndarray,
    fold: int | None = None,
    ids: pd.Series | None = None,
) -> np.ndarray:
    """The labelled training rows' targets as the loss takes them.

    Hard labels are integers (multilabel 0/1 included), which the loss or mixup smooths once
    (:func:`medalist.tricks.losses.soft_targets`). In a pseudo round they share batches with the
    pseudo labels' probabilities, so they become probabilities here, smoothed here, once.

    With ``distill.teacher``, the rows ``ids`` of fold ``fold`` (a full fit: every row) train on
    ``alpha`` times the teacher's fold-``fold`` soft targets plus ``1 - alpha`` times their labels
    (smoothed here, once, for classification; a task's own masks: pixel by pixel, its
    ``distilled_masks``): see :mod:`medalist.training.distill`. In a pseudo round only these
    labelled rows are mixed: the pseudo-labelled test rows keep their labels and weights
    (:func:`_pseudo_set`), themselves soft targets of the fold's pseudo teachers.
    """
    if cfg.distill.teacher is not None and (fold is None or ids is None):
        raise ValueError("distill.teacher: the fold and the training rows' ids are needed")
    if task.own_predictions is not None:  # masks: the loss takes them as they are, or mixed
        if cfg.distill.teacher is None:
            return targets
        return task.own_predictions.distilled_masks(cfg, fold, ids, targets)
    if task.type == "multilabel":
        targets = targets.astype(np.int64)  # hard: told apart from soft labels by their dtype
    if cfg.distill.teacher is not None:
        soft = distill_targets(cfg, fold, ids, task.pred_columns)
        labels = targets if task.type == "regression" else _smoothed(cfg, task, targets)
        return mix(task.type, cfg.distill.alpha, soft, np.asarray(labels, dtype=np.float32))
    return targets if cfg.train.pseudo_round is None else _smoothed(cfg, task, targets)


def _smoothed(cfg: Config, task: Task, hard: np.ndarray) -> np.ndarray:
    """Hard labels as float probabilities with ``tricks.loss.label_smoothing`` applied."""
    soft = soft_targets(task, torch.from_numpy(hard), cfg.tricks.loss.label_smoothing)
    return soft.numpy().astype(np.float32)


def _pseudo_set(cfg, task, modality, fold):
    """The test rows pseudo-labelled for this fold (training only, never validation)."""
    table = load_for_fold(cfg, fold, task.pred_columns)
    test = read_test(cfg)
    id_column = cfg.competition.id_column
    position = pd.Series(np.arange(len(test)), index=test[id_column].astype(str).to_numpy())
    ids = table[id_column].astype(str)
    unknown = ids[~ids.isin(position.index)]
    if len(unknown):
        raise DataError(
            f"pseudo labels: {len(unknown)} id(s) are not test ids, e.g. {unknown.head(3).tolist()}"
        )
    rows = position.loc[ids.to_numpy()].to_numpy()
    if task.own_predictions is not None:  # masks: the round's mask file, checked as the table
        labels = task.own_predictions.pseudo_masks(cfg, fold, ids.tolist())
    else:
        labels = table[task.pred_columns].to_numpy(dtype=np.float32)
        if task.type == "binary":
            labels = labels[:, 0]
        if labels_mode(cfg) == "hard":  # hard labels, smoothed once as the labelled rows are
            labels = _smoothed(cfg, task, as_hard(task.type, labels))
    log.info("fold %s: %d pseudo-labelled test rows added to training", fold, len(rows))
    return modality.build_dataset(
        cfg,
        _subset(test, rows),
        labels,
        split="test",
        train=True,
        source=str(test_path(cfg)),
        weights=table["pseudo_weight"].to_numpy(dtype=np.float32),
    )


def _subset(frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    return frame.iloc[rows].reset_index(drop=True)


def _train_fold(
    cfg, task, modality, train, targets, train_rows, valid_rows, fold, accelerator, on_epoch=None
):
    source = str(train_path(cfg))
    config_hash = training_hash(cfg)  # hashes the starting weights' files: once per fold
    seed_everything(cfg.train.seed)
    train_set = modality.build_dataset(
        cfg,
        _subset(train, train_rows),
        _train_targets(
            cfg, task, targets[train_rows], fold, train[cfg.competition.id_column].iloc[train_rows]
        ),
        split="train",
        train=True,
        source=source,
    )
    if cfg.train.pseudo_round is not None:
        train_set = modality.combine([train_set, _pseudo_set(cfg, task, modality, fold)])
    valid_set = valid_targets = None
    if valid_rows is not None:
        valid_targets = targets[valid_rows]
        valid_set = modality.build_dataset(
            cfg,
            _subset(train, valid_rows),
            valid_targets,
            split="train",
            train=False,
            source=source,
        )
    model = modality.build_model(cfg, task)
    result = fit_fold(
        cfg,
        task,
        model,
        train_set,
        valid_set,
        valid_targets,
        fold=fold,
        tricks=build_tricks(cfg, task, targets[train_rows]),
        folder=fold_dir(cfg, fold),
        config_hash=config_hash,
        accelerator=accelerator,
        on_epoch=on_epoch,
    )
    folder = fold_dir(cfg, fold)
    snapshots = snapshot_names(cfg)
    if snapshots:
        accelerator.wait_for_everyone()  # the main process saved them; every process reads them
    own = task.own_predictions  # masks: predicted from the saved weights, below
    probs = scores = None
    if valid_rows is None or own is not None:
        pass
    elif snapshots:
        paths = [folder / name for name in snapshots]
        probs = _snapshot_oof(cfg, task, model, valid_set, paths, accelerator)
        log.info("fold %s: OOF from the mean of %d snapshots", fold, len(paths))
        scores = task.score(valid_targets, probs)  # the fold's scores are its OOF's
    else:
        probs = task.activate(torch.from_numpy(result.valid_logits)).numpy()
    if not accelerator.is_main_process:
        return
    # The files the OOF rows came from are the ones the fold predicts the test set with.
    predicting = snapshots or [weights_file(result.eval_name)]
    _save_fold_weights(model, folder, fold, result, predicting)
    if own is not None and valid_rows is not None:
        ids = train[cfg.competition.id_column].iloc[valid_rows]
        paths = [folder / name for name in predicting]
        scores = own.fold_oof(
            cfg, modality, accelerator, fold, ids, valid_set, valid_targets, paths
        )
    if probs is not None:
        _write_oof(cfg, task, train, valid_rows, fold, probs)
    write_parquet(folder / "log.parquet", pd.DataFrame(result.history))
    write_json(
        folder / "scores.json",
        {
            "fold": fold,
            "best_epoch": result.best_epoch,
            "scores": result.scores if scores is None else scores,
            "prediction_weights": predicting,
            "training_hash": config_hash,
        },
    )
    clear_checkpoints(folder)  # the fold is complete; its resumable state is not needed


def _write_oof(cfg, task, train, valid_rows, fold, probs) -> None:
    """The fold's predictions of its validation rows: ``fold{k}/oof.parquet``."""
    oof = pd.DataFrame(probs, columns=task.pred_columns)
    oof.insert(0, "fold", fold)
    ids = train[cfg.competition.id_column].iloc[valid_rows].to_numpy()
    oof.insert(0, cfg.competition.id_column, ids)
    write_parquet(fold_dir(cfg, fold) / "oof.parquet", oof)


def _fit_learner_fold(
    cfg, task, modality, learner, train, targets, train_rows, valid_rows, fold
) -> None:
    """A fold of a model its library fits (:meth:`Modality.fold_learner`): the same files as a
    network's fold (OOF, log, scores.json naming the files it predicts with), plus the
    features' importance (``importance.parquet``) where the learner measures it. The rows
    reach it as the modality's datasets hold them. With ``distill.teacher`` its training rows
    learn from the mix of :func:`_train_targets` (``distilled``); their labels still serve what
    needs labels (a pipeline's target encoding, class weights)."""
    folder = fold_dir(cfg, fold)
    config_hash = training_hash(cfg)
    source = str(train_path(cfg))

    def rows(selected):
        subset = _subset(train, selected)
        return modality.build_dataset(
            cfg, subset, targets[selected], split="train", train=False, source=source
        ).frame

    valid = valid_targets = None
    if valid_rows is not None:
        valid, valid_targets = rows(valid_rows), targets[valid_rows]
    distilled = None  # the training rows' mixed targets; the validation rows keep their labels
    if cfg.distill.teacher is not None:
        ids = train[cfg.competition.id_column].iloc[train_rows]
        distilled = _train_targets(cfg, task, targets[train_rows], fold, ids)
    fitted = learner.fit(
        rows(train_rows),
        targets[train_rows],
        valid,
        valid_targets,
        folder,
        source,
        fold=fold,
        distilled=distilled,
    )
    scores = {}
    if valid is not None:
        scores = task.score(valid_targets, fitted.valid)
        _write_oof(cfg, task, train, valid_rows, fold, fitted.valid)
    log.info("fold %s: %s kept %s round(s), %s", fold, learner.name, fitted.best_rounds, scores)
    history = fitted.history
    if "fold" not in history:  # the loop's rows name their fold already
        history.insert(0, "fold", fold)
    write_parquet(folder / "log.parquet", history)
    if fitted.importance is not None:  # a GBDT's gain per feature
        write_parquet(folder / "importance.parquet", fitted.importance)
    write_json(
        folder / "scores.json",
        {
            "fold": fold,
            "learner": learner.name,
            "best_rounds": fitted.best_rounds,
            "scores": scores,
            "prediction_weights": fitted.files,
            "training_hash": config_hash,
        },
    )


def _save_fold_weights(model, folder: Path, fold: int, result, predicting: list[str]) -> None:
    """The kept epoch's weights, and the evaluated ones (EMA, SWA) when a hook had them.

    Each file's metadata says what it holds (``weights``) and whether the fold's OOF rows, and
    so its test predictions, come from it (``oof``).
    """
    states = {"model": result.state_dict}
    if result.eval_state_dict is not None:
        states[result.eval_name] = result.eval_state_dict
    for name, state in states.items():
        load_state_into(model, state, f"{folder}: the kept epoch's {name} weights")
        meta = {
            "fold": fold,
            "epoch": result.best_epoch,
            "weights": name,
            "oof": weights_file(name) in predicting,
        }
        save_weights(model, folder / weights_file(name), meta)


def _snapshot_oof(cfg, task, model, valid_set, paths: list[Path], accelerator) -> np.ndarray:
    """The mean of the snapshots' predictions of the validation rows, as ``infer`` averages
    them for the test set. Every process takes part (the predictions are gathered)."""
    size = cfg.train.eval_batch_size or 2 * cfg.train.batch_size  # as the loop evaluates
    loader = accelerator.prepare(make_loader(valid_set, size, shuffle=False, cfg=cfg))
    outputs = []
    for path in paths:
        _, logits = predict_logits(load_weights(model, path), loader, accelerator)
        outputs.append(task.activate(torch.from_numpy(logits)).numpy())
    return mean_prediction(outputs)


def mean_prediction(outputs: list[np.ndarray]) -> np.ndarray:
    """A fold's prediction from those of its weight files (one, or a snapshot ensemble's).

    ``train`` (OOF), ``infer`` and the offline bundle all average through here, so the same
    predictions give the same bits everywhere.
    """
    return np.mean(outputs, axis=0)


def summarize(cfg, task, train, targets, folds, selected) -> dict:
    """Join the folds' OOF predictions and score them; per-fold scores with mean and std, and
    the CV on the test-like rows when the folds flag them (``folds.test_like``)."""
    out = experiment_dir(cfg)
    id_column = cfg.competition.id_column
    own = task.own_predictions
    per_fold, parts, logs = {}, [], []
    for fold in selected:
        folder = fold_dir(cfg, fold)
        per_fold[str(fold)] = json.loads((folder / "scores.json").read_text())["scores"]
        logs.append(pd.read_parquet(folder / "log.parquet"))
        if fold != FULL_FIT and own is None:
            parts.append(pd.read_parquet(folder / "oof.parquet"))
    write_text(out / "log.csv", pd.concat(logs).to_csv(index=False))
    metrics: dict = {
        "experiment": cfg.train.experiment,
        "main_metric": task.main_metric.name,
        "folds": per_fold,
    }
    if own is not None:  # masks: joined, scored and post-processed by the task
        metrics.update(own.join_oof(cfg, train, targets, folds, selected))
    if not parts or own is not None:
        return _fold_spread(metrics, per_fold)
    oof = pd.concat(parts)
    position = pd.Series(np.arange(len(train)), index=train[id_column].astype(str))
    rows = position.loc[oof[id_column].astype(str)].to_numpy()
    if len(set(rows)) != len(rows):
        raise DataError(f"{out}: an id appears in two folds' OOF predictions")
    oof = oof.iloc[np.argsort(rows, kind="stable")].reset_index(drop=True)
    rows = np.sort(rows)
    write_parquet(out / "oof.parquet", oof)
    predictions = oof[task.pred_columns].to_numpy()
    metrics["cv"] = task.score(targets[rows], predictions)
    metrics.update(test_like_scores(task, folds, targets, rows, predictions))
    _fold_spread(metrics, per_fold)
    metrics["complete"] = len(rows) == len(train)
    return metrics


def _fold_spread(metrics: dict, per_fold: dict) -> dict:
    """``metrics`` with the mean and std over the scored folds of each CV metric (none
    without a CV: a full fit alone)."""
    if "cv" not in metrics:
        return metrics
    scored = [s for f, s in per_fold.items() if f != str(FULL_FIT)]
    metrics["fold_mean"] = {m: float(np.mean([s[m] for s in scored])) for m in metrics["cv"]}
    metrics["fold_std"] = {m: float(np.std([s[m] for s in scored])) for m in metrics["cv"]}
    return metrics
