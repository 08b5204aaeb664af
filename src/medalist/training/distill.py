"""Distilled targets: a teacher's soft targets of a fold's training rows, mixed with the labels.

``medalist distill`` (:mod:`medalist.prediction.distill`) writes, for each fold k the student
trains, the teacher's fold-k model's predictions of fold k's training rows at temperature T
(``outputs/distill/<teacher>/fold<k>.parquet``; a full-fit student: the teacher's full fit's
predictions of every row, ``full.parquet``) and ``teacher.json``. The train stage reads them
here: a file made for other folds, another teacher or temperature, or changed since, is refused.
The teacher's fold-k model was trained on exactly those rows, so fold k's validation labels never
reach its student through the soft targets, unlike the teacher's OOF predictions would.

Every student takes the mix as its training targets: a network of medalist's loop (image, text,
the table MLP, pseudo-labelled test rows beside it keeping their own labels and weights), a GBDT
through its library's cross-entropy on labels in [0, 1] (binary, multilabel) or on the mixed
values (regression), a ridge regression on the mixed values. A learner that only takes class
labels is refused (:func:`check_learner`).

A task with its own predictions (masks) writes and reads its files itself, through the checks
of this module (:func:`read_record`, :func:`soften`): its soft masks are mixed with its true
masks pixel by pixel; what cannot learn from soft masks is refused (:func:`check_task`).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from medalist.config import Config
from medalist.errors import ConfigError, DataError
from medalist.layout import distill_dir, distill_record, fold_name
from medalist.modalities.protocol import FoldLearner
from medalist.prediction.pseudo import folds_hash, recorded_fold_table
from medalist.tasks import Task

EPS = 1e-7  # probabilities are clipped to [EPS, 1 - EPS] before their logits are taken
HINT = "run `medalist distill` with the student's config"  # ends each refusal of its files


def soften(task_type: str, probs: np.ndarray, temperature: float) -> np.ndarray:
    """The task's activation of ``logits / temperature``, from the activated predictions.

    The logits are recovered from the probabilities (sigmoid: ``log(p / (1 - p))``; softmax:
    ``log p``, equal to the logits up to a constant per row, which softmax ignores), so a table of
    probabilities softens exactly as its logits would. Regression values are returned unchanged.
    """
    values = np.asarray(probs, dtype=np.float64)
    if task_type == "regression" or temperature == 1:
        return values.astype(np.float32)
    p = np.clip(values, EPS, 1 - EPS)
    if task_type == "multiclass":
        logits = np.log(p) / temperature
        logits -= logits.max(1, keepdims=True)
        soft = np.exp(logits)
        return (soft / soft.sum(1, keepdims=True)).astype(np.float32)
    logits = np.log(p / (1 - p)) / temperature
    return (1 / (1 + np.exp(-logits))).astype(np.float32)


def check_student(cfg: Config) -> None:
    """Refuse a student that is its own teacher, before any work."""
    teacher = cfg.distill.teacher
    if teacher is not None and teacher == cfg.train.experiment:
        raise ConfigError(
            f"distill.teacher: '{teacher}' is the student's own experiment "
            "(train.experiment); name the student another experiment"
        )


def check_learner(cfg: Config, learner: FoldLearner | None) -> None:
    """Refuse a student whose fold learner fits class labels only, before any fold is fitted.

    A network of medalist's loop (``learner`` None) takes soft targets; a learner says why it
    cannot (:meth:`~medalist.modalities.protocol.FoldLearner.refuses_soft_targets`).

    Raises:
        ConfigError: naming ``distill.teacher`` and the learner's reason.
    """
    if cfg.distill.teacher is None or learner is None:
        return
    reason = learner.refuses_soft_targets()
    if reason:
        raise ConfigError(f"distill.teacher: {reason}")


def read_record(cfg: Config) -> dict:
    """``teacher.json``, checked against the student's config: the teacher, the folds and the
    temperature it was made for (each file's sha256 is checked as the file is read).

    Raises:
        DataError: no record, or one made for another teacher, other folds or temperature.
    """
    check_student(cfg)
    record_file = distill_record(cfg)
    if not record_file.is_file():
        raise DataError(f"distill.teacher: {record_file} not found; {HINT}")
    record = json.loads(record_file.read_text())
    if record["teacher"] != cfg.distill.teacher or record["folds_sha256"] != folds_hash(cfg):
        raise DataError(f"{record_file}: made for another teacher or other folds; {HINT}")
    if record["temperature"] != cfg.distill.temperature:
        raise DataError(
            f"{record_file}: made at distill.temperature {record['temperature']}, the config "
            f"says {cfg.distill.temperature}; {HINT}"
        )
    return record


def check_task(cfg: Config, task: Task) -> None:
    """Refuse, before any work, a student whose task cannot learn from its teacher's soft
    targets: a task with its own predictions (masks) says why (``check_distill``)."""
    if cfg.distill.teacher is not None and task.own_predictions is not None:
        task.own_predictions.check_distill(cfg)


def load_for_fold(cfg: Config, fold: int, ids: pd.Series, columns: list[str]) -> np.ndarray:
    """The teacher's soft targets of fold ``fold``'s training rows ``ids``, in their order.

    Raises:
        DataError: no file for the fold, a file changed since ``medalist distill`` wrote it, made
            for other folds or ids, another temperature, or missing a column.
    """
    record = read_record(cfg)
    path, table = recorded_fold_table(
        distill_dir(cfg),
        record,
        fold_name(fold),
        columns,
        what="soft targets",
        stage="distill",
        fix=HINT,
    )
    id_column = cfg.competition.id_column
    wanted = ids.astype(str).to_numpy()
    have = table[id_column].astype(str)
    if len(have) != len(wanted) or set(have) != set(wanted):
        raise DataError(f"{path}: its ids are not fold {fold}'s training rows; {HINT}")
    position = pd.Series(np.arange(len(table)), index=have.to_numpy())
    return table[columns].to_numpy(dtype=np.float32)[position.loc[wanted].to_numpy()]


def mix(task_type: str, alpha: float, soft: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``alpha * soft + (1 - alpha) * labels``, in the labels' shape (binary: one column).

    ``labels`` are probabilities (smoothed hard labels) for classification, values for
    regression; the result is float, which the loss takes as final (never smoothed again).
    """
    soft = soft.reshape(labels.shape) if soft.size == labels.size else soft
    if soft.shape != labels.shape:
        raise DataError(f"distill: soft targets of shape {soft.shape}, labels {labels.shape}")
    return (alpha * soft + (1 - alpha) * labels).astype(np.float32)
