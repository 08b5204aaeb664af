"""Adversarial validation (``medalist adversarial``): the experiment's model trained to tell
test rows from train rows.

It must find a shift planted in one feature of the test set and name that feature, stay at chance
on a random split, never read the targets or a column the test set lacks, leave the real
experiment's files alone, and run an image project whose train and test images live in different
folders.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalist.cli import main
from medalist.honest import adversarial
from medalist.reporting import report
from support.configs import TINY
from support.tables import table_cfg, write_table_competition, write_table_folds

FAST = ("adversarial.rounds=50",)  # LightGBM rounds per fold (300 rows, one thread)


def _folder(root: Path, experiment: str = "exp001") -> Path:
    return root / "outputs" / "adversarial" / experiment


def _auc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row of ``scores`` (continuous: no ties)."""
    ranks = scores.argsort(axis=1).argsort(axis=1) + 1
    n1 = labels.sum()
    n0 = len(labels) - n1
    return (ranks[:, labels == 1].sum(axis=1) - n1 * (n1 + 1) / 2) / (n0 * n1)


def test_the_standard_error_is_the_auc_s_spread_without_a_shift():
    labels = np.r_[np.zeros(40, int), np.ones(10, int)]
    draws = _auc(np.random.default_rng(0).random((4000, 50)), labels)
    assert draws.mean() == pytest.approx(0.5, abs=0.005)
    assert draws.std() == pytest.approx(adversarial.null_standard_error(40, 10), rel=0.05)


def test_the_verdict_needs_both_significance_and_size():
    se = 0.01
    assert adversarial.verdict(0.52, se, 3.0, 0.6) == "no shift"  # 2 standard errors
    assert adversarial.verdict(0.30, se, 3.0, 0.6) == "no shift"  # below chance: not a shift
    assert adversarial.verdict(0.55, se, 3.0, 0.6) == "slight shift"
    assert adversarial.verdict(0.65, se, 3.0, 0.6) == "shift"
    assert adversarial.verdict(0.75, 0.1, 3.0, 0.6) == "no shift"  # large, but a few rows


def test_density_weights_are_odds_of_mean_one_clipped():
    assert np.allclose(adversarial.density_weights(np.full(4, 0.3), 10.0), 1.0)
    p = np.array([0.1, 0.2, 0.5, 0.999])
    weights = adversarial.density_weights(p, 3.0)
    odds = p / (1 - p)
    assert weights[3] == 3.0  # clipped
    assert np.allclose(weights[:3], odds[:3] / odds.mean())


def test_the_most_test_like_share_is_flagged():
    p = np.array([0.1, 0.9, 0.5, 0.9, 0.2])
    assert list(adversarial.flag_test_like(p, 0.4)) == [0, 1, 0, 1, 0]
    assert list(adversarial.flag_test_like(p, 0.01)) == [0, 1, 0, 0, 0]  # one; ties: row order


def test_the_run_s_folds_are_stratified_and_keep_groups_whole():
    is_test = np.r_[np.zeros(30, int), np.ones(10, int)]
    fold = adversarial.adversarial_folds(is_test, None, 5, seed=0)
    assert [int(is_test[fold == k].sum()) for k in range(5)] == [2] * 5
    groups = np.r_[np.repeat(np.arange(10), 3).astype(str), np.repeat(list("abcde"), 2)]
    fold = adversarial.adversarial_folds(is_test, groups, 3, seed=0)
    assert pd.Series(fold).groupby(groups).nunique().max() == 1
    assert all(set(is_test[fold == k]) == {0, 1} for k in range(3))


def test_a_shifted_feature_is_found_named_first_and_flags_the_rows_like_it(tmp_path, caplog):
    """The test rows' ``mean_texture`` moved up by two standard deviations: the command says
    shift (exit 0: a measurement), the feature leads the gain, and the train rows flagged test-like
    are those with a high texture."""
    write_table_competition(tmp_path)
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    test_file = tmp_path / "data" / "test.csv"
    test = pd.read_csv(test_file)
    test["mean_texture"] += 2 * train["mean_texture"].std()
    test.to_csv(test_file, index=False)
    config = tmp_path / "exp001.yaml"
    config.write_text(table_cfg(tmp_path, *FAST).to_yaml())
    caplog.set_level(logging.INFO, logger="medalist")
    assert main(["adversarial", "-c", str(config)]) == 0
    folder = _folder(tmp_path)
    result = json.loads((folder / "adversarial.json").read_text())
    assert result["verdict"] == "shift" and result["auc"] > 0.85, result["fold_auc"]
    assert f"ROC AUC {result['auc']:.4f}" in caplog.text and ": shift:" in caplog.text
    assert result["features"][0]["feature"] == "mean_texture"
    assert result["features"][0]["mean_share"] > 0.4
    weights = pd.read_csv(folder / "weights.csv")
    flags = pd.read_csv(folder / "test_like.csv")
    assert list(weights["id"]) == list(flags["id"]) == list(train["id"])
    assert weights["weight"].gt(0).all() and weights["weight"].le(10).all()
    assert flags["test_like"].sum() == round(0.2 * len(train))
    texture = train["mean_texture"]
    assert texture[flags["test_like"] == 1].mean() > texture.mean() + texture.std()
    flagged = flags["test_like"] == 1  # the rows of highest weight: both follow p / (1 - p)
    assert weights["weight"][flagged].min() >= weights["weight"][~flagged].max()
    listed = {row["id"] for row in result["test_like_rows"]}
    assert len(listed) == 20 and listed <= set(flags["id"][flags["test_like"] == 1])
    page = report._adversarial_section(tmp_path / "outputs", "exp001")
    assert "Train versus test of exp001: SHIFT" in page and "mean_texture" in page
    assert report._adversarial_section(tmp_path / "outputs", "other") is None


def test_a_random_split_is_at_chance_and_the_experiment_is_untouched(tmp_path):
    """train.csv and test.csv are a random split; train also has the target and a column the
    test set lacks (each would tell every row apart if the model read it)."""
    write_table_competition(tmp_path)
    train_file = tmp_path / "data" / "train.csv"
    train = pd.read_csv(train_file)
    train["note"] = np.arange(len(train))
    train.to_csv(train_file, index=False)
    cfg = table_cfg(tmp_path, *FAST)
    write_table_folds(cfg)
    folds = {path.name: path.read_bytes() for path in (tmp_path / "folds").iterdir()}
    result = adversarial.run(cfg)
    # Within 3 standard errors of 0.5 (0.042 for 240 train and 60 test rows).
    assert result["verdict"] == "no shift" and abs(result["z"]) < 3, result["auc"]
    assert result["columns_left_out"] == ["note"]
    table = pd.read_csv(_folder(tmp_path) / "data" / "train.csv")
    assert "diagnosis" not in table.columns and "note" not in table.columns
    assert {path.name: path.read_bytes() for path in (tmp_path / "folds").iterdir()} == folds
    assert [path.name for path in (tmp_path / "outputs").iterdir()] == ["adversarial"]


def test_a_rerun_reuses_the_folds_and_changed_data_starts_afresh(tmp_path, caplog):
    write_table_competition(tmp_path)
    cfg = table_cfg(tmp_path, *FAST, "adversarial.n_splits=3")
    adversarial.run(cfg)
    caplog.set_level(logging.INFO, logger="medalist")
    adversarial.run(cfg)
    assert caplog.text.count("complete for this config, not retrained") == 3
    test_file = tmp_path / "data" / "test.csv"
    pd.read_csv(test_file).iloc[:-6].to_csv(test_file, index=False)
    caplog.clear()
    result = adversarial.run(cfg)
    assert "starting afresh" in caplog.text and "not retrained" not in caplog.text
    assert result["n_test"] == 54


def test_an_image_project_reads_train_and_test_images_from_their_folders(tiny_project):
    """The tiny digits project (a random split) with a one-epoch model on folds of its own:
    no project folds needed, none written, no image copied."""
    code = main(["adversarial", "-c", TINY, "adversarial.epochs=1", "adversarial.n_splits=3"])
    assert code == 0
    folder = _folder(tiny_project, "tiny")
    result = json.loads((folder / "adversarial.json").read_text())
    assert (result["n_train"], result["n_test"]) == (120, 30)
    assert result["verdict"] == "no shift" and abs(result["z"]) < 3, result["auc"]
    assert result["features"] is None  # a network: no gain to share
    table = pd.read_csv(folder / "data" / "train.csv")
    paths = table["image"].map(Path)
    assert all(path.is_absolute() and path.is_file() for path in paths)
    folders = {
        label: set(paths[table["is_test"] == label].map(lambda p: p.parent.name))
        for label in (0, 1)
    }
    assert folders == {0: {"train_images"}, 1: {"test_images"}}
    assert not list((tiny_project / "outputs").rglob("*.png"))
    assert not (tiny_project / "folds" / "folds.csv").exists()
    assert not (tiny_project / "outputs" / "tiny").exists()
    assert not (tiny_project / "outputs" / "ledger.csv").exists()
