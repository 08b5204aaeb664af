"""Tables: a boosted model per fold through the train and infer stages, in the same files as
a network's folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medalist.layout import experiment_dir, fold_dir
from medalist.modalities.tabular.boosters import BoostedLearner
from medalist.prediction import infer
from medalist.tasks import build_task
from medalist.training import stage as train_stage
from support.tables import table_cfg, write_table_competition, write_table_folds

SUFFIX = {"lightgbm": "lgb.txt", "xgboost": "xgb.json", "catboost": "cb.json"}


@pytest.mark.parametrize("model", sorted(SUFFIX))
def test_each_library_trains_folds_and_predicts_the_test_set(tmp_path, model):
    labels = write_table_competition(tmp_path)
    fast = "tabular.params={learning_rate: 0.15}"  # fewer rounds
    cfg = table_cfg(tmp_path, f"train.experiment={model}", fast, model=model)
    write_table_folds(cfg)
    metrics = train_stage.run(cfg)
    assert metrics["complete"] and metrics["cv"]["roc_auc"] > 0.9
    folder = fold_dir(cfg, 0)
    record = json.loads((folder / "scores.json").read_text())
    assert record["learner"] == model
    assert record["prediction_weights"] == ["features.json", f"model.{SUFFIX[model]}"]
    importance = pd.read_parquet(folder / "importance.parquet")
    assert importance["gain"].sum() > 0 and "shade" in set(importance["feature"])

    # The OOF rows again from the saved files: the numbers oof.parquet holds.
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    oof = pd.read_parquet(folder / "oof.parquet")
    rows = train.set_index("id").loc[oof["id"]].reset_index()
    learner = BoostedLearner(cfg, build_task(cfg, train))
    paths = [folder / name for name in record["prediction_weights"]]
    again = learner.predict(rows, paths, "train.csv")
    np.testing.assert_array_equal(again[:, 0], oof["p_malignant"].to_numpy())

    table = infer.run(cfg)
    per_fold = [pd.read_parquet(fold_dir(cfg, f) / "test.parquet") for f in range(3)]
    mean = np.mean([p["p_malignant"].to_numpy() for p in per_fold], axis=0)
    np.testing.assert_allclose(table["p_malignant"].to_numpy(), mean, rtol=0, atol=1e-7)
    truth = pd.read_csv(labels).set_index("id").loc[table["id"], "diagnosis"] == "malignant"
    assert roc_auc_score(truth, table["p_malignant"]) > 0.9
    assert (experiment_dir(cfg) / "test.parquet").is_file()


def test_a_finished_fold_is_not_fitted_again(tmp_path, caplog):
    write_table_competition(tmp_path)
    cfg = table_cfg(tmp_path, "train.folds=[0]")
    write_table_folds(cfg)
    train_stage.run(cfg)
    model = fold_dir(cfg, 0) / "model.lgb.txt"
    before = model.stat().st_mtime_ns
    train_stage.run(cfg)
    assert model.stat().st_mtime_ns == before
    train_stage.run(table_cfg(tmp_path, "train.folds=[0]", "tabular.rounds=150"))
    assert model.stat().st_mtime_ns != before
