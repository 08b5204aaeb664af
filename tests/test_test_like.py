"""Test-like validation (``folds.test_like``): the rows ``medalist adversarial`` flags as most like
the test set are spread evenly over the folds, recorded in the fold files, and every experiment,
seed average and blend also scores its CV on them alone.

The chain runs for real: a table whose test set is shifted, ``medalist adversarial``, then the
folds made from its ``test_like.csv``, a LightGBM experiment, a blend, the ledger and the report.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medalist import folds
from medalist.cli import main
from medalist.errors import ConfigError, DataError, FoldsMismatchError
from medalist.reporting import ledger_view, report
from support.tables import table_cfg, write_table_competition

ADVERSARIAL = ("adversarial.rounds=50",)  # LightGBM rounds per fold (one thread)


def _train(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "id": [f"r{i}" for i in range(n)],
            "label": rng.choice(["a", "b", "c"], n),
            "value": rng.normal(size=n),
            "group": rng.integers(0, 60, n),
            "x": rng.integers(0, 2, n),
            "y": rng.integers(0, 2, n),
        }
    )


@pytest.mark.parametrize(
    ("scheme", "targets", "extra"),
    [
        ("kfold", ["label"], {}),
        ("stratified", ["label"], {}),
        ("quantile", ["value"], {}),
        ("multilabel_stratified", ["x", "y"], {}),
        ("group", ["label"], {"group_column": "group"}),
    ],
)
def test_flagged_rows_are_spread_evenly_and_the_scheme_still_holds(scheme, targets, extra):
    train = _train()
    flags = np.zeros(len(train), dtype=int)
    flags[np.random.default_rng(1).choice(len(train), 37, replace=False)] = 1
    params = dict(id_column="id", target_columns=targets, scheme=scheme, n_splits=5)
    made = folds.assign_folds(train, **params, random_state=0, **extra, test_like=flags)
    per_fold = np.bincount(made["fold"][made["test_like"] == 1], minlength=5)
    assert list(made["test_like"]) == list(flags)
    # Grouped folds keep groups whole, so they can only come near an even spread.
    assert per_fold.max() - per_fold.min() <= (3 if scheme == "group" else 1), per_fold
    if scheme == "group":
        assert (train.groupby("group")["id"].size() > 0).all()
        assert made.groupby(train["group"])["fold"].nunique().max() == 1
    if scheme == "stratified":  # the labels stay stratified too
        counts = pd.crosstab(made["fold"], train["label"])
        assert (counts.max() - counts.min()).max() <= 2
    manifest = folds.build_manifest(train, made, **params, random_state=0, **extra)
    assert manifest["stratify_columns"][-1] == "test_like"


def _flags_file(tmp_path, train: pd.DataFrame, flags) -> str:
    path = tmp_path / "test_like.csv"
    pd.DataFrame({"id": train["id"], "test_like": flags}).to_csv(path, index=False)
    return str(path)


def test_a_flags_file_for_other_rows_or_values_is_named(tmp_path):
    train = _train(40)
    with pytest.raises(ConfigError, match=r"folds.test_like: .*nothing.csv not found"):
        folds.read_test_like(tmp_path / "nothing.csv", train, "id")
    short = _flags_file(tmp_path, train.iloc[:-1], 0)
    with pytest.raises(DataError, match=r"test_like.csv: made for other train rows .*'r39'"):
        folds.read_test_like(short, train, "id")
    flags = np.zeros(40, dtype=int)
    flags[7] = 2
    with pytest.raises(DataError, match="test_like.csv: row 7: test_like is 2; 0 or 1"):
        folds.read_test_like(_flags_file(tmp_path, train, flags), train, "id")
    shuffled = pd.read_csv(_flags_file(tmp_path, train, np.arange(40) % 2)).sample(frac=1)
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)  # read back in train's order
    assert list(folds.read_test_like(tmp_path / "shuffled.csv", train, "id")) == [0, 1] * 20
    with pytest.raises(DataError, match=r"folds.test_like: 2 of 40 train rows are flagged"):
        folds.assign_folds(
            train, id_column="id", target_columns=["label"], scheme="kfold", n_splits=3,
            random_state=0, test_like=(np.arange(40) < 2).astype(int),
        )  # fmt: skip


@pytest.fixture
def shifted(tmp_path):
    """A table whose test rows have a higher ``mean_texture``, and its adversarial run."""
    write_table_competition(tmp_path, n_rows=300)
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    test = pd.read_csv(tmp_path / "data" / "test.csv")
    test["mean_texture"] += 2 * train["mean_texture"].std()
    test.to_csv(tmp_path / "data" / "test.csv", index=False)
    plain = tmp_path / "plain.yaml"
    plain.write_text(table_cfg(tmp_path, *ADVERSARIAL).to_yaml())
    assert main(["adversarial", "-c", str(plain)]) == 0
    flags = tmp_path / "outputs" / "adversarial" / "exp001" / "test_like.csv"
    config = tmp_path / "exp001.yaml"
    config.write_text(table_cfg(tmp_path, f"folds.test_like={flags}").to_yaml())
    return tmp_path, config, flags


def test_the_adversarial_flags_make_folds_and_every_score_has_its_test_like_cv(shifted):
    root, config, flags_file = shifted
    assert main(["folds", "-c", str(config)]) == 0
    manifest = json.loads((root / "folds" / "folds.json").read_text())
    written = pd.read_csv(root / "folds" / "folds.csv")
    flags = pd.read_csv(flags_file)
    assert list(written.columns) == ["id", "fold", "test_like"]
    assert list(written["test_like"]) == list(flags["test_like"])
    assert manifest["test_like"]["rows"] == flags["test_like"].sum() == 60
    assert sorted(manifest["test_like"]["per_fold"].values()) == [20, 20, 20]

    assert main(["train", "-c", str(config)]) == 0
    metrics = json.loads((root / "outputs" / "exp001" / "metrics.json").read_text())
    oof = pd.read_parquet(root / "outputs" / "exp001" / "oof.parquet")
    train = pd.read_csv(root / "data" / "train.csv")
    flagged = oof["id"].map(dict(zip(flags["id"], flags["test_like"], strict=True))) == 1
    truth = train.set_index("id").loc[oof["id"], "diagnosis"].eq("malignant").to_numpy()
    expected = roc_auc_score(truth[flagged], oof["p_malignant"][flagged])
    assert metrics["test_like_rows"] == 60
    assert metrics["cv_test_like"]["roc_auc"] == pytest.approx(expected, abs=1e-12)
    assert metrics["cv_test_like"]["roc_auc"] != metrics["cv"]["roc_auc"]

    ledger = pd.read_csv(root / "outputs" / "ledger.csv")
    assert ledger["test_like_roc_auc"].iloc[-1] == pytest.approx(expected, abs=1e-12)
    seeds = ["train.experiment=seeds", "train.seeds=[0, 1]"]
    assert main(["train", "-c", str(config), *seeds]) == 0
    averaged = json.loads((root / "outputs" / "seeds" / "metrics.json").read_text())
    assert averaged["test_like_rows"] == 60 and "roc_auc" in averaged["cv_test_like"]
    assert main(["infer", "-c", str(config)]) == main(["infer", "-c", str(config), *seeds]) == 0
    assert main(["ensemble", "-c", str(config), "ensemble.experiments=[exp001, seeds]"]) == 0
    cv = json.loads(next((root / "outputs" / "ensemble").glob("*/cv.json")).read_text())
    assert set(cv["nested"]["cv_test_like"]) == set(cv["nested"]["cv"])
    frame = ledger_view.ledger_rows(root / "outputs")
    assert frame["test_like"].notna().all()  # the run and the blend
    table = ledger_view.build_table(frame)
    assert "test-like (main)" in [column.header for column in table.columns]
    page = report.write_report(root / "outputs", ["exp001"], cfg=table_cfg(root))
    assert "test-like CV roc_auc" in page.read_text()


def test_folds_made_without_the_flags_are_not_replaced_silently(shifted):
    root, config, flags_file = shifted
    flagged = table_cfg(root, f"folds.test_like={flags_file}")
    folds.run(table_cfg(root))
    with pytest.raises(FoldsMismatchError, match=r"test_like None\); pass --force"):
        folds.run(flagged)
    folds.run(flagged, force=True)
    folds.run(flagged)  # the same flags: reused
    changed = pd.read_csv(flags_file)
    changed["test_like"] = changed["test_like"].to_numpy()[::-1]
    changed.to_csv(flags_file, index=False)
    with pytest.raises(FoldsMismatchError, match="pass --force"):
        folds.run(flagged)
    edited = pd.read_csv(root / "folds" / "folds.csv")
    edited.loc[0, "test_like"] = 1 - edited.loc[0, "test_like"]
    edited.to_csv(root / "folds" / "folds.csv", index=False)
    with pytest.raises(FoldsMismatchError, match="folds.csv was edited"):
        folds.run(flagged)
