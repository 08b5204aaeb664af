"""Tables: feature columns of ``train.csv`` and ``test.csv``, and a boosted model per fold.

The modality of ``modality: tabular``. :func:`fold_learner` gives the ``train`` and ``infer``
stages a learner that fits a fold and predicts from its files: a GBDT fitted by its library
(:mod:`~medalist.modalities.tabular.boosters`), an MLP trained by medalist's loop
(:mod:`~medalist.modalities.tabular.network`) or a linear model on TF-IDF of text columns
(:mod:`~medalist.modalities.tabular.linear`), on the features that
:mod:`~medalist.modalities.tabular.features` selects, checks and encodes with what the fold's
training rows alone show (categories, scaling).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medalist.config import Config
from medalist.errors import ConfigError, DataError
from medalist.layout import outputs_dir
from medalist.modalities.tabular.boosters import BoostedLearner
from medalist.modalities.tabular.features import check_table, feature_columns
from medalist.modalities.tabular.linear import LinearLearner
from medalist.modalities.tabular.network import NetworkLearner
from medalist.modalities.tabular.pipeline import PipelineLearner
from medalist.modalities.tabular.stacking import stacked_on, stacking_config, with_stacked
from medalist.modalities.tabular.text import has_features, text_values, without_text
from medalist.tasks import Task

IDENTITY = "identity"


class TableDataset(Dataset):
    """The rows of a table as a fold's learner reads them: the frame itself (``frame``), its
    targets and row weights. A sample is a row's index and its model inputs (``row``: the
    values of every column but the id, the targets and ``tabular.exclude``), which is what
    ``medalist sanity`` compares to find identical rows."""

    def __init__(self, frame: pd.DataFrame, targets, weights, source: str, inputs: list[str]):
        self.frame, self.targets, self.weights, self.source = frame, targets, weights, source
        self.inputs = inputs

    @cached_property
    def _input_columns(self) -> pd.DataFrame:
        """The input columns, selected once (not once per row read)."""
        return self.frame[self.inputs]

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "row": self._input_columns.iloc[index].tolist()}


def check_inputs(cfg: Config, df: pd.DataFrame, split: str, source: str) -> list[str]:
    """The feature columns, checked: in training every check (missing, all-missing, text in a
    numeric column, a target among them); in the test set those the config alone decides (each
    fold checks the rest against the features it was trained on before predicting)."""
    for column in cfg.tabular.text_columns:
        text_values(df, column, source)  # present
    df = with_stacked(cfg, df, split, source)  # the experiments' predictions of every row
    for step in cfg.tabular.pipeline:
        missing = [c for c in step.columns or () if c not in df.columns]
        if missing:
            raise DataError(f"{source}: tabular.pipeline {step.name}: no column(s) {missing}")
    others = without_text(stacking_config(cfg))
    if split == "train":
        return check_table(others, df, source) if has_features(others, df) else []
    if others.tabular.features is not None:
        return feature_columns(others, list(df.columns), source)
    return []


def build_dataset(
    cfg: Config,
    df: pd.DataFrame,
    targets: np.ndarray | None,
    *,
    split: str,
    train: bool,
    source: str,
    weights: np.ndarray | None = None,
    views: list[str] | None = None,
) -> TableDataset:
    frame = with_stacked(cfg, df.reset_index(drop=True), split, source)
    left_out = {cfg.competition.id_column, *cfg.competition.target_columns, *cfg.tabular.exclude}
    inputs = [c for c in frame.columns if c not in left_out]
    return TableDataset(frame, targets, weights, source, inputs)


def combine(datasets: list[TableDataset]) -> TableDataset:
    raise ConfigError("train.pseudo_round: pseudo labels are not yet supported for tabular models")


def fold_learner(cfg: Config, task: Task) -> BoostedLearner | NetworkLearner:
    """The learner of each fold: ``tabular.model``, a GBDT (LightGBM, XGBoost or CatBoost)
    fitted by its library, or the MLP trained by medalist's loop."""
    cfg = stacking_config(cfg)
    if cfg.tabular.pipeline:  # the fold's feature engineering first (saved with its model)
        return PipelineLearner(cfg, task, _learner)
    return _learner(cfg, task)


def _learner(cfg: Config, task: Task):
    if cfg.tabular.boosted:
        return BoostedLearner(cfg, task)
    if cfg.tabular.model == "linear":
        return LinearLearner(cfg, task)
    return NetworkLearner(cfg, task)


def build_model(cfg: Config, task: Task) -> torch.nn.Module:
    raise ConfigError(
        "modality tabular: a fold's model depends on its training rows (categories, scaling); "
        "its learner (fold_learner) builds it"
    )


def backbone_names(cfg: Config) -> list[tuple[str, str]]:
    """No pretrained weights."""
    return []


def expand_views(names: list[str], key: str = "infer.tta") -> list[str]:
    """Rows of a table have no test-time views but themselves."""
    others = [name for name in names if name != IDENTITY]
    if others:
        raise ConfigError(f"{key}: {others}: a table has no test-time views; leave ['{IDENTITY}']")
    return [IDENTITY]


def starting_weights(cfg: Config) -> list[Path]:
    """No weights: each fold starts from scratch; but the OOF predictions of the experiments it
    stacks on (``tabular.oof_features``) are what it learns from, so a change of theirs trains
    its folds again."""
    files = [outputs_dir(cfg) / name / "oof.parquet" for name in cfg.tabular.oof_features]
    return [path for path in files if path.is_file()]


def stacked_experiments(cfg: Config) -> list[str]:
    """The experiments of ``tabular.oof_features``: their test predictions are features."""
    return stacked_on(cfg)


def packaged_folder(cfg: Config) -> None:
    """Nothing besides each fold's files. The experiments a model stacks on
    (``tabular.oof_features``) are no folder to carry: the bundle packages them as experiments of
    their own and predicts them before the model (:mod:`medalist.offline.package`)."""
    return None
