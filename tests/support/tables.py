"""A small real table for the tabular tests: sklearn's breast cancer data (shipped with it), with
a categorical column and missing values added, as a competition under a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer

from medalist import folds
from medalist.config import Config, resolve_config


def write_table_competition(root: Path, n_rows: int = 240, n_test: int = 60) -> Path:
    """``data/train.csv`` (id, 30 measurements, ``shade``, ``diagnosis``), ``data/test.csv`` and
    ``data/sample_submission.csv`` under ``root``; returns the held-out test labels' file."""
    data = load_breast_cancer(as_frame=True).frame
    data.columns = [c.replace(" ", "_") for c in data.columns]
    rng = np.random.default_rng(0)
    data.insert(0, "id", [f"r{i}" for i in range(len(data))])
    data["shade"] = rng.choice(["red", "green", "blue", None], len(data))
    data.loc[rng.random(len(data)) < 0.05, "mean_radius"] = np.nan
    data["diagnosis"] = np.where(data.pop("target") == 1, "benign", "malignant")
    data = data.sample(n=n_rows + n_test, random_state=0).reset_index(drop=True)
    train, test = data.iloc[:n_rows], data.iloc[n_rows:]
    folder = root / "data"
    folder.mkdir(parents=True, exist_ok=True)
    train.to_csv(folder / "train.csv", index=False)
    test.drop(columns="diagnosis").to_csv(folder / "test.csv", index=False)
    sample = pd.DataFrame({"id": test["id"], "diagnosis": "benign"})
    sample.to_csv(folder / "sample_submission.csv", index=False)
    labels = root / "labels.csv"
    test[["id", "diagnosis"]].to_csv(labels, index=False)
    return labels


def table_cfg(root: Path, *extra: str) -> Config:
    """The competition's config (absolute paths), LightGBM with few rounds, then ``extra``."""
    return resolve_config(
        overrides=[
            "modality=tabular",
            "competition.target_columns=[diagnosis]",
            f"competition.data_dir={root / 'data'}",
            f"competition.folds_dir={root / 'folds'}",
            f"competition.outputs_dir={root / 'outputs'}",
            f"competition.submissions_dir={root / 'submissions'}",
            "task.type=binary",
            "folds.n_splits=3",
            "tabular.rounds=200",
            "tabular.early_stopping=20",
            "train.progress=false",
            *extra,
        ]
    )


def write_table_folds(cfg: Config) -> None:
    folds.run(cfg)
