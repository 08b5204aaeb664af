"""The ``train`` stage: every configured fold (or a full fit), then OOF, metrics and the ledger.

Reads ``data/train.csv``, ``folds/`` and the config. Writes under ``outputs/<experiment>/``:
``config.yaml`` (resolved), ``task.json``, ``fold{k}/model.safetensors``, ``fold{k}/oof.parquet``,
``fold{k}/scores.json``, and once every fold is done ``oof.parquet``, ``metrics.json`` and
``log.csv``, plus a row in ``outputs/ledger.csv``. A fold whose files are complete for the same
training config is not trained again, so re-running after an interruption continues.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medalist import image as image_modality
from medalist import text as text_modality
from medalist.checkpoint import clear_checkpoints
from medalist.config import Config
from medalist.data import experiment_dir, read_test, read_train, test_path, train_path
from medalist.errors import ConfigError, DataError
from medalist.folds import load_folds
from medalist.io import sha256_file, write_json, write_parquet, write_text
from medalist.ledger import append_ledger
from medalist.loop import fit_fold, make_accelerator, seed_everything
from medalist.pseudo import folds_hash, load_for_fold, pseudo_dir
from medalist.tasks import Task, build_task
from medalist.tracking import RunTracker, check_trackers
from medalist.tricks.registry import build_tricks
from medalist.weights import save_weights

log = logging.getLogger(__name__)
MODALITIES = {"image": image_modality, "text": text_modality}
FULL_FIT = -1
EVAL_WEIGHTS = "ema.safetensors"


def prediction_weights(cfg: Config, fold: int) -> Path:
    """The weights predictions come from: the EMA's when EMA is on, else the model's."""
    name = EVAL_WEIGHTS if cfg.tricks.ema.enabled else "model.safetensors"
    return fold_dir(cfg, fold) / name


def backbone_weights(cfg: Config) -> list[Path]:
    """Local starting weights (``model.pretrained_path`` or ``text.backbone``'s safetensors)."""
    if cfg.modality == "text":
        folder = Path(cfg.text.backbone) if cfg.text.backbone else None
        return sorted(folder.glob("*.safetensors")) if folder and folder.is_dir() else []
    path = Path(cfg.model.pretrained_path) if cfg.model.pretrained_path else None
    return [path] if path and path.is_file() else []


def training_hash(cfg: Config) -> str:
    """Hash of what changes a fold's weights (not which folds run, inference or submission).

    The starting weights count by content, so folds trained from a backbone that MLM pretraining
    has since rewritten in place are trained again.
    """
    exclude = {"infer", "submission", "stages", "pseudo", "ensemble", "kaggle", "mlm", "tracking"}
    data = cfg.model_dump(mode="json", exclude=exclude)
    data["train"].pop("folds"), data["train"].pop("progress")
    data["backbone_weights"] = [sha256_file(path) for path in backbone_weights(cfg)]
    if cfg.train.pseudo_round is not None:  # new labels for the same round retrain the folds
        record = pseudo_dir(cfg, cfg.train.pseudo_round) / "teachers.json"
        data["pseudo_labels"] = sha256_file(record) if record.is_file() else None
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def fold_dir(cfg: Config, fold: int) -> Path:
    return experiment_dir(cfg) / ("full" if fold == FULL_FIT else f"fold{fold}")


def fold_done(cfg: Config, fold: int) -> bool:
    scores = fold_dir(cfg, fold) / "scores.json"
    if not scores.is_file() or not (fold_dir(cfg, fold) / "model.safetensors").is_file():
        return False
    return json.loads(scores.read_text()).get("training_hash") == training_hash(cfg)


def check_precision(cfg: Config) -> None:
    if cfg.train.mixed_precision == "fp16" and (cfg.train.cpu or not torch.cuda.is_available()):
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on the CPU")


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


def run(cfg: Config) -> dict:
    """Train the configured folds; returns the metrics dict also written to metrics.json."""
    started = time.perf_counter()
    check_precision(cfg)
    check_trackers(cfg)
    modality = MODALITIES[cfg.modality]
    source = str(train_path(cfg))
    train = read_train(cfg)
    task = build_task(cfg, train)
    targets = task.encode_targets(train, source=source)
    folds = load_folds(
        cfg.competition.folds_dir,
        train,
        id_column=cfg.competition.id_column,
        target_columns=cfg.competition.target_columns,
    )
    fold_of_row = folds["fold"].to_numpy()
    selected = _selected_folds(cfg, folds)
    modality.check_inputs(cfg, train, "train", source)  # every row checked before any training
    out = experiment_dir(cfg)
    accelerator = make_accelerator(cfg, log_with=cfg.tracking.trackers)
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
            accelerator.free_memory()
        if not accelerator.is_main_process:
            return {}
        metrics = summarize(cfg, task, train, targets, fold_of_row, selected)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        write_json(out / "metrics.json", metrics)
        append_ledger(cfg, metrics, device=str(accelerator.device))
        return metrics
    finally:
        tracker.finish(metrics)  # the CV when the run got that far; the trackers closed


def _soft(task: Task, targets: np.ndarray) -> np.ndarray:
    """Labelled targets in the pseudo labels' form (class probabilities), for one batch type."""
    if task.type == "multiclass":
        return np.eye(task.num_outputs, dtype=np.float32)[targets]
    return targets.astype(np.float32)


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
    labels = table[task.pred_columns].to_numpy(dtype=np.float32)
    if task.type == "binary":
        labels = labels[:, 0]
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


class Combined(torch.utils.data.ConcatDataset):
    """Labelled and pseudo-labelled rows; every sample carries a loss weight."""

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        sample.setdefault("weight", torch.tensor(1.0))
        return sample


def _subset(frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    return frame.iloc[rows].reset_index(drop=True)


def _train_fold(
    cfg, task, modality, train, targets, train_rows, valid_rows, fold, accelerator, on_epoch=None
):
    source = str(train_path(cfg))
    seed_everything(cfg.train.seed)
    train_set = modality.build_dataset(
        cfg,
        _subset(train, train_rows),
        _soft(task, targets[train_rows]) if cfg.train.pseudo_round else targets[train_rows],
        split="train",
        train=True,
        source=source,
    )
    if cfg.train.pseudo_round is not None:
        combine = getattr(modality, "combine", Combined)  # a modality may join its own way
        train_set = combine([train_set, _pseudo_set(cfg, task, modality, fold)])
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
        accelerator=accelerator,
        on_epoch=on_epoch,
    )
    if not accelerator.is_main_process:
        return
    folder = fold_dir(cfg, fold)
    meta = {"fold": fold, "epoch": result.best_epoch}
    model.load_state_dict(result.state_dict)
    save_weights(model, folder / "model.safetensors", meta)
    if result.eval_state_dict is not None:  # predictions come from these (EMA) weights
        model.load_state_dict(result.eval_state_dict)
        save_weights(model, folder / EVAL_WEIGHTS, meta)
    if valid_rows is not None:
        probs = task.activate(torch.from_numpy(result.valid_logits)).numpy()
        oof = pd.DataFrame(probs, columns=task.pred_columns)
        oof.insert(0, "fold", fold)
        oof.insert(
            0,
            cfg.competition.id_column,
            train[cfg.competition.id_column].iloc[valid_rows].to_numpy(),
        )
        write_parquet(folder / "oof.parquet", oof)
    write_parquet(folder / "log.parquet", pd.DataFrame(result.history))
    write_json(
        folder / "scores.json",
        {
            "fold": fold,
            "best_epoch": result.best_epoch,
            "scores": result.scores,
            "training_hash": training_hash(cfg),
        },
    )
    clear_checkpoints(folder)  # the fold is complete; its resumable state is not needed


def summarize(cfg, task, train, targets, fold_of_row, selected) -> dict:
    """Join the folds' OOF predictions and score them; per-fold scores with mean and std."""
    out = experiment_dir(cfg)
    id_column = cfg.competition.id_column
    per_fold, parts, logs = {}, [], []
    for fold in selected:
        folder = fold_dir(cfg, fold)
        per_fold[str(fold)] = json.loads((folder / "scores.json").read_text())["scores"]
        logs.append(pd.read_parquet(folder / "log.parquet"))
        if fold != FULL_FIT:
            parts.append(pd.read_parquet(folder / "oof.parquet"))
    write_text(out / "log.csv", pd.concat(logs).to_csv(index=False))
    metrics: dict = {
        "experiment": cfg.train.experiment,
        "main_metric": task.main_metric.name,
        "folds": per_fold,
    }
    if not parts:
        return metrics
    oof = pd.concat(parts)
    position = pd.Series(np.arange(len(train)), index=train[id_column].astype(str))
    rows = position.loc[oof[id_column].astype(str)].to_numpy()
    if len(set(rows)) != len(rows):
        raise DataError(f"{out}: an id appears in two folds' OOF predictions")
    oof = oof.iloc[np.argsort(rows, kind="stable")].reset_index(drop=True)
    rows = np.sort(rows)
    write_parquet(out / "oof.parquet", oof)
    metrics["cv"] = task.score(targets[rows], oof[task.pred_columns].to_numpy())
    scored = [s for f, s in per_fold.items() if f != str(FULL_FIT)]
    metrics["fold_mean"] = {m: float(np.mean([s[m] for s in scored])) for m in metrics["cv"]}
    metrics["fold_std"] = {m: float(np.std([s[m] for s in scored])) for m in metrics["cv"]}
    metrics["complete"] = len(rows) == len(train)
    return metrics
