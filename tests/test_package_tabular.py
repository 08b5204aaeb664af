"""The offline bundle of tabular experiments: a boosted model's folds (LightGBM, XGBoost,
CatBoost) ship their feature encoding and model files, the bundle's run (local profile) writes
the local submission again, an ensemble of two boosters blends as the ensemble stage did, the
run time is estimated, and a library the environment lacks stops the run before predicting.
"""

import json
import logging
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalist.config import Config
from medalist.demo.digits import working_directory
from medalist.ensemble import stage as ensemble_stage
from medalist.errors import ConfigError
from medalist.offline import package
from medalist.offline.predict import MANIFEST, read_manifest, run_bundle
from medalist.offline.timing import estimate
from medalist.prediction import infer
from medalist.submission import stage as submission_stage
from medalist.training import stage as train_stage
from support.tables import table_cfg, write_table_competition, write_table_folds

SUFFIX = {"lightgbm": "lgb.txt", "xgboost": "xgb.json", "catboost": "cb.json"}
DATASET = "tester/tables-offline"
SLUG = DATASET.split("/")[1]


def _wheel(folder: Path, name: str, version: str) -> Path:
    """A stand-in wheel file (packaged, never installed here)."""
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}/__init__.py", "")
    return wheel


def _cfg(root: Path, model: str, out: Path, *extra: str) -> Config:
    """``model``'s experiment (named after it), packaged into ``out``."""
    return table_cfg(
        root,
        f"train.experiment={model}",
        "tabular.rounds=60",
        f"kaggle.medalist_wheel={_wheel(root, 'medalist', '0.1.0')}",
        "kaggle.project_wheel=false",
        f"kaggle.output_dir={out / 'package'}",
        f"kaggle.dataset_id={DATASET}",
        "kaggle.timing_rows=16",
        "ensemble.experiments=[lightgbm, catboost]",
        *extra,
        model=model,
        threads=1 if model in SUFFIX else None,  # a GBDT's thread count
    )


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    """The table competition with a LightGBM, a CatBoost and an XGBoost experiment (3 folds
    each) trained, inferred and submitted, and two blends of the first two."""
    root = tmp_path_factory.mktemp("tables")
    write_table_competition(root)
    write_table_folds(table_cfg(root))
    for model in SUFFIX:
        cfg = _cfg(root, model, root)
        train_stage.run(cfg)
        infer.run(cfg)
        submission_stage.run(cfg)
    for method in ("hill_climb", "weighted"):
        cfg = _cfg(root, "lightgbm", root, f"ensemble.name={method}", f"ensemble.method={method}")
        ensemble_stage.run(cfg, cfg.ensemble)
    return root


def _package(cfg: Config, where: Path) -> Path:
    with working_directory(where):
        return package.run(cfg)


def _run_local(bundle: Path, working: Path) -> Path:
    return run_bundle(bundle, "local", environ={"MEDALIST_WORKING": str(working)})


# --------------------------------------------------------------------- one experiment per library


@pytest.mark.parametrize("model", sorted(SUFFIX))
def test_bundle_ships_each_folds_files_and_writes_the_local_submission(tables, tmp_path, model):
    bundle = _package(_cfg(tables, model, tmp_path), tmp_path)
    manifest = read_manifest(bundle)
    entry = manifest["experiments"][model]
    # Each fold's files as its scores.json records them: the feature encoding, then the model.
    for fold, files in entry["weights"].items():
        record = json.loads(
            (tables / "outputs" / model / f"fold{fold}" / "scores.json").read_text()
        )
        assert record["prediction_weights"] == ["features.json", f"model.{SUFFIX[model]}"]
        assert files == [
            f"outputs/{model}/fold{fold}/{name}" for name in record["prediction_weights"]
        ]
        for relative in files:  # the trained files, byte for byte, copied (not linked)
            shipped, trained = bundle / relative, tables / relative
            assert shipped.read_bytes() == trained.read_bytes()
            assert not shipped.samefile(trained)
    assert sorted(entry["weights"]) == ["0", "1", "2"]
    assert entry["learners"] == [model]
    assert entry["libraries"] == {model: metadata.version(model)}
    timing = json.loads((bundle / "timing.json").read_text())
    assert len(timing["models"]) == 3 and timing["fits"] is True

    working = tmp_path / "offline"
    written = _run_local(bundle, working)
    offline = pd.read_parquet(working / "predictions" / f"{model}.parquet")
    local = pd.read_parquet(tables / "outputs" / model / "test.parquet")
    pd.testing.assert_frame_equal(offline, local, check_exact=True)
    assert written.read_bytes() == (tables / "submissions" / f"{model}.csv").read_bytes()


# ------------------------------------------------------------------------------------ ensemble


@pytest.mark.parametrize("method", ["hill_climb", "weighted"])
def test_packaged_ensemble_of_two_boosters_predicts_the_local_blend(tables, tmp_path, method):
    cfg = _cfg(tables, "lightgbm", tmp_path, f"kaggle.ensemble={method}")
    bundle = _package(cfg, tmp_path)
    manifest = read_manifest(bundle)
    assert sorted(manifest["experiments"]) == ["catboost", "lightgbm"]
    assert manifest["ensemble"]["method"] == method
    assert {e["learners"][0] for e in manifest["experiments"].values()} == {"catboost", "lightgbm"}
    working = tmp_path / "offline"
    written = _run_local(bundle, working)
    blended = pd.read_parquet(working / "predictions" / f"ensemble__{method}.parquet")
    local = pd.read_parquet(tables / "outputs" / "ensemble" / method / "test.parquet")
    pd.testing.assert_frame_equal(blended, local, check_exact=True)
    assert written.read_bytes() == (tables / "submissions" / f"{method}.csv").read_bytes()


# -------------------------------------------------------------------------------------- timing


def test_time_estimate_of_a_booster_takes_the_load_apart(tables, tmp_path):
    """A booster reads its model file inside its prediction: the load is timed as the prediction
    of one row, so the model file is not counted once per sample of rows."""
    bundle = _package(_cfg(tables, "lightgbm", tmp_path), tmp_path)
    manifest = read_manifest(bundle)
    report, samples = estimate(
        bundle, manifest["experiments"], tables / "data", 8, 1_000_000, limit_hours=9
    )
    assert [m["rows"] for m in report["models"]] == [8, 8, 8]
    for model in report["models"]:
        assert model["load_seconds"] > 0 and model["predict_seconds"] >= 0
        assert model["load"] == "timed as the prediction of one row"
    expected = sum(
        m["load_seconds"] + m["predict_seconds"] * 1_000_000 / m["rows"] for m in report["models"]
    )
    assert report["estimated_seconds"] == pytest.approx(expected, abs=0.01)
    test, values = samples["lightgbm"]
    local = pd.read_parquet(tables / "outputs" / "lightgbm" / "test.parquet").head(8)
    assert list(test["id"]) == list(local["id"])
    np.testing.assert_array_equal(values, local.drop(columns="id").to_numpy())


# ----------------------------------------------------------------------- the boosting libraries


def test_a_library_the_environment_lacks_stops_the_run_before_predicting(
    tables, tmp_path, monkeypatch
):
    bundle = _package(_cfg(tables, "lightgbm", tmp_path), tmp_path)
    monkeypatch.setitem(sys.modules, "lightgbm", None)  # `import lightgbm` fails
    working = tmp_path / "offline"
    version = metadata.version("lightgbm")
    with pytest.raises(ConfigError, match="kaggle.wheels") as error:
        _run_local(bundle, working)
    assert "lightgbm" in str(error.value) and f"'lightgbm=={version}'" in str(error.value)
    assert not (working / "predictions").exists()  # nothing predicted


def test_another_library_version_is_named_in_the_log(tables, tmp_path, caplog):
    bundle = _package(_cfg(tables, "xgboost", tmp_path), tmp_path)
    path = bundle / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["experiments"]["xgboost"]["libraries"]["xgboost"] = "0.0.1"  # trained elsewhere
    path.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        _run_local(bundle, tmp_path / "offline")
    installed = metadata.version("xgboost")
    assert f"xgboost {installed} predicts here, but 0.0.1 trained ['xgboost']" in caplog.text
    assert "'xgboost==0.0.1' to kaggle.wheels" in caplog.text


def test_package_says_which_library_it_leaves_to_the_image(tables, tmp_path, caplog):
    """Not bundled, the image's library predicts (the log says how to pin it); bundled through
    kaggle.wheels, the notebook installs it and nothing is said."""
    version = metadata.version("catboost")
    with caplog.at_level(logging.INFO):
        _package(_cfg(tables, "catboost", tmp_path), tmp_path)
    assert f"add 'catboost=={version}' to kaggle.wheels" in caplog.text
    caplog.clear()
    wheel = _wheel(tmp_path, "catboost", version)
    with caplog.at_level(logging.INFO):
        bundle = _package(_cfg(tables, "catboost", tmp_path, f"kaggle.wheels=[{wheel}]"), tmp_path)
    assert f"catboost=={version}" in read_manifest(bundle)["install"]
    assert "to kaggle.wheels" not in caplog.text


def test_table_network_ships_its_encodings_and_weights(tables, tmp_path):
    """The table MLP's fold: two JSON encodings (copied) and safetensors weights (linked), a
    learner that is no library to check, and the local predictions again."""
    mlp = ("tabular.hidden=[16]", "train.epochs=2", "train.batch_size=32", "train.folds=[0]")
    cfg = _cfg(tables, "mlp", tmp_path, *mlp)
    train_stage.run(cfg)
    infer.run(cfg)
    bundle = _package(cfg, tmp_path)
    entry = read_manifest(bundle)["experiments"]["mlp"]
    names = ["features.json", "scaling.json", "model.safetensors"]
    assert entry["weights"] == {"0": [f"outputs/mlp/fold0/{name}" for name in names]}
    assert entry["learners"] == ["mlp"] and entry["libraries"] == {}
    for relative in entry["weights"]["0"]:
        shipped, trained = bundle / relative, tables / relative
        assert shipped.read_bytes() == trained.read_bytes()
        assert shipped.samefile(trained) == relative.endswith(".safetensors")
    working = tmp_path / "offline"
    _run_local(bundle, working)
    offline = pd.read_parquet(working / "predictions" / "mlp.parquet")
    local = pd.read_parquet(tables / "outputs" / "mlp" / "test.parquet")
    pd.testing.assert_frame_equal(offline, local, check_exact=True)


def test_a_bundle_that_names_no_library_runs_as_before(tables, tmp_path):
    """A bundle of an older medalist lists no learners or libraries: nothing is checked, and
    its boosters predict as before."""
    bundle = _package(_cfg(tables, "lightgbm", tmp_path), tmp_path)
    path = bundle / MANIFEST
    manifest = json.loads(path.read_text())
    for key in ("learners", "libraries"):
        manifest["experiments"]["lightgbm"].pop(key)  # as a bundle of an older medalist
    path.write_text(json.dumps(manifest))
    working = tmp_path / "offline"
    _run_local(bundle, working)
    offline = pd.read_parquet(working / "predictions" / "lightgbm.parquet")
    local = pd.read_parquet(tables / "outputs" / "lightgbm" / "test.parquet")
    pd.testing.assert_frame_equal(offline, local, check_exact=True)
