"""Helpers for the ensemble, ledger and report tests: a tiny project in the contract format.

``make_project`` writes ``data/train.csv``, ``data/test.csv``, ``data/sample_submission.csv``
and a real ``folds/`` manifest (medalist.folds); ``write_experiment`` writes an experiment
folder as the train and infer stages do (oof.parquet with ``fold``, test.parquet, config.yaml,
task.json).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.special import expit, softmax

from medalist.config import Config, resolve_config
from medalist.data import read_train
from medalist.folds import assign_folds, build_manifest, write_folds
from medalist.io import write_json, write_parquet, write_text
from medalist.tasks import build_task

CLASSES = ["ant", "bee", "cat"]


def _targets(task: str, n: int, rng) -> pd.DataFrame:
    if task == "binary":
        return pd.DataFrame({"target": rng.integers(0, 2, n)})
    if task == "multiclass":
        return pd.DataFrame({"target": rng.choice(CLASSES, n)})
    if task == "multilabel":
        return pd.DataFrame({"a": rng.integers(0, 2, n), "b": rng.integers(0, 2, n)})
    return pd.DataFrame({"target": rng.normal(size=n)})


def make_project(
    root: Path,
    task: str = "binary",
    n_rows: int = 120,
    n_test: int = 30,
    n_splits: int = 4,
    seed: int = 0,
) -> Config:
    """A tiny competition under ``root`` and its resolved config (absolute paths)."""
    rng = np.random.default_rng(seed)
    targets = ["a", "b"] if task == "multilabel" else ["target"]
    scheme = {"multilabel": "multilabel_stratified", "regression": "quantile"}.get(
        task, "stratified"
    )
    cfg = resolve_config(
        overrides=[
            f"task.type={task}",
            f"competition.target_columns=[{', '.join(targets)}]",
            f"competition.data_dir={root / 'data'}",
            f"competition.folds_dir={root / 'folds'}",
            f"competition.outputs_dir={root / 'outputs'}",
            f"competition.submissions_dir={root / 'submissions'}",
            f"folds.scheme={scheme}",
            f"folds.n_splits={n_splits}",
        ]
    )
    train = pd.concat(
        [pd.DataFrame({"id": np.arange(1000, 1000 + n_rows)}), _targets(task, n_rows, rng)], axis=1
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    train.to_csv(root / "data" / "train.csv", index=False)
    test_ids = np.arange(5000, 5000 + n_test)
    pd.DataFrame({"id": test_ids}).to_csv(root / "data" / "test.csv", index=False)
    sample = pd.DataFrame({"id": test_ids})
    for column in targets:
        sample[column] = (
            0.5 if task in ("binary", "multilabel") else "ant" if task == "multiclass" else 0.0
        )
    sample.to_csv(root / "data" / "sample_submission.csv", index=False)
    params = {
        "id_column": "id",
        "target_columns": targets,
        "scheme": scheme,
        "n_splits": n_splits,
        "random_state": 42,
    }
    folds = assign_folds(train, **params)
    write_folds(folds, build_manifest(train, folds, **params), root / "folds")
    return cfg


def labels(cfg: Config) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Encoded targets, folds (train order) and the train table of the project."""
    train = read_train(cfg)
    task = build_task(cfg, train)
    folds = pd.read_csv(Path(cfg.competition.folds_dir) / "folds.csv")
    return task.encode_targets(train), folds["fold"].to_numpy(), train


def predictions(cfg: Config, y: np.ndarray, strength: float, seed: int, n: int | None = None):
    """Predictions in the task's columns: ``strength`` of signal plus unit noise."""
    rng = np.random.default_rng(seed)
    kind = cfg.task.type
    n = len(y) if n is None else n
    truth = y if n == len(y) else rng.choice(y, n) if y.ndim == 1 else y[rng.integers(0, len(y), n)]
    if kind == "multiclass":
        onehot = np.eye(len(CLASSES))[truth]
        return softmax(strength * onehot + rng.normal(size=onehot.shape), axis=1)
    if kind == "regression":
        return truth.reshape(n, -1) + rng.normal(size=(n, 1)) / max(strength, 1e-3)
    signal = (2 * truth.reshape(n, -1) - 1) * strength
    return expit(signal + rng.normal(size=signal.shape))


def pred_columns(cfg: Config) -> list[str]:
    return build_task(cfg, read_train(cfg)).pred_columns


def write_experiment(
    cfg: Config,
    name: str,
    oof: np.ndarray,
    test: np.ndarray,
    fold: np.ndarray | None = None,
    config: bool = True,
    folder: Path | None = None,
) -> Path:
    """An experiment folder in the contract format (``fold`` omitted when ``fold`` is None)."""
    folder = folder or Path(cfg.competition.outputs_dir) / name
    train = read_train(cfg)
    columns = pred_columns(cfg)
    table = pd.DataFrame(oof, columns=columns)
    if fold is not None:
        table.insert(0, "fold", fold)
    table.insert(0, "id", train["id"].to_numpy())
    write_parquet(folder / "oof.parquet", table)
    test_ids = pd.read_csv(Path(cfg.competition.data_dir) / "test.csv")["id"].to_numpy()
    test_table = pd.DataFrame(test, columns=columns)
    test_table.insert(0, "id", test_ids)
    write_parquet(folder / "test.parquet", test_table)
    if config:
        write_text(folder / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json")))
        task = build_task(cfg, train)
        write_json(
            folder / "task.json",
            {
                "type": task.type,
                "classes": task.classes,
                "target_columns": task.target_columns,
                "pred_columns": columns,
                "metrics": [],
            },
        )
    return folder


def add_experiments(cfg: Config, strengths: dict[str, float], seed: int = 0) -> list[str]:
    """One experiment per name with OOF and test predictions of the given strength."""
    y, fold, _ = labels(cfg)
    n_test = len(pd.read_csv(Path(cfg.competition.data_dir) / "test.csv"))
    for offset, (name, strength) in enumerate(strengths.items()):
        oof = predictions(cfg, y, strength, seed + 1000 + offset)
        test = predictions(cfg, y, strength, seed + 2000 + offset, n=n_test)
        write_experiment(cfg, name, oof, test, fold)
    return list(strengths)
