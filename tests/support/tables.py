"""A small real table for the tabular tests: sklearn's breast cancer data (shipped with it), with
a categorical column and missing values added, as a competition under a folder.

The table serves every task: ``diagnosis`` (binary), ``size`` (the tertile of ``mean_area``:
multiclass), ``malignant`` and ``large`` (multilabel), and measurements (regression).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

from medalist import folds
from medalist.config import Config, resolve_config

# The targets of each task in these tests.
TARGETS = {
    "binary": ["diagnosis"],
    "multiclass": ["size"],
    "multilabel": ["malignant", "large"],
    "regression": ["mean_area"],
}
# Columns made from mean_area: dropped (with it) unless one of them is the target.
FROM_AREA = ("size", "large")
# Each library's own name for its number of threads: one thread in the tests, where a few
# processes share two cores (a library that spins on busy cores runs several times slower).
THREADS = {"lightgbm": "num_threads", "xgboost": "nthread", "catboost": "thread_count"}


def table(n_rows: int = 240, n_test: int = 60) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The train and test rows with every candidate target (see the module docstring)."""
    data = load_breast_cancer(as_frame=True).frame
    data.columns = [c.replace(" ", "_") for c in data.columns]
    rng = np.random.default_rng(0)
    data.insert(0, "id", [f"r{i}" for i in range(len(data))])
    data["shade"] = rng.choice(["red", "green", "blue", None], len(data))
    area = data["mean_area"]
    data["size"] = pd.cut(area, area.quantile([0, 1 / 3, 2 / 3, 1]), include_lowest=True)
    data["size"] = data["size"].cat.rename_categories(["small", "medium", "large"]).astype(str)
    data["large"] = (area > area.median()).astype(int)
    data["malignant"] = (data["target"] == 0).astype(int)
    data.loc[rng.random(len(data)) < 0.05, "mean_radius"] = np.nan
    data["diagnosis"] = np.where(data.pop("target") == 1, "benign", "malignant")
    data = data.sample(n=n_rows + n_test, random_state=0).reset_index(drop=True)
    return data.iloc[:n_rows].reset_index(drop=True), data.iloc[n_rows:].reset_index(drop=True)


def write_table_competition(
    root: Path,
    n_rows: int = 240,
    n_test: int = 60,
    targets: Sequence[str] = ("diagnosis",),
) -> Path:
    """``data/train.csv`` (id, 30 measurements, ``shade``, the targets and the other columns
    that are not derived from them), ``data/test.csv`` and ``data/sample_submission.csv`` under
    ``root``; returns the held-out test labels' file."""
    train, test = table(n_rows, n_test)
    targets = list(targets)
    dropped = [c for c in ("diagnosis", "malignant", *FROM_AREA) if c not in targets]
    if "diagnosis" not in targets and "malignant" not in targets:
        dropped.remove("diagnosis")  # a (categorical) feature then
    if any(c in targets for c in FROM_AREA):
        dropped.append("mean_area")
    train, test = train.drop(columns=dropped), test.drop(columns=dropped)
    folder = root / "data"
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.drop(columns=targets).to_csv(folder / "test.csv", index=False)
    sample = test[["id"]].copy()
    for target in targets:  # a placeholder: the first class, or 0
        numeric = pd.api.types.is_numeric_dtype(train[target])
        sample[target] = 0 if numeric else sorted(train[target].unique())[0]
    sample.to_csv(folder / "sample_submission.csv", index=False)
    labels = root / "labels.csv"
    test[["id", *targets]].to_csv(labels, index=False)
    return labels


def scheme(task: str, targets: Sequence[str]) -> str:
    """The folds' scheme for the task's targets."""
    if task == "multilabel":
        return "multilabel_stratified"
    if task == "regression":
        return "quantile" if len(targets) == 1 else "kfold"
    return "stratified"


def table_cfg(
    root: Path,
    *extra: str,
    task: str = "binary",
    targets: Sequence[str] | None = None,
    model: str = "lightgbm",
    threads: int | None = 1,
) -> Config:
    """The competition's config (absolute paths), ``model`` with few rounds on ``threads``
    threads (None: the library's default) for ``task`` on ``targets`` (its usual ones by
    default), then ``extra``."""
    targets = list(TARGETS[task] if targets is None else targets)
    threads_param = [] if threads is None else [f"tabular.params={{{THREADS[model]}: {threads}}}"]
    return resolve_config(
        overrides=[
            "modality=tabular",
            f"tabular.model={model}",
            *threads_param,
            f"competition.target_columns=[{', '.join(targets)}]",
            f"competition.data_dir={root / 'data'}",
            f"competition.folds_dir={root / 'folds'}",
            f"competition.outputs_dir={root / 'outputs'}",
            f"competition.submissions_dir={root / 'submissions'}",
            f"task.type={task}",
            f"folds.scheme={scheme(task, targets)}",
            "folds.n_splits=3",
            "tabular.rounds=200",
            "tabular.early_stopping=20",
            "train.progress=false",
            *extra,
        ]
    )


def write_table_folds(cfg: Config) -> None:
    folds.run(cfg)
