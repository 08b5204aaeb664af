"""The offline bundle of a seed-averaged experiment (``train.seeds``): every seed's fold files
ship, the manifest's entry of the averaged experiment names its seeds in place of weights, and
the run writes the local submission again, packaged alone or as a member of a packaged blend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalist.cli import main
from medalist.demo.digits import working_directory
from medalist.errors import DataError
from medalist.offline.predict import prediction_order, read_manifest, run_bundle
from support.bundles import kaggle_overrides
from support.configs import TINY

# Every fold (three): an ensemble blends complete OOF predictions.
SEEDS = ["-c", TINY, "train.epochs=1", "train.seeds=[0,1]"]
SEED_EXPERIMENTS = ["tiny@s0", "tiny@s1"]


def _run(*args: str) -> None:
    assert main([*args]) == 0, args


@pytest.fixture(scope="module")
def seeded(tiny_template, tmp_path_factory) -> Path:
    """The tiny project trained with seeds 0 and 1 (one epoch), inferred and submitted."""
    project = tmp_path_factory.mktemp("package_seeds") / "digits"
    shutil.copytree(tiny_template, project)
    with working_directory(project):
        _run("folds", "-c", TINY)
        for stage in ("train", "infer", "submission"):
            _run(stage, *SEEDS)
    return project


@pytest.fixture
def project(seeded, tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(seeded, folder)
    with working_directory(folder):
        yield folder


def _columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("p_")]


def test_the_bundle_averages_the_seeds_as_infer_did(project, tmp_path):
    kaggle = kaggle_overrides(tmp_path, "someone/seeds", "kaggle.timing_rows=8")
    _run("package", *SEEDS, *kaggle)
    bundle = Path("package/seeds")
    manifest = read_manifest(bundle)
    assert list(manifest["experiments"]) == [*SEED_EXPERIMENTS, "tiny"]  # seeds first
    averaged = manifest["experiments"]["tiny"]
    assert averaged["seeds"] == SEED_EXPERIMENTS and averaged["weights"] == {}
    assert manifest["prediction"] == "tiny"
    for seed in SEED_EXPERIMENTS:  # every seed's fold files, each listed with its size
        weights = manifest["experiments"][seed]["weights"]
        assert sorted(weights) == ["0", "1", "2"]
        for files in weights.values():
            assert files and all(f.startswith(f"outputs/{seed}/fold") for f in files)
            assert all(f in manifest["files"] for f in files)
    # The sample's mean of the seeds matched outputs/tiny/test.parquet; the seeds were timed.
    report = json.loads((bundle / "timing.json").read_text())
    timed = {model["experiment"] for model in report["models"]}
    assert timed == set(SEED_EXPERIMENTS)
    assert manifest["timing"]["estimated_seconds"] > 0

    written = run_bundle(bundle, "local", environ={})
    offline = pd.read_parquet("outputs/offline/predictions/tiny.parquet")
    local = pd.read_parquet("outputs/tiny/test.parquet")
    columns = _columns(local)
    assert offline["id"].tolist() == local["id"].tolist()
    assert np.array_equal(offline[columns].to_numpy(), local[columns].to_numpy())
    assert written.read_bytes() == Path("submissions/tiny.csv").read_bytes()


def test_a_seed_average_in_a_packaged_blend(project, tmp_path):
    """Blended with one of its own seeds: that seed is packaged and predicted once."""
    members = ["ensemble.experiments=[tiny,tiny@s0]", "ensemble.method=weighted"]
    _run("ensemble", *SEEDS, *members)
    kaggle = kaggle_overrides(tmp_path, "someone/seeds", "kaggle.timing_rows=8")
    _run("package", *SEEDS, *members, *kaggle, "kaggle.ensemble=blend")
    bundle = Path("package/seeds")
    manifest = read_manifest(bundle)
    assert list(manifest["experiments"]) == [*SEED_EXPERIMENTS, "tiny"]
    assert [m["experiments"] for m in manifest["ensemble"]["members"]] == [["tiny"], ["tiny@s0"]]
    written = run_bundle(bundle, "local", environ={})
    blended = pd.read_parquet("outputs/offline/predictions/ensemble__blend.parquet")
    expected = pd.read_parquet("outputs/ensemble/blend/test.parquet")
    pd.testing.assert_frame_equal(blended, expected, check_exact=True)
    assert written.read_bytes() == Path("submissions/blend.csv").read_bytes()


def test_a_manifest_without_a_seed_is_refused():
    experiments = {"tiny@s0": {"weights": {}}, "tiny": {"seeds": SEED_EXPERIMENTS, "weights": {}}}
    with pytest.raises(DataError, match="'tiny' reads the predictions of 'tiny@s1'"):
        prediction_order(experiments)
    experiments["tiny@s1"] = {"weights": {}}
    assert prediction_order(experiments) == [*SEED_EXPERIMENTS, "tiny"]
