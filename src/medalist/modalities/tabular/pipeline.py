"""Fold-safe feature engineering (``tabular.pipeline``): steps that add columns, fitted on each
fold's training rows only, saved beside the fold's model (``pipeline.json``) and repeated on
its validation rows, the test set and in the offline bundle.

- ``target_encoding``: a category's smoothed target mean, ``(sum + m * prior) / (count + m)``
  with ``m = smoothing`` (per class for multiclass, per label for multilabel). The fold's
  training rows get it out of fold (``inner_folds`` splits of those rows, each encoded by the
  others), so a row's encoding never holds its own target; validation and test rows get the
  encoding of all the fold's training rows. A category those rows lack gets the prior.
- ``count`` and ``frequency``: how many of the fold's training rows have the category (or
  which share of them); an unseen category counts 0.
- ``missing_indicators``: ``<column>.missing``, 1 where the value is missing.

Each step names its columns (null: every categorical feature column, or for missing indicators
every feature column with a missing value in the fold's training rows). The new columns are
``<column>.<step>`` (``city.te``, ``city.te_<class>``, ``city.count``, ``city.frequency``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

from medalist.config import Config
from medalist.errors import DataError
from medalist.io import write_json
from medalist.modalities.tabular.boosters import Fitted
from medalist.modalities.tabular.features import (
    categorical_columns,
    category_text,
    every_row,
    feature_columns,
)
from medalist.modalities.tabular.text import without_text
from medalist.tasks import Task

PIPELINE_FILE = "pipeline.json"


def _target_matrix(task: Task, targets: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Targets as columns to average, with the suffix of each encoded column."""
    if task.type == "multiclass":
        return np.eye(len(task.classes))[targets], [f"te_{c}" for c in task.classes]
    if task.type == "binary":
        return targets.reshape(-1, 1).astype(np.float64), ["te"]
    names = task.target_columns
    suffixes = ["te"] if len(names) == 1 else [f"te_{name}" for name in names]
    return np.asarray(targets, dtype=np.float64).reshape(len(targets), -1), suffixes


def _encoding(keys: pd.Series, values: np.ndarray, smoothing: float) -> dict:
    """Per category: the smoothed mean of ``values`` (rows x outputs), and the prior."""
    prior = values.mean(axis=0)
    frame = pd.DataFrame(values).assign(key=keys.to_numpy()).dropna(subset=["key"])
    sums, counts = frame.groupby("key").sum(), frame.groupby("key").size()
    means = (sums.to_numpy() + smoothing * prior) / (counts.to_numpy()[:, None] + smoothing)
    table = {str(k): row for k, row in zip(sums.index, means.tolist(), strict=True)}
    return {"prior": prior.tolist(), "table": table}


def _apply_encoding(keys: pd.Series, encoding: dict) -> np.ndarray:
    prior = np.asarray(encoding["prior"])
    table = encoding["table"]
    return np.array([table.get(k, prior) if isinstance(k, str) else prior for k in keys])


class Pipeline:
    """The fitted steps of one fold (their state is plain JSON)."""

    def __init__(self, steps: list[dict]):
        self.steps = steps

    @classmethod
    def fit(
        cls,
        cfg: Config,
        task: Task,
        frame: pd.DataFrame,
        targets: np.ndarray,
        source: str,
        table: pd.DataFrame | None = None,
    ) -> tuple[Pipeline, pd.DataFrame]:
        """The steps fitted on the fold's training rows ``frame``, and those rows with the new
        columns (target encodings out of fold); ``table`` (every row) decides which columns are
        categorical, as for the model's features."""
        cfg = without_text(cfg)  # free text is never encoded by these steps
        features = feature_columns(cfg, list(frame.columns), source)
        categorical = categorical_columns(cfg, frame if table is None else table, features)
        steps, out = [], frame.reset_index(drop=True)
        for step in cfg.tabular.pipeline:
            columns = step.columns
            if columns is None and step.name == "missing_indicators":
                columns = [c for c in features if frame[c].isna().any()]
            elif columns is None:
                columns = categorical
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise DataError(f"{source}: tabular.pipeline {step.name}: no column {missing}")
            fitted = {"name": step.name, "columns": list(columns)}
            if step.name == "target_encoding":
                values, suffixes = _target_matrix(task, targets)
                fitted["suffixes"] = suffixes
                keys = {c: category_text(out[c]) for c in columns}  # once per column
                fitted["encodings"] = {
                    c: _encoding(keys[c], values, step.smoothing) for c in columns
                }
                out = _with(out, _inner_target_encoding(keys, values, suffixes, step, cfg))
            elif step.name in ("count", "frequency"):
                fitted["counts"] = {
                    c: {str(k): int(n) for k, n in category_text(out[c]).value_counts().items()}
                    for c in columns
                }
                fitted["rows"] = len(out)
                out = _with(out, _counted(out, fitted))
            else:
                out = _with(out, _indicators(out, columns))
            steps.append(fitted)
        return cls(steps), out

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Other rows (validation, test) with the new columns, from the fitted state."""
        out = frame.reset_index(drop=True)
        for step in self.steps:
            if step["name"] == "target_encoding":
                added = {}
                for column in step["columns"]:
                    encoded = _apply_encoding(category_text(out[column]), step["encodings"][column])
                    for k, suffix in enumerate(step["suffixes"]):
                        added[f"{column}.{suffix}"] = encoded[:, k]
                out = _with(out, pd.DataFrame(added))
            elif step["name"] in ("count", "frequency"):
                out = _with(out, _counted(out, step))
            else:
                out = _with(out, _indicators(out, step["columns"]))
        return out

    def added(self) -> list[str]:
        """The columns the steps add, in order."""
        names = []
        for step in self.steps:
            for column in step["columns"]:
                if step["name"] == "target_encoding":
                    names += [f"{column}.{s}" for s in step["suffixes"]]
                elif step["name"] == "missing_indicators":
                    names.append(f"{column}.missing")
                else:
                    names.append(f"{column}.{step['name']}")
        return names

    def save(self, path: Path) -> None:
        write_json(path, {"steps": self.steps})

    @classmethod
    def load(cls, path: Path) -> Pipeline:
        if not path.is_file():
            raise DataError(f"{path} not found: the fold's feature pipeline; train it again")
        return cls(json.loads(path.read_text(encoding="utf-8"))["steps"])


def _with(frame: pd.DataFrame, added: pd.DataFrame) -> pd.DataFrame:
    clash = sorted(set(added.columns) & set(frame.columns))
    if clash:
        raise DataError(f"tabular.pipeline: the column(s) {clash} exist already")
    return pd.concat([frame, added.reset_index(drop=True)], axis=1)


def _inner_target_encoding(keys: dict, values, suffixes, step, cfg) -> pd.DataFrame:
    """The training rows' encodings, each from the other inner folds' rows (``keys``: each
    column's categories as text)."""
    rows = len(values)
    encoded = {f"{c}.{s}": np.empty(rows) for c in keys for s in suffixes}
    splits = KFold(step.inner_folds, shuffle=True, random_state=cfg.train.seed).split(values)
    for fit_rows, encode_rows in splits:
        for column, column_keys in keys.items():
            encoding = _encoding(column_keys.iloc[fit_rows], values[fit_rows], step.smoothing)
            result = _apply_encoding(column_keys.iloc[encode_rows], encoding)
            for k, suffix in enumerate(suffixes):
                encoded[f"{column}.{suffix}"][encode_rows] = result[:, k]
    return pd.DataFrame(encoded)


def _counted(frame: pd.DataFrame, step: dict) -> pd.DataFrame:
    added = {}
    for column in step["columns"]:
        counts = category_text(frame[column]).map(step["counts"][column]).fillna(0)
        values = counts.to_numpy(dtype=np.float64)
        if step["name"] == "frequency":
            values = values / step["rows"]
        added[f"{column}.{step['name']}"] = values
    return pd.DataFrame(added)


def _indicators(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {f"{c}.missing": frame[c].isna().to_numpy(dtype=np.float64) for c in columns}
    )


class PipelineLearner:
    """A learner whose rows first go through the fold's fitted pipeline."""

    def __init__(self, cfg: Config, task: Task, make_learner):
        self.cfg, self.task, self.make_learner = cfg, task, make_learner
        self.name = make_learner(cfg, task).name

    def _inner(self, pipeline: Pipeline):
        """The learner, its listed features (if any) extended by the pipeline's columns."""
        cfg = self.cfg
        if cfg.tabular.features is not None:
            features = [*cfg.tabular.features, *pipeline.added()]
            tabular = cfg.tabular.model_copy(update={"features": features})
            cfg = cfg.model_copy(update={"tabular": tabular})
        return self.make_learner(cfg, self.task)

    def fit(
        self,
        train,
        targets,
        valid,
        valid_targets,
        folder: Path,
        source: str,
        fold=0,
        distilled=None,
    ):
        """The pipeline fitted on the labels (a target encoding is the labels'), then the
        learner on its columns, learning from ``distilled`` when given."""
        table = every_row(train, valid)
        pipeline, train = Pipeline.fit(self.cfg, self.task, train, targets, source, table=table)
        folder.mkdir(parents=True, exist_ok=True)
        pipeline.save(folder / PIPELINE_FILE)
        valid = None if valid is None else pipeline.apply(valid)
        fitted = self._inner(pipeline).fit(
            train, targets, valid, valid_targets, folder, source, fold=fold, distilled=distilled
        )
        return Fitted(
            [PIPELINE_FILE, *fitted.files],
            fitted.valid,
            fitted.best_rounds,
            fitted.history,
            fitted.importance,
        )

    def refuses_soft_targets(self) -> str | None:
        """The learner's answer (the pipeline itself is fitted on the labels)."""
        return self.make_learner(self.cfg, self.task).refuses_soft_targets()

    def predict(self, frame: pd.DataFrame, paths: list[Path], source: str) -> np.ndarray:
        pipeline = Pipeline.load(paths[0])
        return self._inner(pipeline).predict(pipeline.apply(frame), paths[1:], source)
