"""The linear member (tabular.model: linear): TF-IDF of text columns and the other features,
logistic or ridge regression, fitted on each fold's training rows, saved as one JSON file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medalist.config import resolve_config
from medalist.demo.text import docstring_corpus
from medalist.errors import ConfigError, DataError
from medalist.layout import fold_dir
from medalist.modalities.tabular import fold_learner
from medalist.modalities.tabular.linear import MODEL_FILE, Encoder, LinearLearner
from medalist.prediction import infer
from medalist.tasks import build_task
from medalist.training import stage as train_stage
from support.tables import table_cfg, write_table_competition, write_table_folds

LIBRARIES = {"numpy": ["numpy"], "pandas": ["pandas"], "torch": ["torch", "torch.nn"]}


def tables_cfg(root, *extra):
    """The table's config without tabular.params (a GBDT's thread count means nothing here)."""
    return table_cfg(root, *extra, threads=None)


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    data = docstring_corpus(per_library=40, seed=0, libraries=LIBRARIES)
    return data.assign(id=[f"d{i}" for i in range(len(data))])


def _text_project(root, corpus, *extra):
    (root / "data").mkdir(parents=True)
    train, test = corpus.iloc[:90], corpus.iloc[90:]
    inputs = ["id", "text", *(["length"] if "length" in corpus else [])]
    train[[*inputs, "library"]].to_csv(root / "data" / "train.csv", index=False)
    test[inputs].to_csv(root / "data" / "test.csv", index=False)
    sample = pd.DataFrame({"id": test["id"], "library": "numpy"})
    sample.to_csv(root / "data" / "sample_submission.csv", index=False)
    cfg = tables_cfg(
        root,
        "competition.target_columns=[library]",
        "task.type=multiclass",
        "tabular.model=linear",
        "tabular.text_columns=[text]",
        "tabular.tfidf.min_df=1",
        "train.experiment=tfidf",
        *extra,
    )
    write_table_folds(cfg)
    return cfg, test


def test_tfidf_and_logistic_regression_classify_text_and_predict_from_json(tmp_path, corpus):
    cfg, test = _text_project(tmp_path, corpus)
    metrics = train_stage.run(cfg)
    assert metrics["complete"] and metrics["cv"]["accuracy"] > 0.6  # 3 classes: chance 0.33
    folder = fold_dir(cfg, 0)
    record = json.loads((folder / "scores.json").read_text())
    assert record["learner"] == "linear" and record["prediction_weights"] == [MODEL_FILE]
    saved = json.loads((folder / MODEL_FILE).read_text())  # JSON: nothing to unpickle
    assert len(saved["encoder"]["vectorizers"]) == 2  # words and characters
    assert np.asarray(saved["coef"]).shape[0] == 3

    train = pd.read_csv(tmp_path / "data" / "train.csv")
    oof = pd.read_parquet(folder / "oof.parquet")
    rows = train.set_index("id").loc[oof["id"]].reset_index()
    learner = LinearLearner(cfg, build_task(cfg, train))
    again = learner.predict(rows, [folder / MODEL_FILE], "train.csv")
    np.testing.assert_array_equal(again, oof[["p_numpy", "p_pandas", "p_torch"]].to_numpy())

    table = infer.run(cfg)
    predicted = table[["p_numpy", "p_pandas", "p_torch"]].to_numpy().argmax(axis=1)
    truth = test["library"].map({"numpy": 0, "pandas": 1, "torch": 2}).to_numpy()
    assert (predicted == truth).mean() > 0.6


def test_the_vectorizers_rebuilt_from_json_transform_as_the_fitted_ones(tmp_path, corpus):
    cfg = resolve_config(
        overrides=[
            "modality=tabular",
            "competition.target_columns=[library]",
            "tabular.model=linear",
            "tabular.text_columns=[text]",
        ]
    )
    frame = corpus[["id", "text", "library"]]
    fitted = Encoder.fit(cfg, frame.iloc[:80], "train.csv")
    rebuilt = Encoder.from_dict(cfg, json.loads(json.dumps(fitted.to_dict())))
    a = fitted.transform(frame.iloc[80:], "test.csv")
    b = rebuilt.transform(frame.iloc[80:], "test.csv")
    assert a.shape == b.shape and (a != b).nnz == 0


def test_the_vocabulary_comes_from_the_folds_training_rows_only(tmp_path, corpus):
    corpus = corpus.copy()
    folds_first, _ = _text_project(tmp_path / "probe", corpus)
    folds = pd.read_csv(tmp_path / "probe" / "folds" / "folds.csv")
    in_fold0 = set(folds.loc[folds["fold"] == 0, "id"])
    corpus["text"] = [
        f"{text} zyzzyvaword" if row in in_fold0 else f"{text} qwertyword"
        for row, text in zip(corpus["id"], corpus["text"], strict=True)
    ]
    cfg, _ = _text_project(tmp_path / "real", corpus, "train.folds=[0]")
    train_stage.run(cfg)
    saved = json.loads((fold_dir(cfg, 0) / MODEL_FILE).read_text())
    words = saved["encoder"]["vectorizers"][0]["vocabulary"]
    assert "zyzzyvaword" not in words and "qwertyword" in words


@pytest.mark.parametrize("model", ["lightgbm", "xgboost"])
def test_a_gbdt_learns_from_the_tfidf_of_text_beside_other_features(tmp_path, corpus, model):
    corpus = corpus.assign(length=corpus["text"].str.len())  # an ordinary feature beside the text
    threads = {"lightgbm": "num_threads", "xgboost": "nthread"}[model]
    cfg, test = _text_project(
        tmp_path,
        corpus,
        f"tabular.model={model}",
        f"tabular.params={{{threads}: 1}}",
        "tabular.rounds=60",
        "tabular.early_stopping=0",
        f"train.experiment=tfidf_{model}",
    )
    metrics = train_stage.run(cfg)
    assert metrics["complete"] and metrics["cv"]["accuracy"] > 0.5  # 3 classes: chance 0.33
    folder = fold_dir(cfg, 0)
    record = json.loads((folder / "scores.json").read_text())
    assert record["prediction_weights"][:2] == ["features.json", "text.json"]
    importance = pd.read_parquet(folder / "importance.parquet").set_index("feature")["gain"]
    assert list(importance.index) == ["length", "text (words)", "text (characters)"]
    assert importance["text (words)"] + importance["text (characters)"] > importance["length"]

    train = pd.read_csv(tmp_path / "data" / "train.csv")
    oof = pd.read_parquet(folder / "oof.parquet")
    rows = train.set_index("id").loc[oof["id"]].reset_index()
    again = fold_learner(cfg, build_task(cfg, train)).predict(
        rows, [folder / name for name in record["prediction_weights"]], "train.csv"
    )
    np.testing.assert_array_equal(again, oof[["p_numpy", "p_pandas", "p_torch"]].to_numpy())
    assert len(infer.run(cfg)) == len(test)


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_a_linear_model_on_a_table_without_text(tmp_path, task):
    write_table_competition(tmp_path)
    extra = ["tabular.model=linear", f"train.experiment=linear_{task}"]
    if task == "regression":
        extra += [
            "competition.target_columns=[mean_area]",
            "task.type=regression",
            "tabular.exclude=[diagnosis]",
            "folds.scheme=quantile",
        ]
        test = pd.read_csv(tmp_path / "data" / "test.csv").drop(columns="mean_area")
        test.to_csv(tmp_path / "data" / "test.csv", index=False)
    cfg = tables_cfg(tmp_path, *extra)
    write_table_folds(cfg)
    metrics = train_stage.run(cfg)
    main = "roc_auc" if task == "binary" else "rmse"
    assert metrics["complete"]
    if task == "binary":
        assert metrics["cv"][main] > 0.95
    else:  # far better than predicting the mean
        areas = pd.read_csv(tmp_path / "data" / "train.csv")["mean_area"]
        assert metrics["cv"][main] < 0.5 * areas.std()
    assert len(infer.run(cfg)) == 60


def test_text_columns_are_refused_where_they_cannot_work(tmp_path):
    for model in ("catboost", "mlp"):
        with pytest.raises(ConfigError, match=f"tabular.text_columns: .*not {model}"):
            tables_cfg(tmp_path, f"tabular.model={model}", "tabular.text_columns=[text]")
    with pytest.raises(ConfigError, match=r"tabular.features: \['text'\] are tabular.text_columns"):
        tables_cfg(
            tmp_path,
            "tabular.model=linear",
            "tabular.text_columns=[text]",
            "tabular.features=[text,mean_radius]",
        )
    with pytest.raises(ConfigError, match="tabular.text_columns: 'id' is the id column"):
        tables_cfg(tmp_path, "tabular.model=linear", "tabular.text_columns=[id]")
    with pytest.raises(ConfigError, match="tabular.tfidf.word_ngrams"):
        tables_cfg(tmp_path, "tabular.model=linear", "tabular.tfidf.word_ngrams=[2,1]")


def test_a_missing_text_column_is_named(tmp_path):
    write_table_competition(tmp_path)
    cfg = tables_cfg(tmp_path, "tabular.model=linear", "tabular.text_columns=[notes]")
    write_table_folds(cfg)
    with pytest.raises(DataError, match="text column 'notes'.*not found"):
        train_stage.run(cfg)
