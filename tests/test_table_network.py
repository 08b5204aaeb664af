"""The table MLP (tabular.model: mlp): trained by medalist's loop on inputs each fold fits on its
own training rows, predicting OOF and test rows through the same saved files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from medalist.errors import ConfigError
from medalist.layout import fold_dir
from medalist.modalities.tabular.network import NetworkLearner, Scaling, embedding_size
from medalist.prediction import infer
from medalist.tasks import build_task
from medalist.training import stage as train_stage
from support.tables import table_cfg, write_table_competition, write_table_folds

MLP = ("tabular.model=mlp", "tabular.hidden=[32]", "train.epochs=3", "train.batch_size=32")


def tables_cfg(root, *extra):
    """The table's config without tabular.params (a GBDT's thread count means nothing here)."""
    return table_cfg(root, *extra, threads=None)


def _project(tmp_path, *extra):
    write_table_competition(tmp_path)
    cfg = tables_cfg(tmp_path, *MLP, "train.experiment=mlp", *extra)
    write_table_folds(cfg)
    return cfg


def test_the_mlp_trains_folds_and_predicts_oof_and_test_from_its_files(tmp_path):
    cfg = _project(tmp_path, "train.folds=[0]")
    metrics = train_stage.run(cfg)
    assert metrics["cv"]["roc_auc"] > 0.9
    folder = fold_dir(cfg, 0)
    record = json.loads((folder / "scores.json").read_text())
    assert record["learner"] == "mlp"
    assert record["prediction_weights"] == ["features.json", "scaling.json", "model.safetensors"]
    log = pd.read_parquet(folder / "log.parquet")
    assert list(log["epoch"]) == [0, 1, 2] and set(log["fold"]) == {0}
    assert not list(folder.glob("checkpoint*"))  # the fold is complete: no resumable state left

    train = pd.read_csv(tmp_path / "data" / "train.csv")
    oof = pd.read_parquet(folder / "oof.parquet")
    rows = train.set_index("id").loc[oof["id"]].reset_index()
    paths = [folder / name for name in record["prediction_weights"]]
    again = NetworkLearner(cfg, build_task(cfg, train)).predict(rows, paths, "train.csv")
    np.testing.assert_array_equal(again[:, 0], oof["p_malignant"].to_numpy())

    table = infer.run(cfg)
    assert table["p_malignant"].between(0, 1).all() and len(table) == 60


def test_each_fold_fits_its_inputs_on_its_training_rows_only(tmp_path):
    cfg = _project(tmp_path, "train.folds=[0]")
    folds = pd.read_csv(tmp_path / "folds" / "folds.csv")
    train = pd.read_csv(tmp_path / "data" / "train.csv").merge(folds, on="id")
    # A category only the validation rows have, and a value that would move the mean.
    valid = train["fold"] == 0
    train.loc[valid, "shade"] = "violet"
    train.loc[valid, "mean_texture"] = 1e6
    train.drop(columns="fold").to_csv(tmp_path / "data" / "train.csv", index=False)
    train_stage.run(cfg)
    folder = fold_dir(cfg, 0)
    spec = json.loads((folder / "features.json").read_text())
    assert "violet" not in spec["categories"]["shade"]
    scaling = Scaling.load(folder / "scaling.json")
    numeric = [c for c in spec["columns"] if c not in spec["categories"]]
    position = numeric.index("mean_texture")
    expected = train.loc[~valid, "mean_texture"].mean()
    assert scaling.mean[position] == pytest.approx(expected)
    # mean_radius has missing values: an indicator; the others none.
    assert [numeric[i] for i in scaling.indicators] == ["mean_radius"]


def test_ema_weights_predict_when_ema_is_on_and_the_trained_weights_are_kept(tmp_path):
    cfg = _project(tmp_path, "train.folds=[0]", "tricks.ema.enabled=true", "tricks.ema.decay=0.9")
    train_stage.run(cfg)
    folder = fold_dir(cfg, 0)
    record = json.loads((folder / "scores.json").read_text())
    assert record["prediction_weights"][-1] == "ema.safetensors"
    ema, model = load_file(folder / "ema.safetensors"), load_file(folder / "model.safetensors")
    assert ema.keys() == model.keys()
    assert any(not np.array_equal(ema[k].numpy(), model[k].numpy()) for k in ema)


def test_a_multiclass_mlp_gives_probabilities_per_class(tmp_path):
    write_table_competition(tmp_path)
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    train["size"] = pd.qcut(train.pop("mean_area"), 3, labels=["s", "m", "l"]).astype(str)
    train.drop(columns="diagnosis").to_csv(tmp_path / "data" / "train.csv", index=False)
    test = pd.read_csv(tmp_path / "data" / "test.csv").drop(columns="mean_area")
    test.to_csv(tmp_path / "data" / "test.csv", index=False)
    cfg = tables_cfg(
        tmp_path,
        *MLP,
        "competition.target_columns=[size]",
        "task.type=multiclass",
        "train.folds=[0]",
    )
    write_table_folds(cfg)
    train_stage.run(cfg)
    oof = pd.read_parquet(fold_dir(cfg, 0) / "oof.parquet")
    probs = oof[["p_l", "p_m", "p_s"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-5)


def test_a_boosted_model_refuses_tricks_and_the_mlp_takes_them(tmp_path):
    with pytest.raises(ConfigError, match="tricks.ema.enabled.*lightgbm"):
        tables_cfg(tmp_path, "tricks.ema.enabled=true")
    assert tables_cfg(tmp_path, *MLP, "tricks.ema.enabled=true").tricks.ema.enabled
    with pytest.raises(ConfigError, match="tricks.mix"):
        tables_cfg(tmp_path, *MLP, "tricks.mix.enabled=true")
    with pytest.raises(ConfigError, match="tabular.hidden"):
        tables_cfg(tmp_path, "tabular.hidden=[0]")


def test_embedding_widths_grow_slowly_with_the_categories():
    assert [embedding_size(n) for n in (2, 10, 1000, 10**6)] == [2, 6, 64, 64]
