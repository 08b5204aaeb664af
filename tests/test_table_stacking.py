"""Other experiments' predictions as features (tabular.oof_features): OOF for train rows, test
predictions for test rows, on the same folds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medalist.errors import DataError, FoldsMismatchError
from medalist.layout import experiment_dir, fold_dir
from medalist.modalities import get_modality
from medalist.prediction import infer
from medalist.training import stage as train_stage
from support.tables import table_cfg, write_table_competition, write_table_folds

MEMBER = ("tabular.model=linear", "train.experiment=member")
STACKER = ("tabular.oof_features=[member]", "train.experiment=stacker")


def _cfg(root, *extra):
    return table_cfg(root, *extra, threads=None)


@pytest.fixture
def member(tmp_path):
    """A trained and inferred linear experiment on the breast cancer table."""
    write_table_competition(tmp_path)
    cfg = _cfg(tmp_path, *MEMBER)
    write_table_folds(cfg)
    train_stage.run(cfg)
    infer.run(cfg)
    return cfg


def test_a_model_learns_from_another_experiments_oof_and_predicts_from_its_test(tmp_path, member):
    cfg = _cfg(tmp_path, *STACKER, "tabular.features=[mean_radius]")
    metrics = train_stage.run(cfg)
    assert metrics["complete"]
    spec = json.loads((fold_dir(cfg, 0) / "features.json").read_text())
    assert spec["columns"] == ["mean_radius", "member.p_malignant"]
    importance = pd.read_parquet(fold_dir(cfg, 0) / "importance.parquet").set_index("feature")
    assert importance.loc["member.p_malignant", "gain"] > importance.loc["mean_radius", "gain"]

    # Test rows get the member's test predictions: the stacker's test table follows them.
    table = infer.run(cfg)
    theirs = pd.read_parquet(experiment_dir(member) / "test.parquet")
    ours = table.set_index("id").loc[theirs["id"], "p_malignant"].to_numpy()
    assert np.corrcoef(ours, theirs["p_malignant"])[0, 1] > 0.8


def test_the_rows_get_the_members_own_predictions(tmp_path, member):
    cfg = _cfg(tmp_path, *STACKER)
    modality = get_modality("tabular")
    train = pd.read_csv(tmp_path / "data" / "train.csv").iloc[::-1]  # another row order
    frame = modality.build_dataset(
        cfg, train, None, split="train", train=False, source="train.csv"
    ).frame
    oof = pd.read_parquet(experiment_dir(member) / "oof.parquet").set_index("id")
    expected = oof.loc[frame["id"], "p_malignant"].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(frame["member.p_malignant"].to_numpy(), expected)


def test_a_member_retrained_trains_the_stacker_again(tmp_path, member):
    cfg = _cfg(tmp_path, *STACKER, "train.folds=[0]")
    train_stage.run(cfg)
    model = fold_dir(cfg, 0) / "model.lgb.txt"
    before = model.stat().st_mtime_ns
    train_stage.run(cfg)
    assert model.stat().st_mtime_ns == before
    train_stage.run(_cfg(tmp_path, *MEMBER, "tabular.params={C: 0.01}"))
    train_stage.run(cfg)
    assert model.stat().st_mtime_ns != before


def test_missing_or_incomplete_members_are_named_before_training(tmp_path, member):
    with pytest.raises(DataError, match="'ghost'.*train 'ghost' first|ghost"):
        train_stage.run(_cfg(tmp_path, "tabular.oof_features=[ghost]", "train.experiment=s"))
    oof_file = experiment_dir(member) / "oof.parquet"
    oof = pd.read_parquet(oof_file)
    oof.iloc[5:].to_parquet(oof_file, index=False)
    with pytest.raises(DataError, match="no prediction for 5 row"):
        train_stage.run(_cfg(tmp_path, *STACKER))
    assert not (experiment_dir(_cfg(tmp_path, *STACKER)) / "fold0").exists()


def test_a_member_trained_on_other_folds_is_refused(tmp_path, member):
    manifest = tmp_path / "folds" / "folds.json"
    record = json.loads(manifest.read_text())
    other = tmp_path / "other_folds"
    other.mkdir()
    (other / "folds.json").write_text(json.dumps({**record, "folds_sha256": "0" * 64}))
    config = experiment_dir(member) / "config.yaml"
    config.write_text(config.read_text().replace(str(tmp_path / "folds"), str(other)))
    with pytest.raises(FoldsMismatchError, match="other folds"):
        train_stage.run(_cfg(tmp_path, *STACKER))


def test_the_bundle_carries_no_folder_for_a_stacked_experiment(tmp_path):
    """The experiments it stacks on are packaged as experiments of their own (see
    test_package_stacked.py), not as a folder the model points to."""
    cfg = _cfg(tmp_path, *STACKER)
    assert get_modality("tabular").packaged_folder(cfg) is None
