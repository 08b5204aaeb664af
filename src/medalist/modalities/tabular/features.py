"""Which columns of a table are features, their checks, and their encoding as numbers.

A fold's :class:`FeatureSpec` is fitted on the fold's training rows only (the categories it
knows), saved beside the fold's model as ``features.json`` and read back to encode the test set,
so ``infer`` and the offline bundle encode exactly as training did. Categories become integer
codes in the order of their sorted text; a missing value, or a category the fold's training rows
never had, becomes missing (NaN), which every library handles natively, and is counted in the log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.config import Config
from medalist.errors import ConfigError, DataError, show_value
from medalist.io import write_json

log = logging.getLogger(__name__)

SPEC_FILE = "features.json"
# A text column is taken for a numeric one with a few bad values (not for a categorical one)
# when at least this share of its non-missing values read as numbers.
MOSTLY_NUMERIC = 0.9


def feature_columns(cfg: Config, columns: list[str], source: str) -> list[str]:
    """The feature columns: ``tabular.features`` (each checked present), or every column but
    the id, the targets and ``tabular.exclude``."""
    wanted = cfg.tabular.features
    if wanted is not None:
        missing = [c for c in wanted if c not in columns]
        if missing:
            raise DataError(f"{source}: feature column(s) {missing} (tabular.features) not found")
        return list(wanted)
    left_out = {cfg.competition.id_column, *cfg.competition.target_columns, *cfg.tabular.exclude}
    features = [c for c in columns if c not in left_out]
    if not features:
        raise DataError(f"{source}: no feature columns besides the id and the targets")
    return features


def _numbers(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce")


def is_numeric_column(values: pd.Series) -> bool:
    """Whether a column holds numbers (booleans count as 0/1)."""
    return pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)


def _mostly_numeric(values: pd.Series) -> bool:
    codes, distinct = pd.factorize(values)  # each distinct value parsed once, not each row
    present = codes[codes >= 0]
    if len(present) == 0:
        return False
    numeric = _numbers(pd.Series(distinct, dtype=object)).notna().to_numpy()
    return numeric[present].mean() >= MOSTLY_NUMERIC


def every_row(train: pd.DataFrame, valid: pd.DataFrame | None) -> pd.DataFrame:
    """A fold's training and validation rows together: the training table, on which every fold
    decides alike which columns are numeric and which categorical."""
    return train if valid is None else pd.concat([train, valid], ignore_index=True)


def categorical_columns(cfg: Config, frame: pd.DataFrame, features: list[str]) -> list[str]:
    """``tabular.categorical``, or the feature columns that do not hold numbers."""
    if cfg.tabular.categorical is not None:
        return list(cfg.tabular.categorical)
    return [
        c for c in features if not is_numeric_column(frame[c]) and not _mostly_numeric(frame[c])
    ]


def check_numbers(frame: pd.DataFrame, column: str, source: str, hint: str) -> np.ndarray:
    """A numeric column as float64; a value that is not a number, or an infinite one (which
    XGBoost refuses and the other libraries read differently), names its row and column."""
    values = frame[column]
    if is_numeric_column(values):  # numbers already (booleans as 0/1): nothing to parse
        array = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        numbers = _numbers(values)
        bad = numbers.isna() & values.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{source}: row {row}, column '{column}': {show_value(values.iloc[row])} is not "
                f"a number ({int(bad.sum())} such value(s)); {hint}"
            )
        array = numbers.to_numpy(dtype=np.float64)
    infinite = np.isinf(array)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise DataError(
            f"{source}: row {row}, column '{column}': {show_value(values.iloc[row])} is infinite "
            f"({int(infinite.sum())} such value(s)); replace it (an empty cell reads as missing)"
        )
    return array


def check_table(cfg: Config, frame: pd.DataFrame, source: str) -> list[str]:
    """Every check of a training table's features, before any work; returns the features."""
    return checked_columns(cfg, frame, source)[0]


def checked_columns(cfg: Config, frame: pd.DataFrame, source: str) -> tuple[list[str], list[str]]:
    """:func:`check_table`'s checks; returns the features and the categorical ones among them."""
    features = feature_columns(cfg, list(frame.columns), source)
    targets = sorted(set(features) & set(cfg.competition.target_columns))
    if targets:
        raise DataError(f"{source}: target column(s) {targets} are among the features")
    unknown = [c for c in cfg.tabular.categorical or () if c not in features]
    if unknown:
        raise ConfigError(
            f"tabular.categorical: {unknown} are not feature columns of {source}; list columns "
            f"of the table that are features (not the id, a target or in tabular.exclude)"
        )
    categorical = categorical_columns(cfg, frame, features)
    for column in features:
        if frame[column].isna().all():
            raise DataError(
                f"{source}: feature column '{column}' is missing in every row; leave it out "
                f"(tabular.exclude)"
            )
        if column not in categorical:
            check_numbers(
                frame, column, source, "fix it, or list the column in tabular.categorical"
            )
    return features, categorical


def category_text(values: pd.Series) -> pd.Series:
    """Categories compared as text, so 3, 3.0 and '3' read from CSV files stay one category
    whichever file they come from; missing stays missing."""
    codes, distinct = pd.factorize(values)  # each distinct value converted once, not each row
    distinct = pd.Series(distinct, dtype=object)
    text = distinct.astype("string")
    numbers = _numbers(distinct)
    whole = numbers.notna() & (numbers == numbers.round()) & (numbers.abs() < 2**53)
    text[whole] = numbers[whole].astype("int64").astype("string")
    return pd.Series(text.array.take(codes, allow_fill=True), index=values.index, dtype="string")


@dataclass
class FeatureSpec:
    """The features of one fold: their order, which are categorical, and the categories the
    fold's training rows have (codes are positions in these lists)."""

    columns: list[str]
    categories: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, cfg: Config, frame: pd.DataFrame, source: str, table: pd.DataFrame | None = None
    ) -> FeatureSpec:
        """The spec of a fold whose training rows are ``frame`` (their categories).

        ``table`` holds every row of the training table (``frame`` when None): the columns are
        checked and their kind (numeric or categorical) is decided on it, so that every fold
        reads a column as the whole table's check did, whatever share of its stray values or
        missing cells the fold's training rows happen to hold.
        """
        table = frame if table is None else table
        features, categorical = checked_columns(cfg, table, source)
        categories = {
            column: sorted(category_text(frame[column]).dropna().unique().tolist())
            for column in categorical
        }
        return cls(features, categories)

    @property
    def categorical_positions(self) -> list[int]:
        return [i for i, c in enumerate(self.columns) if c in self.categories]

    def encode(self, frame: pd.DataFrame, source: str) -> np.ndarray:
        """The rows as a float64 matrix (rows x features); categories as codes, NaN missing."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise DataError(
                f"{source}: feature column(s) {missing} the model was trained on are missing"
            )
        matrix = np.empty((len(frame), len(self.columns)), dtype=np.float64)
        for i, column in enumerate(self.columns):
            if column in self.categories:
                matrix[:, i] = self._codes(frame, column, source)
            else:
                hint = "the model was trained on numbers in this column"
                matrix[:, i] = check_numbers(frame, column, source, hint)
        return matrix

    def _codes(self, frame: pd.DataFrame, column: str, source: str) -> np.ndarray:
        known = self.categories[column]
        text = category_text(frame[column])
        # Positions in the known categories; -1 for missing and unseen (which a Categorical
        # built from them will refuse in a later pandas).
        codes = pd.Index(known, dtype="string").get_indexer(text).astype(np.float64)
        unseen = (codes < 0) & text.notna().to_numpy()
        if unseen.any():
            log.info(
                "%s: column '%s': %d value(s) in %d categor(ies) unseen in training, read as "
                "missing",
                source,
                column,
                int(unseen.sum()),
                text[unseen].nunique(),
            )
        codes[codes < 0] = np.nan
        return codes

    def save(self, path: Path) -> None:
        write_json(path, {"columns": self.columns, "categories": self.categories})

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        if not path.is_file():
            raise DataError(f"{path} not found: the fold's feature encoding; train it again")
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(list(data["columns"]), {k: list(v) for k, v in data["categories"].items()})
