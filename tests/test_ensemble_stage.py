"""The ensemble stage on a tiny project: artifacts, checks that name the experiment, seeds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from medalist.config.ensemble import EnsembleConfig
from medalist.ensemble.stage import run
from medalist.errors import ConfigError, DataError, FoldsMismatchError
from medalist.folds import assign_folds, build_manifest, write_folds
from support.ensemble_project import (
    add_experiments,
    labels,
    make_project,
    predictions,
    write_experiment,
)

STRENGTHS = {"exp_a": 1.5, "exp_b": 1.0, "exp_c": 0.4}


def ensemble(cfg, members, **extra):
    return run(cfg, EnsembleConfig(experiments=members, submit=False, **extra))


def out_dir(cfg, name="blend") -> Path:
    return Path(cfg.competition.outputs_dir) / "ensemble" / name


@pytest.fixture
def binary(tmp_path):
    cfg = make_project(tmp_path, "binary")
    add_experiments(cfg, STRENGTHS)
    return cfg


@pytest.mark.parametrize("method", ["mean", "weighted", "rank", "logit", "hill_climb", "stack"])
def test_every_method_writes_the_contract(binary, method):
    result = ensemble(binary, list(STRENGTHS), method=method)
    folder = out_dir(binary)
    for name in (
        "weights.json",
        "cv.json",
        "oof.parquet",
        "test.parquet",
        "task.json",
        "config.yaml",
    ):
        assert (folder / name).is_file(), name
    oof, test = pd.read_parquet(folder / "oof.parquet"), pd.read_parquet(folder / "test.parquet")
    assert list(oof.columns) == ["id", "fold", "p_1"] and list(test.columns) == ["id", "p_1"]
    y, fold, train = labels(binary)
    np.testing.assert_array_equal(oof["id"], train["id"])
    np.testing.assert_array_equal(oof["fold"], fold)
    assert len(test) == 30 and oof["p_1"].between(0, 1).all()
    cv = json.loads((folder / "cv.json").read_text())
    assert cv == json.loads(json.dumps(result["cv"]))
    assert set(cv["in_sample"]["folds"]) == {"0", "1", "2", "3"}
    assert "roc_auc" in cv["nested"]["cv"]
    weights = result["weights"]["weights"]
    assert set(weights) == set(STRENGTHS)
    assert all(w >= 0 for w in weights.values()) and sum(weights.values()) == pytest.approx(1)
    if not cv["learns_from_labels"]:
        assert cv["nested"]["cv"] == cv["in_sample"]["cv"]


def test_mean_of_identical_experiments_equals_each(tmp_path):
    cfg = make_project(tmp_path, "multiclass")
    y, fold, _ = labels(cfg)
    oof, test = predictions(cfg, y, 1.0, 1), predictions(cfg, y, 1.0, 2, n=30)
    for name in ("one", "two", "three"):
        write_experiment(cfg, name, oof, test, fold)
    ensemble(cfg, ["one", "two", "three"], method="mean")
    blended = pd.read_parquet(out_dir(cfg) / "oof.parquet")
    np.testing.assert_allclose(blended[["p_ant", "p_bee", "p_cat"]].to_numpy(), oof, atol=1e-12)
    blended_test = pd.read_parquet(out_dir(cfg) / "test.parquet")
    np.testing.assert_allclose(blended_test.iloc[:, 1:].to_numpy(), test, atol=1e-12)


def test_hill_climb_picks_the_dominant_experiment(tmp_path):
    cfg = make_project(tmp_path, "multiclass", n_rows=200)
    add_experiments(cfg, {"strong": 6.0, "weak1": 0.3, "weak2": 0.2})
    result = ensemble(cfg, ["weak1", "strong", "weak2"], method="hill_climb", metric="log_loss")
    assert result["weights"]["weights"] == {"weak1": 0.0, "strong": 1.0, "weak2": 0.0}


def test_regression_blends_pred_columns(tmp_path):
    cfg = make_project(tmp_path, "regression")
    add_experiments(cfg, {"r1": 2.0, "r2": 1.0, "r3": 0.5})
    result = ensemble(cfg, ["r1", "r2", "r3"], method="hill_climb")
    assert result["cv"]["optimised_metric"] == "rmse"
    oof = pd.read_parquet(out_dir(cfg) / "oof.parquet")
    assert list(oof.columns) == ["id", "fold", "pred_target"]
    members = result["cv"]["members"]
    best_single = min(m["cv"]["rmse"] for m in members.values())
    assert result["cv"]["in_sample"]["cv"]["rmse"] <= best_single


def test_seed_group_averages_and_reports_spread(binary):
    y, fold, _ = labels(binary)
    for seed in (1, 2, 3):
        oof = predictions(binary, y, 1.0, 10 + seed)
        write_experiment(
            binary, f"net@s{seed}", oof, predictions(binary, y, 1.0, 20 + seed, n=30), fold
        )
    result = ensemble(binary, ["net@*", "exp_a"], method="mean")
    net = result["cv"]["members"]["net"]
    assert net["n_seeds"] == 3 and len(net["per_seed"]) == 3
    per_seed = [s["roc_auc"] for s in net["per_seed"].values()]
    assert net["seed_mean"]["roc_auc"] == pytest.approx(np.mean(per_seed))
    assert net["seed_std"]["roc_auc"] == pytest.approx(np.std(per_seed))
    assert net["seed_std"]["roc_auc"] > 0
    seeds = [
        pd.read_parquet(Path(binary.competition.outputs_dir) / f"net@s{s}" / "oof.parquet")
        for s in (1, 2, 3)
    ]
    expected = (
        np.mean([s["p_1"] for s in seeds], axis=0)
        + pd.read_parquet(Path(binary.competition.outputs_dir) / "exp_a" / "oof.parquet")["p_1"]
    ) / 2
    np.testing.assert_allclose(pd.read_parquet(out_dir(binary) / "oof.parquet")["p_1"], expected)
    listed = ensemble(
        binary, [["net@s1", "net@s2", "net@s3"], "exp_a"], method="mean", name="listed"
    )
    assert listed["cv"]["members"]["net"]["cv"] == net["cv"]


def test_foreign_folder_with_the_same_folds_is_accepted(binary, tmp_path):
    y, fold, _ = labels(binary)
    foreign = write_experiment(
        binary,
        "x",
        predictions(binary, y, 1.0, 5),
        predictions(binary, y, 1.0, 6, n=30),
        fold,
        config=False,
        folder=tmp_path / "teammate" / "notebook_preds",
    )
    result = ensemble(binary, ["exp_a", str(foreign)], method="weighted")
    assert str(foreign) in result["weights"]["weights"]


def test_ensemble_output_can_be_a_member(binary):
    ensemble(binary, list(STRENGTHS), method="mean", name="level1")
    result = ensemble(binary, ["ensemble/level1", "exp_c"], method="stack", name="level2")
    assert set(result["weights"]["weights"]) == {"ensemble/level1", "exp_c"}


def test_submission_written_from_the_blend(binary):
    result = run(binary, EnsembleConfig(experiments=list(STRENGTHS), method="mean", name="final"))
    submission = pd.read_csv(result["submission"])
    test = pd.read_parquet(out_dir(binary, "final") / "test.parquet")
    assert Path(result["submission"]).name == "final.csv"
    np.testing.assert_allclose(submission["target"], test["p_1"])


# --- refusals, each naming the experiment --------------------------------------------------


def test_empty_list_is_refused(binary):
    with pytest.raises(ConfigError, match="empty"):
        ensemble(binary, [])


def test_different_ids_name_the_experiment_and_count(binary):
    oof_file = Path(binary.competition.outputs_dir) / "exp_b" / "oof.parquet"
    pd.read_parquet(oof_file).iloc[3:].to_parquet(oof_file)
    with pytest.raises(DataError, match=r"experiment 'exp_b'.*3 missing"):
        ensemble(binary, list(STRENGTHS))
    assert not out_dir(binary).exists()  # refused before any work


def test_different_test_ids_name_the_experiment(binary):
    test_file = Path(binary.competition.outputs_dir) / "exp_c" / "test.parquet"
    table = pd.read_parquet(test_file)
    table.loc[:1, "id"] = [9998, 9999]
    table.to_parquet(test_file)
    with pytest.raises(DataError, match=r"experiment 'exp_c'.*test ids differ.*2 missing.*2 extra"):
        ensemble(binary, list(STRENGTHS))


def test_different_columns_name_the_experiment(binary):
    oof_file = Path(binary.competition.outputs_dir) / "exp_a" / "oof.parquet"
    pd.read_parquet(oof_file).rename(columns={"p_1": "p_yes"}).to_parquet(oof_file)
    with pytest.raises(DataError, match=r"experiment 'exp_a'.*columns \['p_yes'\]"):
        ensemble(binary, list(STRENGTHS))


def test_nan_names_the_experiment(binary):
    oof_file = Path(binary.competition.outputs_dir) / "exp_b" / "oof.parquet"
    table = pd.read_parquet(oof_file)
    table.loc[7, "p_1"] = np.nan
    table.to_parquet(oof_file)
    with pytest.raises(DataError, match=r"experiment 'exp_b'.*1 NaN"):
        ensemble(binary, list(STRENGTHS))


def test_other_folds_manifest_is_refused(binary, tmp_path):
    """An experiment whose config points at folds made with another seed."""
    train = pd.read_csv(Path(binary.competition.data_dir) / "train.csv")
    params = {
        "id_column": "id",
        "target_columns": ["target"],
        "scheme": "stratified",
        "n_splits": 4,
        "random_state": 7,
    }
    other = assign_folds(train, **params)
    write_folds(other, build_manifest(train, other, **params), tmp_path / "other_folds")
    config_file = Path(binary.competition.outputs_dir) / "exp_c" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["competition"]["folds_dir"] = str(tmp_path / "other_folds")
    config_file.write_text(yaml.safe_dump(config))
    with pytest.raises(FoldsMismatchError, match=r"experiment 'exp_c'.*other folds"):
        ensemble(binary, list(STRENGTHS))


@pytest.mark.parametrize("method", ["stack", "mean"])
def test_oof_made_with_other_folds_is_refused(binary, tmp_path, method):
    y, fold, _ = labels(binary)
    shuffled = np.random.default_rng(0).permutation(fold)
    foreign = write_experiment(
        binary,
        "x",
        predictions(binary, y, 1.0, 5),
        predictions(binary, y, 1.0, 6, n=30),
        shuffled,
        config=False,
        folder=tmp_path / "teammate",
    )
    with pytest.raises(FoldsMismatchError, match=r"teammate'.*fold of \d+ OOF row"):
        ensemble(binary, ["exp_a", str(foreign)], method=method)


def test_stacking_refuses_a_table_that_is_not_out_of_fold(binary, tmp_path):
    """Full-fit predictions of the train rows have no fold column: not OOF, refused."""
    y, _, _ = labels(binary)
    in_sample = write_experiment(
        binary,
        "x",
        predictions(binary, y, 1.0, 5),
        predictions(binary, y, 1.0, 6, n=30),
        None,
        config=False,
        folder=tmp_path / "full_fit",
    )
    with pytest.raises(DataError, match=r"full_fit'.*not an out-of-fold table"):
        ensemble(binary, ["exp_a", str(in_sample)], method="stack")


def test_missing_files_name_the_experiment_and_stage(binary):
    (Path(binary.competition.outputs_dir) / "exp_b" / "test.parquet").unlink()
    with pytest.raises(DataError, match=r"experiment 'exp_b'.*medalist infer"):
        ensemble(binary, list(STRENGTHS))
    shutil.rmtree(Path(binary.competition.outputs_dir) / "exp_c")
    with pytest.raises(DataError, match=r"experiment 'exp_c'.*medalist train"):
        ensemble(binary, ["exp_c"])


def test_rank_refused_for_a_calibration_metric(binary):
    with pytest.raises(ConfigError, match="rank"):
        ensemble(binary, list(STRENGTHS), method="rank", metric="log_loss")
