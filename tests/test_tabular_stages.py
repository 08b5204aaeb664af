"""A boosted model's experiment through the stages that read any experiment: the leak alarm
(``medalist sanity``), seeds as a distribution (``train.seeds``), an ensemble with an image
model on the same folds, and the report."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from medalist.cli import main
from medalist.data import read_train
from medalist.honest import sanity
from medalist.layout import experiment_dir
from medalist.prediction import infer
from medalist.reporting.report import write_report
from medalist.training import stage as train_stage
from support.configs import TINY
from support.tables import table_cfg, write_table_competition, write_table_folds


def test_the_leak_alarm_trains_a_table_on_labels_without_signal(tmp_path):
    write_table_competition(tmp_path, n_rows=150)
    cfg = table_cfg(tmp_path, "sanity.permutations=50", "sanity.rounds=40")
    write_table_folds(cfg)
    result = sanity.run(cfg)
    assert result["verdict"] == "chance" and result["rows_scored"] == 150
    # Every sanity round trained, none chosen on the shuffled labels (no early stopping).
    model = (tmp_path / "outputs/sanity/exp001/fold0/model.lgb.txt").read_text()
    assert "Tree=39" in model and "Tree=40" not in model
    assert abs(result["main"]["z"]) < 3 and 0.3 < result["main"]["score"] < 0.7
    assert not experiment_dir(cfg).exists()  # the real experiment's folder is not touched
    assert not (tmp_path / "outputs" / "ledger.csv").exists()


def test_the_leak_alarm_tells_rows_apart_by_their_features(tmp_path):
    write_table_competition(tmp_path, n_rows=60)
    cfg = table_cfg(tmp_path)
    train = read_train(cfg)
    copies = train.iloc[:2].assign(id=["copy0", "copy1"])
    groups = sanity.content_groups(cfg, pd.concat([train, copies], ignore_index=True))
    assert len(set(groups[:60])) == 60 and list(groups[60:]) == [0, 1]


def test_seeds_reach_the_library_and_are_averaged(tmp_path):
    write_table_competition(tmp_path, n_rows=150)
    cfg = table_cfg(
        tmp_path,
        "train.seeds=[0, 1]",
        "tabular.rounds=60",
        # LightGBM draws nothing at random by default: its seed acts through subsampling.
        "tabular.params={feature_fraction: 0.6, bagging_fraction: 0.7, bagging_freq: 1}",
    )
    write_table_folds(cfg)
    metrics = train_stage.run(cfg)
    outputs = tmp_path / "outputs"
    for seed in (0, 1):
        assert f"[seed: {seed}]" in (outputs / f"exp001@s{seed}/fold0/model.lgb.txt").read_text()
    seeds = [pd.read_parquet(outputs / f"exp001@s{s}" / "oof.parquet") for s in (0, 1)]
    assert not np.allclose(seeds[0]["p_malignant"], seeds[1]["p_malignant"])
    averaged = pd.read_parquet(outputs / "exp001" / "oof.parquet")
    expected = (seeds[0]["p_malignant"] + seeds[1]["p_malignant"]) / 2
    np.testing.assert_allclose(averaged["p_malignant"], expected, rtol=1e-6)
    assert set(metrics["seed_cv"]) == {"0", "1"} and metrics["cv"]["roc_auc"] > 0.9

    table = infer.run(cfg)
    tests = [pd.read_parquet(outputs / f"exp001@s{s}" / "test.parquet") for s in (0, 1)]
    mean = (tests[0]["p_malignant"] + tests[1]["p_malignant"]) / 2
    np.testing.assert_allclose(table["p_malignant"], mean, rtol=1e-6)
    page = write_report(outputs, ["exp001"], cfg=cfg).read_text()
    assert "Seeds of exp001" in page


def _pixel_grid(csv: Path, images: Path) -> None:
    """Add the image's 4x4 grid of mean intensities (``px0``..``px15``) to a table."""
    frame = pd.read_csv(csv)
    pixels = np.stack(
        [cv2.imread(str(images / name), cv2.IMREAD_GRAYSCALE) for name in frame["image"]]
    )
    grid = pixels.reshape(len(frame), 4, 2, 4, 2).mean(axis=(2, 4)).reshape(len(frame), 16)
    for i in range(16):
        frame[f"px{i}"] = grid[:, i]
    frame.to_csv(csv, index=False)


def test_a_table_and_an_image_model_blend_on_the_same_folds(tiny_project):
    """Features computed from the images join the digits' tables; the folds (a hash of the ids
    and labels) stay valid, and a LightGBM experiment blends with the image network."""
    assert main(["folds", "-c", TINY]) == 0
    manifest = Path("folds/folds.json").read_text()
    _pixel_grid(Path("data/train.csv"), Path("data/train_images"))
    _pixel_grid(Path("data/test.csv"), Path("data/test_images"))
    image = ["-c", TINY, "train.epochs=1"]
    table = [
        *image,
        "modality=tabular",
        "tabular.exclude=[image]",
        "train.experiment=grid",
        "tabular.rounds=100",
        "tabular.early_stopping=20",
        "tabular.params={num_threads: 1}",
    ]
    for args in (table, image):
        assert main(["train", *args]) == 0
        assert main(["infer", *args]) == 0
    assert Path("folds/folds.json").read_text() == manifest
    blend = ["-c", TINY, "ensemble.experiments=[tiny, grid]", "ensemble.submit=false"]
    assert main(["ensemble", *blend]) == 0
    folder = Path("outputs/ensemble/blend")
    oof, test = pd.read_parquet(folder / "oof.parquet"), pd.read_parquet(folder / "test.parquet")
    columns = [f"p_{c}" for c in range(10)]
    assert list(oof.columns) == ["id", "fold", *columns] and len(oof) == 120
    assert list(test.columns) == ["id", *columns] and len(test) == 30
    folds = pd.read_csv("folds/folds.csv").set_index("id")
    np.testing.assert_array_equal(oof["fold"], folds.loc[oof["id"], "fold"])
    cv = json.loads((folder / "cv.json").read_text())
    grid = json.loads(Path("outputs/grid/metrics.json").read_text())["cv"]
    assert set(cv["members"]) == {"tiny", "grid"}
    assert cv["nested"]["cv"]["accuracy"] >= 0.5 and grid["accuracy"] >= 0.5
    # The report reads the table's experiment (its log has rounds, not epochs) and the blend.
    assert main(["report", "-c", TINY, "--ensemble", "blend"]) == 0
    page = Path("outputs/report.html").read_text()
    assert "grid" in page and "tiny" in page
