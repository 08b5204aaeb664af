"""Reliability: atomic writes (R2), determinism (R4), NaN guard (R5), leakage (R7),
inference consistency (R9)."""

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medalist import io
from medalist.config import resolve_config
from medalist.errors import MedalistError, TrainingDivergedError
from medalist.folds import run as folds
from medalist.pipeline import run as pipeline
from medalist.prediction.infer import run as infer
from medalist.training.stage import run as train

FAST = ["train.epochs=1", "train.folds=[0]"]


def cfg(*extra):
    return resolve_config("configs/tiny.yaml", [*FAST, *extra])


# -- R2: atomic writes ------------------------------------------------------------------------


def test_disk_full_keeps_previous_artifact(tmp_path, monkeypatch):
    path = tmp_path / "oof.parquet"
    io.write_parquet(path, pd.DataFrame({"id": [1, 2], "p": [0.1, 0.2]}))
    before = path.read_bytes()

    def full_disk(self, *args, **kwargs):
        Path(args[0]).write_bytes(b"PAR1 half a file")  # part of the data reached the disk
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk)
    with pytest.raises(MedalistError, match=r"cannot write .*oof.parquet: No space left"):
        io.write_parquet(path, pd.DataFrame({"id": [3], "p": [0.3]}))
    assert path.read_bytes() == before  # the previous artifact still loads
    assert [p.name for p in tmp_path.iterdir()] == ["oof.parquet"]  # no temporary file left


def test_unwritable_folder_named():
    # /proc refuses new files even to root: a real folder that cannot be written.
    target = Path("/proc/medalist-test/metrics.json")
    with pytest.raises(MedalistError, match="cannot write /proc/medalist-test/metrics.json"):
        io.write_json(target, {"cv": 1.0})


# -- R4: determinism ----------------------------------------------------------------------------


def _run_copy(template: Path, where: Path, *extra) -> Path:
    project = where / "digits"
    shutil.copytree(template, project)
    with_cwd = Path.cwd()
    try:
        import os

        os.chdir(project)
        config = resolve_config("configs/tiny.yaml", ["train.epochs=1", *extra])
        pipeline(config)
    finally:
        os.chdir(with_cwd)
    return project


@pytest.mark.slow
def test_same_seed_bitwise_equal_different_seed_differs(tiny_template, tmp_path):
    first = _run_copy(tiny_template, tmp_path / "a")
    second = _run_copy(tiny_template, tmp_path / "b")
    other = _run_copy(tiny_template, tmp_path / "c", "train.seed=7")
    for name in (
        "folds/folds.csv",
        "folds/folds.json",
        "outputs/tiny/oof.parquet",
        "outputs/tiny/test.parquet",
        "submissions/tiny.csv",
    ):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    for fold in range(3):
        weights = f"outputs/tiny/fold{fold}/model.safetensors"
        a, b = load_file(first / weights), load_file(second / weights)
        assert all(a[k].equal(b[k]) for k in a)
    c = load_file(other / "outputs/tiny/fold0/model.safetensors")
    a = load_file(first / "outputs/tiny/fold0/model.safetensors")
    assert any(not a[k].equal(c[k]) for k in a if a[k].is_floating_point())
    # The fold file depends on folds.random_state, not on the training seed.
    assert (first / "folds/folds.csv").read_bytes() == (other / "folds/folds.csv").read_bytes()


# -- R5: non-finite losses ------------------------------------------------------------------------

NAN = "tricks.custom=[{name: 'faults:NaNLoss', batches: %s}]"


@pytest.fixture
def faults_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "support"))


def test_nan_step_skipped_not_applied(tiny_project, faults_on_path):
    folds(cfg())
    clean = cfg()
    train(clean)
    weights = tiny_project / "outputs/tiny/fold0/model.safetensors"
    reference = load_file(weights)
    shutil.rmtree(tiny_project / "outputs")
    # NaN on every micro-batch but the first step: training still finishes and saves finite weights.
    train(cfg(NAN % "[1]", "train.max_bad_steps=2"))
    got = load_file(weights)
    assert all(torch.isfinite(t).all() for t in got.values() if t.is_floating_point())
    assert any(not got[k].equal(reference[k]) for k in got if got[k].is_floating_point())
    log = pd.read_csv(tiny_project / "outputs/tiny/log.csv")
    assert log["step"].iloc[-1] == 4  # 5 batches, one skipped: 4 optimizer steps


def test_nan_steps_in_a_row_stop_training(tiny_project, faults_on_path):
    folds(cfg())
    with pytest.raises(TrainingDivergedError, match="3 optimizer steps in a row"):
        train(cfg(NAN % "[0, 1, 2, 3]", "train.max_bad_steps=3"))
    assert not (tiny_project / "outputs/tiny/fold0/model.safetensors").exists()


# -- R7: leakage ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_shuffled_targets_score_at_chance(tiny_project):
    train_csv = tiny_project / "data" / "train.csv"
    data = pd.read_csv(train_csv)
    data["label"] = np.random.default_rng(0).permutation(data["label"].to_numpy())
    data.to_csv(train_csv, index=False)
    config = resolve_config("configs/tiny.yaml", ["train.epochs=3"])
    folds(config)
    metrics = train(config)
    # Ten classes: chance is 0.1. A leak (validation rows in training) would score far above.
    assert metrics["cv"]["accuracy"] < 0.25


# -- R9: inference consistency ------------------------------------------------------------------


def test_predictions_do_not_depend_on_batch_size_and_reload_exactly(tiny_project):
    folds(cfg())
    train(cfg())
    out = tiny_project / "outputs" / "tiny"
    oof = pd.read_parquet(out / "fold0" / "oof.parquet")
    small = infer(cfg("infer.batch_size=3"))
    large = infer(cfg("infer.batch_size=64"))
    np.testing.assert_allclose(small.filter(like="p_"), large.filter(like="p_"), rtol=0, atol=1e-6)
    # Reloading the saved weights reproduces the validation predictions made in training.
    fold_ids = set(oof["id"])
    train_csv = pd.read_csv("data/train.csv")
    valid = train_csv[train_csv["id"].isin(fold_ids)]
    valid.to_csv("data/valid_as_test.csv", index=False)
    again = infer(cfg("competition.test_csv=valid_as_test.csv", "image.test_dir=train_images"))
    merged = oof.merge(again, on="id", suffixes=("", "_again"))
    for column in [c for c in oof.columns if c.startswith("p_")]:
        np.testing.assert_allclose(merged[column], merged[f"{column}_again"], rtol=0, atol=1e-6)
    assert json.loads((out / "task.json").read_text())["type"] == "multiclass"
