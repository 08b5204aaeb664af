"""The offline bundle of a stacked tabular experiment (``tabular.oof_features``): a LightGBM
model on a linear member's predictions. The bundle carries the member even when only the stacker
is named, predicts it first from its own packaged weights (the table ``infer`` writes, under the
run's working folder), feeds that to the stacker, and writes the local submission again, alone
or in a packaged blend that has both as members (each predicted once). The run reads neither the
training machine's ``outputs/`` nor its folds; a member trained on other folds is refused when
packaging.
"""

import json
import shutil
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from medalist.config import Config
from medalist.demo.digits import working_directory
from medalist.ensemble import stage as ensemble_stage
from medalist.errors import ConfigError, DataError, FoldsMismatchError
from medalist.offline import package
from medalist.offline.predict import MANIFEST, read_manifest, run_bundle
from medalist.prediction import infer
from medalist.submission import stage as submission_stage
from medalist.training import stage as train_stage
from support.bundles import stub_wheel
from support.tables import table_cfg, write_table_competition, write_table_folds

DATASET = "tester/stacked-offline"
MEMBER = ("tabular.model=linear", "train.experiment=member")
STACKER = ("tabular.oof_features=[member]", "train.experiment=stacker")
# Listed features: the member's column is added to them by its task.json.
PICKY = ("tabular.oof_features=[member]", "train.experiment=picky", "tabular.features=[shade]")


def _cfg(root: Path, experiment: tuple[str, ...], out: Path, *extra: str) -> Config:
    """The experiment's config, packaged into ``out``."""
    linear = "tabular.model=linear" in experiment
    return table_cfg(
        root,
        *experiment,
        "tabular.rounds=60",
        f"kaggle.medalist_wheel={stub_wheel(root)}",
        "kaggle.project_wheel=false",
        f"kaggle.output_dir={out / 'package'}",
        f"kaggle.dataset_id={DATASET}",
        "kaggle.timing_rows=16",
        "ensemble.experiments=[stacker, member]",
        *extra,
        threads=None if linear else 1,
    )


@pytest.fixture(scope="module")
def stacked(tmp_path_factory) -> Path:
    """The table competition with a linear member and two LightGBM stackers on its predictions
    (on every column, or on listed ones), 3 folds each, trained, inferred and submitted, and two
    blends of the member and the first stacker."""
    root = tmp_path_factory.mktemp("stacked")
    write_table_competition(root)
    write_table_folds(table_cfg(root))
    for experiment in (MEMBER, STACKER, PICKY):
        cfg = _cfg(root, experiment, root)
        train_stage.run(cfg)
        infer.run(cfg)
        submission_stage.run(cfg)
    for method in ("hill_climb", "weighted"):
        cfg = _cfg(root, STACKER, root, f"ensemble.name={method}", f"ensemble.method={method}")
        ensemble_stage.run(cfg, cfg.ensemble)
    return root


def _package(cfg: Config, where: Path) -> Path:
    with working_directory(where):
        return package.run(cfg)


@contextmanager
def _training_files_away(root: Path):
    """The training machine's outputs and folds out of reach, as on Kaggle."""
    moved = [(root / name, root / f"{name}.away") for name in ("outputs", "folds")]
    for here, away in moved:
        here.rename(away)
    try:
        yield
    finally:
        for here, away in moved:
            away.rename(here)


def _run_offline(bundle: Path, working: Path, root: Path) -> Path:
    with _training_files_away(root):
        return run_bundle(bundle, "local", environ={"MEDALIST_WORKING": str(working)})


def _local(root: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(root / "outputs" / name / "test.parquet")


def _predicted(working: Path) -> Counter:
    """How many folds of each experiment the run predicted (offline.json)."""
    report = json.loads((working / "offline.json").read_text())
    return Counter(model["experiment"] for model in report["models"])


def test_bundle_of_a_stacker_predicts_its_member_first_and_writes_the_local_submission(
    stacked, tmp_path
):
    bundle = _package(_cfg(stacked, STACKER, tmp_path), tmp_path)
    manifest = read_manifest(bundle)
    # The member comes along although only the stacker was named, and is predicted first.
    assert list(manifest["experiments"]) == ["member", "stacker"]
    assert manifest["prediction"] == "stacker"
    entry = manifest["experiments"]["stacker"]
    assert entry["stacks"] == ["member"]
    assert entry["paths"]["competition.folds_dir"] == "folds"
    assert manifest["experiments"]["member"].get("stacks", []) == []
    assert manifest["experiments"]["member"]["learners"] == ["linear"]
    assert (bundle / "folds" / "folds.json").is_file()
    # Only weights and configs: no prediction table of the training machine.
    assert not list(bundle.rglob("*.parquet"))
    timing = json.loads((bundle / "timing.json").read_text())
    assert Counter(m["experiment"] for m in timing["models"]) == {"member": 3, "stacker": 3}

    working = tmp_path / "offline"
    written = _run_offline(bundle, working, stacked)
    # The member's test predictions as `infer` wrote them, then the stacker's on top of them.
    member = pd.read_parquet(working / "stacked" / "member" / "test.parquet")
    pd.testing.assert_frame_equal(member, _local(stacked, "member"), check_exact=True)
    offline = pd.read_parquet(working / "predictions" / "stacker.parquet")
    pd.testing.assert_frame_equal(offline, _local(stacked, "stacker"), check_exact=True)
    assert written.read_bytes() == (stacked / "submissions" / "stacker.csv").read_bytes()
    assert _predicted(working) == {"member": 3, "stacker": 3}


def test_a_stacker_on_listed_features_reads_the_members_columns_from_its_task(stacked, tmp_path):
    bundle = _package(_cfg(stacked, PICKY, tmp_path, "kaggle.timing_rows=0"), tmp_path)
    working = tmp_path / "offline"
    written = _run_offline(bundle, working, stacked)
    spec = json.loads((bundle / "outputs" / "picky" / "fold0" / "features.json").read_text())
    assert spec["columns"] == ["shade", "member.p_malignant"]
    offline = pd.read_parquet(working / "predictions" / "picky.parquet")
    pd.testing.assert_frame_equal(offline, _local(stacked, "picky"), check_exact=True)
    assert written.read_bytes() == (stacked / "submissions" / "picky.csv").read_bytes()


@pytest.mark.parametrize("method", ["hill_climb", "weighted"])
def test_packaged_blend_of_a_stacker_and_its_member_predicts_each_once(stacked, tmp_path, method):
    bundle = _package(_cfg(stacked, STACKER, tmp_path, f"kaggle.ensemble={method}"), tmp_path)
    manifest = read_manifest(bundle)
    assert list(manifest["experiments"]) == ["member", "stacker"]
    members = [m["experiments"] for m in manifest["ensemble"]["members"]]
    assert members == [["stacker"], ["member"]]
    working = tmp_path / "offline"
    written = _run_offline(bundle, working, stacked)
    assert _predicted(working) == {"member": 3, "stacker": 3}
    blended = pd.read_parquet(working / "predictions" / f"ensemble__{method}.parquet")
    local = pd.read_parquet(stacked / "outputs" / "ensemble" / method / "test.parquet")
    pd.testing.assert_frame_equal(blended, local, check_exact=True)
    assert written.read_bytes() == (stacked / "submissions" / f"{method}.csv").read_bytes()


def test_a_member_trained_on_other_folds_is_refused_when_packaging(stacked, tmp_path):
    """The member's config names a folds manifest with other hashes: refused before any file of
    the bundle is written."""
    copy = tmp_path / "copy"
    shutil.copytree(stacked / "outputs", copy / "outputs")
    record = json.loads((stacked / "folds" / "folds.json").read_text())
    other = tmp_path / "other_folds"
    other.mkdir()
    (other / "folds.json").write_text(json.dumps({**record, "folds_sha256": "0" * 64}))
    config = copy / "outputs" / "member" / "config.yaml"
    config.write_text(config.read_text().replace(str(stacked / "folds"), str(other)))
    cfg = _cfg(stacked, STACKER, tmp_path, f"competition.outputs_dir={copy / 'outputs'}")
    with pytest.raises(FoldsMismatchError, match="'member'.*other folds"):
        _package(cfg, tmp_path)
    assert not (tmp_path / "package").exists() or not any((tmp_path / "package").iterdir())


def test_a_stacker_without_its_member_in_the_bundle_stops_before_predicting(stacked, tmp_path):
    bundle = _package(_cfg(stacked, STACKER, tmp_path, "kaggle.timing_rows=0"), tmp_path)
    path = bundle / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["experiments"].pop("member")  # as a hand-edited manifest
    path.write_text(json.dumps(manifest))
    working = tmp_path / "offline"
    with pytest.raises(DataError, match="stacker.*'member'.*not in the bundle"):
        _run_offline(bundle, working, stacked)
    assert not (working / "stacked").exists()


def test_a_stacking_cycle_is_refused(stacked, tmp_path):
    """Experiments that stack on each other cannot be predicted in any order."""
    copy = tmp_path / "copy"
    shutil.copytree(stacked / "outputs", copy / "outputs")
    config = copy / "outputs" / "member" / "config.yaml"
    config.write_text(config.read_text().replace("oof_features: []", "oof_features:\n  - stacker"))
    cfg = _cfg(stacked, STACKER, tmp_path, f"competition.outputs_dir={copy / 'outputs'}")
    with pytest.raises(ConfigError, match="cycle"):
        _package(cfg, tmp_path)
