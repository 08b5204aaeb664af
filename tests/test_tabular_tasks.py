"""Tables for every task, a full fit and the same bits twice: each library trains and predicts
the prediction table's columns, with the files of one model per output where one model cannot
give them all."""

from __future__ import annotations

import json

import catboost
import lightgbm
import numpy as np
import pandas as pd
import pytest
import xgboost

from medalist.errors import DataError
from medalist.layout import FULL_FIT, experiment_dir, fold_dir
from medalist.modalities.tabular.boosters import BoostedLearner
from medalist.prediction import infer
from medalist.tasks import build_task
from medalist.training import stage as train_stage
from support.tables import table, table_cfg, write_table_competition, write_table_folds

SUFFIX = {"lightgbm": "lgb.txt", "xgboost": "xgb.json", "catboost": "cb.json"}

# (task, targets, library): each task by one library, each library on a task that is not binary.
CASES = [
    ("multiclass", ["size"], "xgboost"),
    ("multilabel", ["malignant", "large"], "catboost"),
    ("regression", ["mean_area"], "lightgbm"),
    ("regression", ["mean_area", "worst_texture"], "xgboost"),
]


def _trained(tmp_path, task, targets, model, *extra):
    labels = write_table_competition(tmp_path, targets=targets)
    fast = "tabular.params={learning_rate: 0.15}"  # fewer rounds
    cfg = table_cfg(tmp_path, fast, *extra, task=task, targets=targets, model=model)
    write_table_folds(cfg)
    return cfg, labels, train_stage.run(cfg)


@pytest.mark.parametrize(
    ("task", "targets", "model"), CASES, ids=[f"{c[0]}{len(c[1])}-{c[2]}" for c in CASES]
)
def test_every_task_trains_and_predicts_its_columns(tmp_path, task, targets, model):
    cfg, labels, metrics = _trained(tmp_path, task, targets, model)
    assert metrics["complete"]
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    columns = build_task(cfg, train).pred_columns
    expected = {
        "multiclass": ["p_large", "p_medium", "p_small"],
        "multilabel": ["p_malignant", "p_large"],
        "regression": [f"pred_{t}" for t in targets],
    }[task]
    assert columns == expected
    assert json.loads((experiment_dir(cfg) / "task.json").read_text())["pred_columns"] == columns

    oof = pd.read_parquet(experiment_dir(cfg) / "oof.parquet")
    assert list(oof.columns) == ["id", "fold", *columns]
    assert sorted(oof["id"]) == sorted(train["id"]) and oof[columns].notna().all().all()
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv").set_index("id")
    np.testing.assert_array_equal(oof["fold"], folds.loc[oof["id"], "fold"])
    table_ = infer.run(cfg)
    test_ids = pd.read_csv(tmp_path / "data" / "test.csv")["id"]
    assert list(table_.columns) == ["id", *columns] and table_["id"].tolist() == test_ids.tolist()

    record = json.loads((fold_dir(cfg, 0) / "scores.json").read_text())
    files = [f"model.{SUFFIX[model]}"]
    if len(targets) > 1:  # one model per output
        files = [f"model.{k}.{SUFFIX[model]}" for k in range(len(targets))]
    assert record["prediction_weights"] == ["features.json", *files]
    assert len(record["best_rounds"]) == len(files)
    assert all((fold_dir(cfg, 0) / name).is_file() for name in files)

    truth = pd.read_csv(labels).set_index("id").loc[table_["id"]]
    y = train.set_index("id").loc[oof["id"]]
    if task == "multiclass":
        for frame in (oof, table_):
            np.testing.assert_allclose(frame[columns].sum(axis=1), 1.0, atol=1e-5)
        assert metrics["cv"]["accuracy"] > 0.85 and metrics["cv"]["log_loss"] < 0.4
        predicted = np.array(["large", "medium", "small"])[table_[columns].to_numpy().argmax(1)]
        assert (predicted == truth["size"].to_numpy()).mean() > 0.8
    elif task == "multilabel":
        assert ((oof[columns] >= 0) & (oof[columns] <= 1)).all().all()
        assert metrics["cv"]["roc_auc"] > 0.95
        assert np.corrcoef(table_["p_large"], truth["large"])[0, 1] > 0.7
    else:
        for target in targets:  # far better than the mean, on OOF and test rows
            spread = y[target].std()
            oof_error = oof[f"pred_{target}"].to_numpy() - y[target].to_numpy()
            test_error = table_[f"pred_{target}"].to_numpy() - truth[target].to_numpy()
            oof_rmse, test_rmse = np.sqrt(np.mean(oof_error**2)), np.sqrt(np.mean(test_error**2))
            assert oof_rmse < 0.5 * spread and test_rmse < 0.5 * spread, target


def test_xgboost_importance_is_the_gain_of_the_rounds_it_keeps(tmp_path):
    """XGBoost keeps training past its best round to see that it is the best: the gain of the
    features (importance.parquet) is that of the rounds the model predicts with."""
    cfg, _, _ = _trained(tmp_path, "multiclass", ["size"], "xgboost", "train.folds=[0]")
    record = json.loads((fold_dir(cfg, 0) / "scores.json").read_text())
    model = xgboost.Booster()
    model.load_model(str(fold_dir(cfg, 0) / "model.xgb.json"))
    kept = record["best_rounds"][0]
    assert kept < model.num_boosted_rounds()  # it early-stopped
    gains = model[:kept].get_score(importance_type="total_gain")
    importance = pd.read_parquet(fold_dir(cfg, 0) / "importance.parquet")
    spec = json.loads((fold_dir(cfg, 0) / "features.json").read_text())
    expected = [gains.get(f"f{i}", 0.0) for i in range(len(spec["columns"]))]
    np.testing.assert_allclose(importance["gain"], expected, rtol=1e-6)


def _learner(root, model, task, targets, rows=120):
    """A fold's learner, the table's rows and their encoded targets (no files written)."""
    train, _ = table(rows, 10)
    cfg = table_cfg(root, task=task, targets=targets, model=model)
    task_ = build_task(cfg, train)
    return BoostedLearner(cfg, task_), train, task_.encode_targets(train)


@pytest.mark.parametrize("model", sorted(SUFFIX))
def test_a_class_missing_from_a_fold_s_training_rows_keeps_its_column(tmp_path, model):
    """A rare class can sit in one fold's validation rows alone: the fold still predicts a
    probability for every class (CatBoost sized its output by the classes it saw, and refused
    validation rows of a class it had not seen)."""
    learner, train, y = _learner(tmp_path, model, "multiclass", ["size"])
    train = train.drop(columns=["mean_area", "large"])
    fit_rows = y != 2  # no 'small' row to learn from
    folder = tmp_path / "fold"
    fitted = learner.fit(
        train[fit_rows], y[fit_rows], train[~fit_rows], y[~fit_rows], folder, "train.csv"
    )
    assert fitted.valid.shape == (int((~fit_rows).sum()), 3)
    np.testing.assert_allclose(fitted.valid.sum(axis=1), 1.0, atol=1e-5)
    assert fitted.valid[:, 2].max() < 0.05  # an unseen class is unlikely, not another's column


def test_catboost_names_a_target_constant_in_a_fold_before_fitting(tmp_path):
    learner, train, y = _learner(tmp_path, "catboost", "multilabel", ["malignant", "large"])
    train = train.drop(columns=["diagnosis", "mean_area", "size"])
    fit_rows = y[:, 1] == 0  # 'large' is 0 in every training row of the fold
    pattern = r"train.csv: fold 2: target 'large' has the single value 0.0 in the fold's"
    with pytest.raises(DataError, match=pattern):
        learner.fit(
            train[fit_rows], y[fit_rows], train[~fit_rows], y[~fit_rows], tmp_path, "train.csv", 2
        )
    assert not (tmp_path / "features.json").exists()


def _rounds(path) -> int:
    if path.name.endswith("lgb.txt"):
        return lightgbm.Booster(model_file=str(path)).num_trees()
    if path.name.endswith("xgb.json"):
        model = xgboost.Booster()
        model.load_model(str(path))
        return model.num_boosted_rounds()
    model = catboost.CatBoost()
    model.load_model(str(path), format="json")
    return model.tree_count_


@pytest.mark.parametrize("model", sorted(SUFFIX))
def test_a_full_fit_trains_every_round_on_every_row_and_predicts(tmp_path, model):
    write_table_competition(tmp_path, n_rows=150)
    cfg = table_cfg(tmp_path, "train.folds=[-1]", "tabular.rounds=40", model=model)
    write_table_folds(cfg)
    metrics = train_stage.run(cfg)
    assert "cv" not in metrics and metrics["folds"] == {str(FULL_FIT): {}}
    folder = fold_dir(cfg, FULL_FIT)
    record = json.loads((folder / "scores.json").read_text())
    assert record["best_rounds"] == [40] and record["scores"] == {}
    assert _rounds(folder / f"model.{SUFFIX[model]}") == 40
    assert not (folder / "oof.parquet").exists()
    assert not (experiment_dir(cfg) / "oof.parquet").exists()
    table_ = infer.run(cfg)
    assert len(table_) == 60 and table_["p_malignant"].between(0, 1).all()
    assert table_["p_malignant"].std() > 0.1  # it learnt something


@pytest.mark.parametrize("model", sorted(SUFFIX))
def test_without_early_stopping_a_fold_keeps_every_round(tmp_path, model):
    """early_stopping 0: nothing is chosen on the validation rows (sanity and adversarial rely
    on it), so every round is kept even when a fold has validation rows."""
    write_table_competition(tmp_path, n_rows=150)
    cfg = table_cfg(
        tmp_path, "train.folds=[0]", "tabular.rounds=300", "tabular.early_stopping=0", model=model
    )
    write_table_folds(cfg)
    train_stage.run(cfg)
    folder = fold_dir(cfg, 0)
    assert json.loads((folder / "scores.json").read_text())["best_rounds"] == [300]
    assert _rounds(folder / f"model.{SUFFIX[model]}") == 300


@pytest.mark.parametrize("model", sorted(SUFFIX))
def test_the_same_config_gives_the_same_bits(tmp_path, model):
    """Seeded: a second run writes the same OOF file and the same model file."""
    outputs = []
    write_table_competition(tmp_path, n_rows=120)
    for run in ("a", "b"):
        cfg = table_cfg(
            tmp_path,
            "train.folds=[0]",
            "tabular.rounds=40",
            f"competition.outputs_dir={tmp_path / run}",
            model=model,
        )
        if run == "a":
            write_table_folds(cfg)
        train_stage.run(cfg)
        outputs.append(experiment_dir(cfg))
    first, second = ((o / "oof.parquet").read_bytes() for o in outputs)
    assert first == second
    name = f"fold0/model.{SUFFIX[model]}"
    assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes()
