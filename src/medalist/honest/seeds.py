"""Seeds as a distribution (``train.seeds: [0, 1, 2]``).

One seed's CV is one draw: seeds move a CV by about as much as many "improvements" do, and the
best of several seeds is an optimistic score (selected on the very rows it is measured on). So a
multi-seed run trains the experiment once per seed, on the same folds, each as an experiment of
its own, ``outputs/<experiment>@s<seed>/`` (weights, OOF, test predictions, a ledger row), and
then writes the seed-averaged model in ``outputs/<experiment>/``: its OOF (``oof.parquet``, the
mean of the seeds' OOF) and test predictions (``test.parquet``, after ``infer``), and
``metrics.json`` with every seed's CV, their mean and standard deviation (across seeds, ``ddof=1``:
the spread a new seed would show), and the averaged model's CV and per-fold scores. A task that
writes its own predictions (masks: ``task.own_predictions``) averages those files instead and
chooses its post-processing on the averaged OOF. Downstream stages (submission, ensemble, report,
pseudo teachers) read the averaged model as any other experiment; nothing offers to pick the best
seed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medalist.config import Config
from medalist.errors import DataError
from medalist.honest.test_like import test_like_scores
from medalist.io import write_json, write_parquet, write_text
from medalist.layout import FULL_FIT, experiment_dir, outputs_dir, seed_experiment
from medalist.tasks import Task


def seed_config(cfg: Config, seed: int) -> Config:
    """The experiment as one of its seeds trains and predicts it: ``<experiment>@s<seed>``."""
    one = cfg.model_copy(deep=True)
    one.train.experiment = seed_experiment(cfg.train.experiment, seed)
    one.train.seed = seed
    one.train.seeds = []
    return one


def seed_folders(cfg: Config) -> list:
    """The folders of the experiment's seeds, in ``train.seeds`` order."""
    return [outputs_dir(cfg) / seed_experiment(cfg.train.experiment, s) for s in cfg.train.seeds]


def average_tables(tables: list[pd.DataFrame], id_column: str, columns: list[str], label: str):
    """The mean of prediction tables that hold the same ids (rows aligned on the first's)."""
    first = tables[0]
    ids = first[id_column].astype(str).to_numpy()
    values = []
    for table in tables:
        indexed = table.set_index(table[id_column].astype(str))
        if len(table) != len(first) or not indexed.index.isin(ids).all():
            raise DataError(f"{label}: the seeds' tables hold different ids; train them again")
        values.append(indexed.loc[ids, columns].to_numpy())
    out = first.drop(columns=columns).copy()
    out[columns] = np.mean(values, axis=0)
    return out


def average_oof(cfg: Config, task: Task, targets: np.ndarray, folds: pd.DataFrame, seeds: dict):
    """Write the seed-averaged OOF, config and metrics in ``outputs/<experiment>/``.

    Args:
        targets: the encoded labels in train row order.
        folds: the project's folds in train row order (:func:`medalist.folds.load_folds`).
        seeds: ``{seed: that seed's metrics}`` as its train stage returned them.
    """
    out = experiment_dir(cfg)
    write_text(out / "config.yaml", cfg.to_yaml())
    # The seeds' task record (classes, columns, folds hash): infer and ensembles read it here.
    write_text(out / "task.json", (seed_folders(cfg)[0] / "task.json").read_text("utf-8"))
    base = {
        "experiment": cfg.train.experiment,
        "main_metric": task.main_metric.name,
        "seeds": list(cfg.train.seeds),
        "seed_experiments": [folder.name for folder in seed_folders(cfg)],
    }
    if cfg.train.folds == [FULL_FIT]:  # full fits: no OOF rows, nothing to score
        metrics = {**base, "folds": {}}
        write_json(out / "metrics.json", metrics)
        return metrics
    if task.own_predictions is not None:  # masks: averaged, scored, post-processed by the task
        scored = task.own_predictions.average_seeds_oof(cfg, seed_folders(cfg), targets, folds)
    else:
        scored = _average_oof_tables(cfg, task, targets, folds)
    per_fold = scored["folds"]
    seed_cv = {str(s): m["cv"] for s, m in seeds.items()}
    names = list(scored["cv"])
    metrics = {
        **base,
        "seed_cv": seed_cv,
        "seed_mean": {m: float(np.mean([cv[m] for cv in seed_cv.values()])) for m in names},
        "seed_std": {m: _std([cv[m] for cv in seed_cv.values()]) for m in names},
        **scored,
        "fold_mean": {m: float(np.mean([s[m] for s in per_fold.values()])) for m in names},
        "fold_std": {m: float(np.std([s[m] for s in per_fold.values()])) for m in names},
        "seconds": round(sum(m.get("seconds", 0.0) for m in seeds.values()), 1),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def _average_oof_tables(cfg: Config, task: Task, targets: np.ndarray, folds: pd.DataFrame) -> dict:
    """The seeds' mean OOF table (``oof.parquet``) and its scores: per fold, the CV,
    ``cv_test_like`` and ``complete``."""
    id_column = cfg.competition.id_column
    train_ids = folds[id_column]
    label = f"experiment '{cfg.train.experiment}'"
    tables = [pd.read_parquet(folder / "oof.parquet") for folder in seed_folders(cfg)]
    oof = average_tables(tables, id_column, task.pred_columns, label)
    position = pd.Series(np.arange(len(train_ids)), index=train_ids.astype(str).to_numpy())
    rows = position.loc[oof[id_column].astype(str).to_numpy()].to_numpy()
    write_parquet(experiment_dir(cfg) / "oof.parquet", oof)
    predictions = oof[task.pred_columns].to_numpy()
    return {
        "folds": {
            str(f): task.score(targets[rows][oof["fold"].to_numpy() == f], part)
            for f, part in _by_fold(oof, predictions)
        },
        "cv": task.score(targets[rows], predictions),
        **test_like_scores(task, folds, targets, rows, predictions),
        "complete": len(rows) == len(train_ids),
    }


def _by_fold(oof: pd.DataFrame, predictions: np.ndarray):
    folds = oof["fold"].to_numpy()
    for f in sorted(np.unique(folds)):
        yield int(f), predictions[folds == f]


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def average_tests(cfg: Config, task: Task) -> pd.DataFrame:
    """Write the seed-averaged test predictions, ``outputs/<experiment>/test.parquet`` (or the
    task's own file: ``task.own_predictions``); returns the table (its own: the test ids)."""
    if task.own_predictions is not None:
        return task.own_predictions.average_seeds_test(cfg, seed_folders(cfg))
    label = f"experiment '{cfg.train.experiment}'"
    tables = []
    for folder in seed_folders(cfg):
        path = folder / "test.parquet"
        if not path.is_file():
            raise DataError(f"{label}: {path} not found (run `medalist infer` first)")
        tables.append(pd.read_parquet(path))
    table = average_tables(tables, cfg.competition.id_column, task.pred_columns, label)
    write_parquet(experiment_dir(cfg) / "test.parquet", table)
    return table
