"""Bad tables and configs for a boosted model, each named (file, row, column or config key)
before any training or prediction; categories unseen in training read as missing and counted."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalist.errors import ConfigError, DataError
from medalist.layout import experiment_dir, fold_dir
from medalist.modalities.tabular.boosters import BoostedLearner
from medalist.prediction import infer
from medalist.tasks import build_task
from medalist.training import stage as train_stage
from support.tables import table_cfg, write_table_competition, write_table_folds

FOLD_0 = ("train.folds=[0]", "tabular.rounds=40")


def _edit(path: Path, change) -> None:
    """Rewrite a CSV file through ``change(frame)`` (which edits the frame in place)."""
    frame = pd.read_csv(path)
    change(frame)
    frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A competition with fold 0 of a LightGBM experiment trained, made once."""
    root = tmp_path_factory.mktemp("tables")
    write_table_competition(root, n_rows=150)
    cfg = table_cfg(root, *FOLD_0)
    write_table_folds(cfg)
    train_stage.run(cfg)
    return root


@pytest.fixture
def project(trained, tmp_path) -> Path:
    """A fresh copy of the trained competition, for a test to edit its test set."""
    root = tmp_path / "tables"
    shutil.copytree(trained, root)
    return root


def _untrained(tmp_path, *extra: str):
    """A competition with its folds, and its config with ``extra``."""
    write_table_competition(tmp_path, n_rows=150)
    cfg = table_cfg(tmp_path, *FOLD_0, *extra)
    write_table_folds(cfg)
    return cfg


def test_a_feature_column_missing_from_the_test_set_is_named(project):
    test_csv = project / "data" / "test.csv"
    _edit(test_csv, lambda frame: frame.pop("mean_texture"))
    cfg = table_cfg(project, *FOLD_0)
    with pytest.raises(DataError, match=r"test.csv: feature column\(s\) \['mean_texture'\]"):
        infer.run(cfg)
    assert not (experiment_dir(cfg) / "test.parquet").exists()


def test_a_category_unseen_in_training_reads_as_missing_and_is_counted(project, caplog):
    test_csv = project / "data" / "test.csv"
    frame = pd.read_csv(test_csv)
    frame.loc[[1, 4, 9], "shade"] = "purple"
    frame.to_csv(test_csv, index=False)
    cfg = table_cfg(project, *FOLD_0)
    with caplog.at_level(logging.INFO):
        table = infer.run(cfg)
    counted = [r.getMessage() for r in caplog.records if "unseen in training" in r.getMessage()]
    assert counted and "column 'shade': 3 value(s) in 1 categor(ies)" in counted[0]
    assert "test.csv" in counted[0]
    # The same predictions as with the three cells empty.
    frame.loc[[1, 4, 9], "shade"] = None
    task = build_task(cfg, pd.read_csv(project / "data" / "train.csv"))
    folder = fold_dir(cfg, 0)
    paths = [folder / "features.json", folder / "model.lgb.txt"]
    missing = BoostedLearner(cfg, task).predict(frame, paths, "test.csv")
    np.testing.assert_array_equal(table["p_malignant"].to_numpy(), missing[:, 0])


def test_text_in_a_column_trained_on_numbers_is_named_at_infer(project):
    test_csv = project / "data" / "test.csv"
    frame = pd.read_csv(test_csv)
    frame["mean_texture"] = frame["mean_texture"].astype(object)
    frame.loc[5, "mean_texture"] = "unknown"
    frame.to_csv(test_csv, index=False)
    cfg = table_cfg(project, *FOLD_0)
    pattern = r"test.csv: row 5, column 'mean_texture': 'unknown' is not a number"
    with pytest.raises(DataError, match=pattern):
        infer.run(cfg)


def test_an_all_missing_column_is_named_before_training(tmp_path):
    cfg = _untrained(tmp_path)
    _edit(tmp_path / "data" / "train.csv", lambda frame: frame.__setitem__("blank", np.nan))
    with pytest.raises(DataError, match=r"train.csv: feature column 'blank' is missing in every"):
        train_stage.run(cfg)
    assert not experiment_dir(cfg).exists()


@pytest.mark.parametrize(
    ("listing", "key"),
    [
        ("tabular.features=[mean_radius, diagnosis]", r"tabular.features: \['diagnosis'\] are"),
        ("tabular.features=[id, mean_radius]", "tabular.features: 'id' is the id column"),
        ("tabular.categorical=[diagnosis]", r"tabular.categorical: \['diagnosis'\] are target"),
        ("tricks.ema.enabled=true", "tricks.ema.enabled: training tricks act in medalist's"),
        ("infer.tta=[identity, hflip]", "infer.tta: a table has no test-time views"),
        ("train.pseudo_round=1", "train.pseudo_round: pseudo labels are not yet supported"),
    ],
)
def test_configs_a_table_cannot_honour_are_refused(tmp_path, listing, key):
    with pytest.raises(ConfigError, match=key):
        table_cfg(tmp_path, listing)


def test_a_categorical_column_not_among_the_features_is_named_before_training(tmp_path):
    cfg = _untrained(tmp_path, "tabular.categorical=[shade, colour]")
    with pytest.raises(ConfigError, match=r"tabular.categorical: \['colour'\] are not feature"):
        train_stage.run(cfg)
    assert not experiment_dir(cfg).exists()


@pytest.mark.parametrize("categorical", ["tabular.categorical=[shade]", "tabular.exclude=[]"])
def test_text_in_a_numeric_column_names_row_and_column_before_training(tmp_path, categorical):
    """Whether the categorical columns are listed or found (a column of numbers with a stray
    text value is numeric: see MOSTLY_NUMERIC)."""
    cfg = _untrained(tmp_path, categorical)

    def stray(frame):
        frame["mean_texture"] = frame["mean_texture"].astype(object)
        frame.loc[7, "mean_texture"] = "abc"

    _edit(tmp_path / "data" / "train.csv", stray)
    pattern = r"train.csv: row 7, column 'mean_texture': 'abc' is not a number \(1 such"
    with pytest.raises(DataError, match=pattern):
        train_stage.run(cfg)
    assert not experiment_dir(cfg).exists()


def test_an_infinite_value_names_row_and_column_before_training(tmp_path):
    """XGBoost refuses infinite values deep in its training call; LightGBM takes them."""
    cfg = _untrained(tmp_path, "tabular.model=xgboost", "tabular.params={nthread: 1}")

    def ratio(frame):
        frame["ratio"] = frame["mean_area"] / frame["mean_radius"].where(frame.index != 3, 0)

    _edit(tmp_path / "data" / "train.csv", ratio)
    with pytest.raises(DataError, match=r"train.csv: row 3, column 'ratio': .* is infinite"):
        train_stage.run(cfg)
    assert not experiment_dir(cfg).exists()


@pytest.mark.parametrize("model", ["lightgbm", "mlp", "linear"])
def test_every_fold_reads_a_column_as_the_whole_table_does(tmp_path, model):
    """A column's kind and checks come from the whole table, not from a fold's training rows:
    ``code`` is mostly numbers but has too much text to be numeric (categorical), all of it
    in fold 0's rows; ``rare`` is empty but in fold 0's rows. Fold 0's training rows alone
    would read ``code`` as numeric (then fail on its validation rows) and ``rare`` as empty.
    The GBDTs, the network and the linear model alike."""
    write_table_competition(tmp_path)
    if model == "lightgbm":
        cfg = table_cfg(tmp_path)
    else:
        cfg = table_cfg(tmp_path, f"tabular.model={model}", "train.epochs=2", threads=None)
    write_table_folds(cfg)
    fold = pd.read_csv(tmp_path / "folds" / "folds.csv")["fold"].to_numpy()

    def columns(frame):
        frame["code"] = (np.arange(len(frame)) % 7).astype(str).astype(object)
        text = np.flatnonzero(fold == 0)[:28]  # 28 of 240 rows: 88% numbers, under 90%
        frame.loc[text, "code"] = "x"
        frame["rare"] = np.where(fold == 0, np.arange(len(frame)) % 3, np.nan)

    _edit(tmp_path / "data" / "train.csv", columns)
    _edit(tmp_path / "data" / "test.csv", lambda frame: frame.__setitem__("rare", 1.0))
    _edit(tmp_path / "data" / "test.csv", lambda frame: frame.__setitem__("code", "3"))
    metrics = train_stage.run(cfg)
    assert metrics["complete"]
    for k in range(3):
        if model == "linear":  # its features are in its one JSON file
            saved = pd.read_json(fold_dir(cfg, k) / "model.linear.json", typ="series")
            spec = saved["encoder"]["features"]
        else:
            spec = pd.read_json(fold_dir(cfg, k) / "features.json", typ="series")
        assert "code" in spec["categories"] and "rare" not in spec["categories"]
        assert "rare" in spec["columns"]
    assert len(infer.run(cfg)) == 60
