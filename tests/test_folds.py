"""Property tests of fold assignment, the fold manifest and the leakage guard of load_folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from medalist.errors import ConfigError, DataError, FoldsMismatchError
from medalist.folds import (
    SCHEMES,
    assign_folds,
    build_manifest,
    load_folds,
    make_splitter,
    write_folds,
)
from medalist.io import sha256_frame

# scikit-learn must not warn (e.g. "least populated class") on data the checks let through
pytestmark = pytest.mark.filterwarnings("error::UserWarning")

N_ROWS, N_SPLITS, SEED = 160, 5, 7
LABELS = ["l0", "l1", "l2", "l3"]
TARGETS = {"multilabel_stratified": LABELS, "quantile": ["value"]}
SPLITTERS = {
    "kfold": KFold,
    "stratified": StratifiedKFold,
    "group": GroupKFold,
    "stratified_group": StratifiedGroupKFold,
    "multilabel_stratified": MultilabelStratifiedKFold,
    "quantile": StratifiedKFold,
}


def make_train(n: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    """Imbalanced classes, ~4-row groups, a skewed continuous target and labels of mixed rarity."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "id": rng.permutation(np.arange(1000, 1000 + n)),
            "label": rng.choice(["cat", "dog", "bird"], size=n, p=[0.6, 0.3, 0.1]),
            "group": rng.integers(0, n // 4, size=n),
            "value": rng.lognormal(0.0, 1.0, size=n),
        }
    )
    for column, rate in zip(LABELS, (0.5, 0.2, 0.1), strict=False):
        frame[column] = (rng.random(n) < rate).astype(int)
    frame["l3"] = 0
    frame.loc[rng.choice(n, size=N_SPLITS + 1, replace=False), "l3"] = 1  # rare label
    return frame


def params(scheme: str, **overrides) -> dict:
    base = {
        "id_column": "id",
        "target_columns": TARGETS.get(scheme, ["label"]),
        "scheme": scheme,
        "n_splits": N_SPLITS,
        "random_state": SEED,
        "group_column": "group" if scheme in ("group", "stratified_group") else None,
        "n_bins": 10,
    }
    return base | overrides


def folds_for(train: pd.DataFrame, scheme: str, **overrides) -> pd.DataFrame:
    return assign_folds(train, **params(scheme, **overrides))


def saved(tmp_path, train: pd.DataFrame, scheme: str = "stratified"):
    """Write the folds of ``train`` to ``tmp_path/folds`` and return (folder, folds)."""
    p = params(scheme)
    folds = assign_folds(train, **p)
    write_folds(folds, build_manifest(train, folds, **p), tmp_path / "folds")
    return tmp_path / "folds", folds


def load(folder, train: pd.DataFrame, targets: list[str] | None = None) -> pd.DataFrame:
    return load_folds(folder, train, id_column="id", target_columns=targets or ["label"])


# --- properties of every scheme ----------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_row_in_exactly_one_fold(scheme):
    train = make_train()
    folds = folds_for(train, scheme)
    assert list(folds.columns) == ["id", "fold"]
    assert folds["id"].tolist() == train["id"].tolist()  # train's row order, one row per id
    assert pd.api.types.is_integer_dtype(folds["fold"])
    assert set(folds["fold"]) == set(range(N_SPLITS))  # in range, and no fold left empty
    assert folds["fold"].value_counts().min() >= N_ROWS // N_SPLITS // 2


@pytest.mark.parametrize("scheme", SCHEMES)
def test_same_seed_same_folds_other_seed_other_folds(scheme):
    train = make_train()
    first = folds_for(train, scheme)
    pd.testing.assert_frame_equal(first, folds_for(train, scheme))
    assert not first.equals(folds_for(train, scheme, random_state=SEED + 1))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_input_frame_is_not_mutated(scheme):
    train = make_train()
    before = train.copy(deep=True)
    folds = folds_for(train, scheme)
    build_manifest(train, folds, **params(scheme))
    pd.testing.assert_frame_equal(train, before)
    assert "fold" not in train.columns


@pytest.mark.parametrize("scheme", ["group", "stratified_group"])
def test_no_group_in_two_folds(scheme):
    train = make_train()
    folds = folds_for(train, scheme)
    assert (folds["fold"].groupby(train["group"]).nunique() == 1).all()


def test_stratified_keeps_class_ratio_in_every_fold():
    train = make_train()
    folds = folds_for(train, "stratified")
    overall = train["label"].value_counts(normalize=True)
    for k in range(N_SPLITS):
        in_fold = train["label"][folds["fold"] == k]
        ratio = in_fold.value_counts(normalize=True).reindex(overall.index, fill_value=0)
        assert (ratio - overall).abs().max() < 0.05, (k, ratio.to_dict())
    per_fold = pd.crosstab(folds["fold"], train["label"])
    assert (per_fold.max() - per_fold.min()).max() <= 1  # sklearn's guarantee


def test_multilabel_spreads_each_labels_positives():
    train = make_train()
    folds = folds_for(train, "multilabel_stratified")
    for column in LABELS:
        positives = folds["fold"][train[column] == 1]
        assert len(positives) >= N_SPLITS
        assert positives.nunique() == N_SPLITS, column  # every fold has one or more
        counts = positives.value_counts()
        assert counts.max() - counts.min() <= max(2, len(positives) // 10), column


def test_quantile_balances_the_continuous_target():
    train = make_train()
    folds = folds_for(train, "quantile")
    value = train["value"]
    fold_means = value.groupby(folds["fold"]).mean()
    assert (fold_means - value.mean()).abs().max() < 0.15 * value.std(), fold_means.to_dict()
    deciles = pd.qcut(value, 10, labels=False)
    per_fold = pd.crosstab(folds["fold"], deciles)
    assert (per_fold.max() - per_fold.min()).max() <= 1


def test_quantile_handles_ties_and_a_constant_target():
    train = make_train()
    # 44 tied rows leave the 20-quantile bin above them 4 rows wide: fewer rows than folds
    train["value"] = np.r_[np.arange(1, 41), np.full(44, 100), np.arange(101, N_ROWS + 17)]
    bins = pd.qcut(train["value"], 20, labels=False, duplicates="drop")
    assert bins.value_counts().min() < N_SPLITS
    folds = folds_for(train, "quantile", n_bins=20)  # sklearn would warn on a 4-row bin
    assert set(folds["fold"]) == set(range(N_SPLITS))
    manifest = build_manifest(train, folds, **params("quantile", n_bins=20))
    assert manifest["params"]["n_bins"] == 20
    assert 1 < manifest["params"]["n_bins_used"] < 20
    train["value"] = 3.0
    assert set(folds_for(train, "quantile")["fold"]) == set(range(N_SPLITS))


def test_string_ids_are_kept():
    train = make_train()
    train["id"] = [f"img_{i:04d}" for i in train["id"]]
    folds = folds_for(train, "kfold")
    assert folds["id"].tolist() == train["id"].tolist()


# --- splitters and manifest -----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_make_splitter_classes_shuffle_and_seed(scheme):
    splitter = make_splitter(scheme, 4, 11)
    assert type(splitter) is SPLITTERS[scheme]
    assert (splitter.n_splits, splitter.shuffle, splitter.random_state) == (4, True, 11)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_manifest_describes_split_and_data(scheme):
    train = make_train()
    p = params(scheme)
    folds = assign_folds(train, **p)
    manifest = build_manifest(train, folds, **p)
    targets = p["target_columns"]
    assert manifest["splitter"] == SPLITTERS[scheme].__name__
    assert manifest["scheme"] == scheme
    assert manifest["seed"] == SEED
    assert manifest["params"]["n_splits"] == N_SPLITS
    assert manifest["params"]["random_state"] == SEED
    assert manifest["params"]["shuffle"] is True
    assert ("n_bins" in manifest["params"]) == (scheme == "quantile")
    assert manifest["target_columns"] == targets
    assert manifest["group_column"] == p["group_column"]
    stratified = {"kfold": [], "group": [], "multilabel_stratified": LABELS}
    assert manifest["stratify_columns"] == stratified.get(scheme, targets)
    assert manifest["n_rows"] == N_ROWS
    assert manifest["data_sha256"] == sha256_frame(train[["id", *targets]])
    assert manifest["ids_sha256"] == sha256_frame(train[["id"]])
    assert manifest["folds_sha256"] == sha256_frame(folds)
    sizes = folds["fold"].value_counts()
    assert manifest["fold_sizes"] == {str(k): int(sizes[k]) for k in range(N_SPLITS)}
    json.dumps(manifest)  # must be JSON-serialisable as is


@pytest.mark.parametrize("scheme", SCHEMES)
def test_write_then_load_returns_identical_folds(tmp_path, scheme):
    train = make_train()
    folder, folds = saved(tmp_path, train, scheme)
    assert sorted(p.name for p in folder.iterdir()) == ["folds.csv", "folds.json"]
    loaded = load(folder, train, TARGETS.get(scheme, ["label"]))
    pd.testing.assert_frame_equal(loaded, folds)


def test_round_trip_with_string_ids_that_look_like_numbers(tmp_path):
    train = make_train()
    train["id"] = [f"{i:07d}" for i in range(N_ROWS)]  # leading zeros must survive the CSV
    folder, folds = saved(tmp_path, train)
    pd.testing.assert_frame_equal(load(folder, train), folds)


def test_write_folds_refuses_a_manifest_of_other_folds(tmp_path):
    train = make_train()
    folds = folds_for(train, "kfold")
    manifest = build_manifest(train, folds, **params("kfold"))
    other = folds.assign(fold=(folds["fold"] + 1) % N_SPLITS)
    with pytest.raises(ValueError):
        write_folds(other, manifest, tmp_path / "folds")
    assert not (tmp_path / "folds" / "folds.json").exists()


# --- the leakage guard ----------------------------------------------------------------------------


def refused(folder, train, targets=None) -> str:
    with pytest.raises(FoldsMismatchError) as info:
        load(folder, train, targets)
    message = str(info.value)
    assert str(folder) in message
    assert "medalist folds" in message
    return message


def test_refuses_when_one_target_changes(tmp_path):
    train = make_train()
    folder, _ = saved(tmp_path, train)
    changed = train.copy()
    changed.loc[17, "label"] = "bird" if changed.loc[17, "label"] != "bird" else "cat"
    assert "target" in refused(folder, changed)


def test_refuses_when_a_row_is_added(tmp_path):
    train = make_train()
    folder, _ = saved(tmp_path, train)
    extra = pd.DataFrame({"id": [5], "label": ["cat"], "group": [0], "value": [1.0]})
    message = refused(folder, pd.concat([train, extra], ignore_index=True))
    assert "1 new id" in message and "missing" not in message


def test_refuses_when_a_row_is_removed(tmp_path):
    train = make_train()
    folder, _ = saved(tmp_path, train)
    message = refused(folder, train.drop(index=3).reset_index(drop=True))
    assert "1 missing id" in message and "new id" not in message


def test_refuses_when_an_id_changes(tmp_path):
    train = make_train()
    folder, _ = saved(tmp_path, train)
    changed = train.copy()
    changed.loc[0, "id"] = 99
    message = refused(folder, changed)
    assert "1 new id" in message and "1 missing id" in message and "99" in message


def test_refuses_reordered_rows(tmp_path):
    train = make_train()
    folder, _ = saved(tmp_path, train)
    assert "order" in refused(folder, train.iloc[::-1].reset_index(drop=True))


def test_refuses_a_hand_edited_fold_file(tmp_path):
    train = make_train()
    folder, folds = saved(tmp_path, train)
    edited = folds.copy()
    edited.loc[0, "fold"] = (edited.loc[0, "fold"] + 1) % N_SPLITS
    edited.to_csv(folder / "folds.csv", index=False)
    assert "edited" in refused(folder, train)


@pytest.mark.parametrize("name", ["folds.csv", "folds.json"])
def test_refuses_missing_files(tmp_path, name):
    train = make_train()
    folder, _ = saved(tmp_path, train)
    (folder / name).unlink()
    assert name in refused(folder, train)
    assert "not found" in refused(tmp_path / "nowhere", train)


def test_refuses_an_unreadable_manifest(tmp_path):
    train = make_train()
    folder, _ = saved(tmp_path, train)
    (folder / "folds.json").write_text("{not json")
    assert "cannot be read" in refused(folder, train)
    (folder / "folds.json").write_text("{}")
    assert "folds.json lacks" in refused(folder, train)


def test_refuses_other_target_columns(tmp_path):
    train = make_train()
    folder, _ = saved(tmp_path, train)
    assert "made for" in refused(folder, train, ["value"])


def test_load_names_a_missing_train_column(tmp_path):
    train = make_train()
    folder, _ = saved(tmp_path, train)
    with pytest.raises(DataError, match="label"):
        load(folder, train.drop(columns="label"))


# --- bad input ------------------------------------------------------------------------------------


def raises(error, match, train, scheme="stratified", **overrides):
    with pytest.raises(error, match=match):
        folds_for(train, scheme, **overrides)


@pytest.mark.parametrize("column", ["id", "label", "group"])
def test_missing_column_is_named(column):
    raises(DataError, f"missing column.*'{column}'", make_train().drop(columns=column), "group")


def test_unknown_scheme_names_the_key_and_valid_schemes():
    raises(ConfigError, r"folds\.scheme.*'shuffle'.*stratified_group", make_train(), "shuffle")
    with pytest.raises(ConfigError, match=r"folds\.scheme"):
        make_splitter("shuffle", 5, 0)


def test_duplicated_id_names_the_id_and_row():
    train = make_train()
    train.loc[9, "id"] = train.loc[4, "id"]
    raises(DataError, rf"row 9: duplicated id {train.loc[4, 'id']}", train)


def test_nan_target_names_the_row_and_column():
    train = make_train()
    train.loc[12, "label"] = None
    raises(DataError, "row 12 has no label", train)


@pytest.mark.parametrize("column", ["id", "group"])
def test_missing_id_or_group_value_names_the_row(column):
    train = make_train().astype({column: "float64"})
    train.loc[21, column] = np.nan
    raises(DataError, f"row 21 has no {column}", train, "stratified_group")


def test_group_scheme_needs_group_column():
    raises(ConfigError, r"folds\.group_column", make_train(), "group", group_column=None)


@pytest.mark.parametrize("n_splits", [1, 0, N_ROWS + 1])
def test_bad_n_splits(n_splits):
    raises(ConfigError, r"folds\.n_splits", make_train(), "kfold", n_splits=n_splits)


def test_more_folds_than_groups():
    train = make_train()
    train["group"] = train.index % 3
    raises(ConfigError, r"folds\.n_splits.*3 groups", train, "group")


@pytest.mark.parametrize("scheme", ["stratified", "stratified_group"])
def test_rare_class_is_named(scheme):
    train = make_train()
    train.loc[:3, "label"] = "fox"  # 4 rows < 5 folds
    raises(DataError, "class 'fox' of label has 4", train, scheme)


def test_multilabel_needs_two_target_columns():
    raises(
        ConfigError, "target_columns", make_train(), "multilabel_stratified", target_columns=["l0"]
    )


def test_multilabel_needs_zero_one_targets():
    train = make_train()
    train.loc[5, "l2"] = 2
    raises(DataError, "row 5: l2 is 2", train, "multilabel_stratified")


def test_quantile_needs_a_numeric_target():
    raises(DataError, "label.*numeric", make_train(), "quantile", target_columns=["label"])
