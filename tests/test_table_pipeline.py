"""Fold-safe feature engineering (tabular.pipeline): fitted on a fold's training rows, target
encodings out of fold there, repeated from pipeline.json on every other row."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medalist.config import resolve_config
from medalist.errors import ConfigError, DataError
from medalist.layout import fold_dir
from medalist.modalities.tabular import fold_learner
from medalist.modalities.tabular.pipeline import Pipeline
from medalist.prediction import infer
from medalist.tasks import build_task
from medalist.training import stage as train_stage
from support.tables import table_cfg, write_table_competition, write_table_folds

STEPS = "tabular.pipeline=[{name: target_encoding, columns: [city], smoothing: 2}, {name: count}]"


def _frame(n=200, seed=0):
    rng = np.random.default_rng(seed)
    city = rng.choice([f"c{i}" for i in range(10)], n)
    rate = np.array([int(c[1:]) / 10 for c in city])
    target = (rng.random(n) < rate).astype(int)
    return pd.DataFrame({"id": np.arange(n), "city": city, "x": rng.normal(size=n)}), target


def _cfg(*extra):
    return resolve_config(
        overrides=[
            "modality=tabular",
            "competition.target_columns=[y]",
            "task.type=binary",
            "task.classes=[0, 1]",
            *extra,
        ]
    )


def _task(cfg, target):
    return build_task(cfg, pd.DataFrame({"y": target}))


def test_a_training_row_is_encoded_without_its_own_target():
    frame, target = _frame()
    frame["ticket"] = [f"t{i}" for i in range(len(frame))]  # every row its own category
    cfg = _cfg("tabular.pipeline=[{name: target_encoding, columns: [ticket]}]")
    pipeline, encoded = Pipeline.fit(cfg, _task(cfg, target), frame, target, "train.csv")
    # Out of fold, a category no other row has gets the prior of the other rows, never its
    # own target: the encoding carries no information about the row's label.
    values = encoded["ticket.te"].to_numpy()
    assert np.corrcoef(values, target)[0, 1] < 0.5
    assert np.all(np.abs(values - target.mean()) < 0.05)


def test_other_rows_get_the_encoding_of_all_the_training_rows_and_the_prior_when_unseen():
    frame, target = _frame()
    cfg = _cfg(STEPS)
    pipeline, _ = Pipeline.fit(cfg, _task(cfg, target), frame, target, "train.csv")
    other = pd.DataFrame({"id": [1, 2, 3], "city": ["c3", "zzz", None], "x": [0.0, 0.0, 0.0]})
    applied = pipeline.apply(other)
    in_c3 = frame["city"] == "c3"
    prior = target.mean()
    expected = (target[in_c3].sum() + 2 * prior) / (in_c3.sum() + 2)
    assert applied["city.te"].tolist() == pytest.approx([expected, prior, prior])
    assert applied["city.count"].tolist() == [in_c3.sum(), 0, 0]
    assert pipeline.added() == ["city.te", "city.count"]
    # The fitted state is plain JSON and gives the same columns back.
    again = Pipeline(json.loads(json.dumps(pipeline.steps))).apply(other)
    pd.testing.assert_frame_equal(again, applied)


def test_validation_rows_do_not_move_the_encoding():
    frame, target = _frame()
    cfg = _cfg(STEPS)
    training = frame.iloc[:150]
    first, _ = Pipeline.fit(cfg, _task(cfg, target), training, target[:150], "train.csv")
    flipped = target.copy()
    flipped[150:] = 1 - flipped[150:]  # other labels on the rows the fold validates on
    second, _ = Pipeline.fit(cfg, _task(cfg, target), training, flipped[:150], "train.csv")
    held_out = frame.iloc[150:]
    pd.testing.assert_frame_equal(first.apply(held_out), second.apply(held_out))


def test_multiclass_targets_get_one_encoding_per_class():
    frame, target = _frame()
    cfg = _cfg(
        "task.type=multiclass",
        "task.classes=[a, b, c]",
        "tabular.pipeline=[{name: target_encoding, columns: [city]}]",
    )
    labels = target + (frame["x"].to_numpy() > 1)
    task = build_task(cfg, pd.DataFrame({"y": np.array(["a", "b", "c"])[labels]}))
    _, encoded = Pipeline.fit(cfg, task, frame, labels, "train.csv")
    columns = ["city.te_a", "city.te_b", "city.te_c"]
    np.testing.assert_allclose(encoded[columns].sum(axis=1), 1.0)


def test_a_fold_saves_its_pipeline_and_predicts_through_it(tmp_path):
    write_table_competition(tmp_path)
    steps = (
        "tabular.pipeline=[{name: target_encoding, columns: [shade]}, "
        "{name: frequency, columns: [shade]}, {name: missing_indicators}]"
    )
    cfg = table_cfg(tmp_path, steps, "train.experiment=engineered")
    write_table_folds(cfg)
    metrics = train_stage.run(cfg)
    assert metrics["complete"] and metrics["cv"]["roc_auc"] > 0.9
    folder = fold_dir(cfg, 0)
    record = json.loads((folder / "scores.json").read_text())
    assert record["prediction_weights"] == ["pipeline.json", "features.json", "model.lgb.txt"]
    spec = json.loads((folder / "features.json").read_text())
    for added in ("shade.te", "shade.frequency", "mean_radius.missing"):
        assert added in spec["columns"]

    train = pd.read_csv(tmp_path / "data" / "train.csv")
    oof = pd.read_parquet(folder / "oof.parquet")
    rows = train.set_index("id").loc[oof["id"]].reset_index()
    learner = fold_learner(cfg, build_task(cfg, train))
    paths = [folder / name for name in record["prediction_weights"]]
    again = learner.predict(rows, paths, "train.csv")
    np.testing.assert_array_equal(again[:, 0], oof["p_malignant"].to_numpy())
    assert len(infer.run(cfg)) == 60


def test_pipeline_mistakes_are_named(tmp_path):
    with pytest.raises(ConfigError, match="tabular.pipeline"):
        _cfg("tabular.pipeline=[{name: hashing}]")
    write_table_competition(tmp_path)
    cfg = table_cfg(tmp_path, "tabular.pipeline=[{name: count, columns: [colour]}]")
    write_table_folds(cfg)
    with pytest.raises(DataError, match=r"tabular.pipeline count: no column\(s\) \['colour'\]"):
        train_stage.run(cfg)
