"""Other experiments' predictions as features (``tabular.oof_features``): image or text models'
scores fed into a boosted model, as winning solutions do.

A training row gets each named experiment's out-of-fold prediction (``oof.parquet``), a test
row its fold-averaged test prediction (``test.parquet``); the column ``<experiment>.<column>``
(``effnet.p_malignant``). The experiments must have been trained on this project's folds (the
ensemble stage's check): a row's feature then comes from a model that never saw the row. It
may have seen the other rows of the fold being validated, so, as for any stacking on OOF
predictions, the CV of the model on top is a little optimistic; the ensemble stage's nested
CV is the stricter measure.

The offline bundle predicts such a model on the hidden test set: it carries the experiments the
model stacks on (:func:`stacked_on`) as experiments of their own, predicts them first from their
packaged weights, and writes each one's ``test.parquet`` (the table ``infer`` writes) and
``task.json`` in this layout under its working folder, which becomes the model's
``competition.outputs_dir``; its ``competition.folds_dir`` is the bundle's copy of the project's
``folds.json``. Those folders hold no ``config.yaml``, so :func:`with_stacked` does not check
their folds again there: ``medalist package`` checked that the model and every experiment it
stacks on were trained on the project's folds before writing the bundle.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from medalist.config import Config
from medalist.ensemble.inputs import check_manifest, read_prediction
from medalist.errors import DataError
from medalist.layout import folds_files, outputs_dir

TABLES = {"train": "oof.parquet", "test": "test.parquet"}


def stacked_on(cfg: Config) -> list[str]:
    """The experiments whose predictions ``cfg``'s model reads (``tabular.oof_features``), in
    order: what must be predicted before it."""
    return list(cfg.tabular.oof_features)


def stacked_names(cfg: Config) -> list[str]:
    """The columns the experiments add, from each one's ``task.json``."""
    names = []
    for experiment in cfg.tabular.oof_features:
        record = outputs_dir(cfg) / experiment / "task.json"
        if not record.is_file():
            raise DataError(f"tabular.oof_features: {record} not found; train '{experiment}' first")
        columns = json.loads(record.read_text(encoding="utf-8"))["pred_columns"]
        names += [f"{experiment}.{column}" for column in columns]
    return names


def with_stacked(cfg: Config, frame: pd.DataFrame, split: str, source: str) -> pd.DataFrame:
    """``frame`` with the experiments' predictions of its rows as extra columns (``split``:
    train rows get the OOF predictions, test rows the test predictions)."""
    if not cfg.tabular.oof_features:
        return frame
    manifest_file = folds_files(cfg)[1]
    if not manifest_file.is_file():
        raise DataError(f"{manifest_file} not found; run `medalist folds` first")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    id_column = cfg.competition.id_column
    ids = frame[id_column].astype(str)
    added = {}
    for experiment in cfg.tabular.oof_features:
        folder = outputs_dir(cfg) / experiment
        label = f"tabular.oof_features: '{experiment}'"
        # A folder without config.yaml is not checked: the offline bundle's own predictions.
        check_manifest(folder, label, manifest)
        table = read_prediction(folder / TABLES[split], label)
        table = table.set_index(table[id_column].astype(str))
        missing = ids[~ids.isin(table.index)]
        if len(missing):
            raise DataError(
                f"{label}: {folder / TABLES[split]} has no prediction for {len(missing)} row(s) "
                f"of {source}, e.g. {missing.head(3).tolist()} (every fold trained and inferred?)"
            )
        for column in table.columns.drop([id_column, "fold"], errors="ignore"):
            name = f"{experiment}.{column}"
            if name in frame.columns:
                raise DataError(f"{label}: {source} already has a column '{name}'")
            added[name] = table.loc[ids.to_numpy(), column].to_numpy(dtype=np.float64)
    return pd.concat([frame.reset_index(drop=True), pd.DataFrame(added)], axis=1)


def stacking_config(cfg: Config) -> Config:
    """The config a fold's learner sees: listed features gain the experiments' columns."""
    if not cfg.tabular.oof_features or cfg.tabular.features is None:
        return cfg
    features = [*cfg.tabular.features, *stacked_names(cfg)]
    return cfg.model_copy(update={"tabular": cfg.tabular.model_copy(update={"features": features})})
