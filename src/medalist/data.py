"""Reading the competition tables, with errors that name the file, column and row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medalist.config import Config
from medalist.errors import DataError, show_value
from medalist.layout import test_path, train_path


def read_table(path: Path, required: list[str]) -> pd.DataFrame:
    """Read a CSV and check its required columns and its id column (the first required one)."""
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(df.columns)[:20]}")
    id_column = required[0]
    if df[id_column].isna().any():
        row = int(df[id_column].isna().to_numpy().nonzero()[0][0])
        raise DataError(f"{path}: row {row} has no {id_column}")
    duplicated = df[id_column].duplicated()
    if duplicated.any():
        row = int(duplicated.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{path}: row {row}: duplicated {id_column} {show_value(df[id_column].iloc[row])}"
        )
    return df


def read_train(cfg: Config) -> pd.DataFrame:
    c = cfg.competition
    required = [c.id_column, *c.target_columns]
    if cfg.folds.group_column:
        required.append(cfg.folds.group_column)
    return read_table(train_path(cfg), required)


def read_test(cfg: Config) -> pd.DataFrame:
    return read_table(test_path(cfg), [cfg.competition.id_column])
