"""Segmentation ensembles: members' probability masks blended (mean, hill climbing), scored
in-sample and nested, written as mask files and an RLE submission, on a tiny mosaic competition."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.ensemble import stage
from medalist.errors import ConfigError, DataError, FoldsMismatchError
from medalist.modalities.segmentation import store
from medalist.modalities.segmentation.scoring import mean_score, score_table
from medalist.modalities.segmentation.submission import read_text_csv
from medalist.offline.predict import read_manifest, run_bundle
from medalist.tasks import build_task
from support.bundles import kaggle_overrides
from support.segmentation_project import CONFIG, read_json, run_stages, segmentation_project
from support.threads import one_thread

OUT = Path("outputs")
MEMBERS = ("a", "b", "zeros")


def _write_zeros_member() -> None:
    """A third member predicting nothing anywhere: experiment a's folder with its masks zeroed."""
    shutil.copytree(OUT / "a", OUT / "zeros")
    for path in (OUT / "zeros").rglob("*.masks.safetensors"):
        ids, masks = store.read_masks(path)
        store.write_masks(path, ids, [np.zeros_like(m) for m in masks])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two trained experiments (a, b) and a zero member, in one project for the module."""
    with one_thread():
        folder = segmentation_project(tmp_path_factory.mktemp("mask_ensemble"))
        with working_directory(folder):
            run_stages("folds")
            run_stages("train", "infer", overrides=("train.experiment=a", "train.epochs=6"))
            run_stages(
                "train",
                "infer",
                overrides=("train.experiment=b", "train.epochs=6", "train.lr=1e-3"),
            )
            _write_zeros_member()
    return folder


@pytest.fixture
def project(trained):
    with working_directory(trained):
        yield trained


def _ensemble(name: str, *overrides: str, members=MEMBERS) -> Path:
    listed = ",".join(members)
    args = [f"ensemble.experiments=[{listed}]", f"ensemble.name={name}", *overrides]
    assert main(["ensemble", "-c", CONFIG, *args]) == 0
    return OUT / "ensemble" / name


def _config(*overrides: str):
    return resolve_config(CONFIG, [f"ensemble.experiments=[{','.join(MEMBERS)}]", *overrides])


def _levels(path) -> list[np.ndarray]:
    return store.read_quantised(path)[1]


def _weighted(levels: list[list[np.ndarray]], weights: list[float]) -> list[np.ndarray]:
    return [
        sum(w * m[i].astype(np.float64) for w, m in zip(weights, levels, strict=True)) / 255
        for i in range(len(levels[0]))
    ]


def _truth() -> list[np.ndarray]:
    cfg = resolve_config(CONFIG)
    train = pd.read_csv("data/train.csv")
    masks = build_task(cfg, train).encode_targets(train)
    return [np.asarray(masks[i]) for i in range(len(train))]


def test_hill_climbing_writes_a_blend_of_the_members_and_a_valid_submission(project):
    folder = _ensemble("blend", "ensemble.method=hill_climb")
    for name in ("weights.json", "cv.json", "postprocess.json", "task.json", "config.yaml"):
        assert (folder / name).is_file(), name
    assert (folder / "ensemble.yaml").is_file()
    weights = read_json(folder / "weights.json")
    cv = read_json(folder / "cv.json")
    names = list(weights["weights"])
    assert names == list(MEMBERS)
    w = np.array([weights["weights"][n] for n in names])
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0, abs=1e-12)
    # The test masks are the members' test masks blended with the in-sample weights.
    test_ids, test = store.read_masks(folder / "test.masks.safetensors")
    assert list(map(str, test_ids)) == list(pd.read_csv("data/test.csv")["id"].astype(str))
    members = [_levels(OUT / n / "test.masks.safetensors") for n in names]
    for got, want in zip(test, _weighted(members, w), strict=True):
        assert np.abs(got - want).max() <= 1 / 255
    # The OOF masks are the nested blend: each fold's images with the weights fitted without it.
    folds = pd.read_csv("folds/folds.csv")["fold"].to_numpy()
    oof_ids, oof = store.read_masks(folder / "oof.masks.safetensors")
    assert list(map(str, oof_ids)) == list(pd.read_csv("data/train.csv")["id"].astype(str))
    members = [_levels(OUT / n / "oof.masks.safetensors") for n in names]
    assert set(weights["nested"]) == {"0", "1"}
    for fold, fold_weights in weights["nested"].items():
        blended = _weighted(members, [fold_weights[n] for n in names])
        for i in np.flatnonzero(folds == int(fold)):
            assert np.abs(oof[i] - blended[i]).max() <= 1 / 255
    # In-sample Dice, computed here from the stored levels and the pick counts.
    picks = np.array([weights["selection"].count(n) for n in names])
    assert np.allclose(picks / picks.sum(), w, atol=1e-12)
    blend = [
        sum(int(c) * m[i].astype(np.int64) for c, m in zip(picks, members, strict=True))
        / (picks.sum() * 255.0)
        for i in range(len(members[0]))
    ]
    table = score_table(np.stack(blend), np.stack(_truth()), "binary")
    assert cv["in_sample"]["cv"]["dice"] == pytest.approx(mean_score(table), abs=1e-12)
    # The climb starts from the best member, so in-sample it scores at least that.
    best = max(read_json(OUT / n / "metrics.json")["cv"]["dice"] for n in ("a", "b"))
    assert cv["members"]["a"]["cv"]["dice"] == pytest.approx(
        read_json(OUT / "a" / "metrics.json")["cv"]["dice"], abs=1e-12
    )
    assert cv["in_sample"]["cv"]["dice"] >= best - 1e-12
    member_cv = {n: cv["members"][n]["cv"]["dice"] for n in names}
    assert weights["selection"][0] == max(names, key=member_cv.__getitem__)
    assert set(cv["nested"]["cv"]) == {"dice", "iou"} and set(cv["nested"]["folds"]) == {"0", "1"}
    assert cv["optimised_metric"] == "dice" and cv["learns_from_labels"]
    assert read_json(folder / "postprocess.json")["metric"] == "dice"
    # The submission: the sample's rows, RLE masks that fit the test images.
    assert main(["validate", "submissions/blend.csv", "-c", CONFIG]) == 0


def test_the_mean_weighs_every_member_equally_in_and_out_of_sample(project):
    folder = _ensemble("mean", "ensemble.method=mean", "ensemble.submit=false")
    weights = read_json(folder / "weights.json")
    assert weights["weights"] == pytest.approx({n: 1 / 3 for n in MEMBERS})
    cv = read_json(folder / "cv.json")
    assert cv["in_sample"]["cv"] == cv["nested"]["cv"]
    assert not cv["learns_from_labels"]
    assert not Path("submissions/mean.csv").exists()
    # A blend with a member predicting nothing scores as that member at a third of the weight.
    members = [_levels(OUT / n / "oof.masks.safetensors") for n in MEMBERS]
    table = score_table(np.stack(_weighted(members, [1 / 3] * 3)), np.stack(_truth()), "binary")
    assert cv["in_sample"]["cv"]["dice"] == pytest.approx(mean_score(table), abs=1e-12)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("ensemble.method=stack", "ensemble.method"),
        ("ensemble.method=weighted", "ensemble.method"),
        ("ensemble.metric=accuracy", "ensemble.metric"),
        ("ensemble.experiments=[[a,b]]", "ensemble.experiments"),
        ("ensemble.experiments=[]", "ensemble.experiments"),
    ],
)
def test_what_cannot_blend_masks_is_refused_naming_its_key(project, override, key):
    cfg = _config(override)
    with pytest.raises(ConfigError, match=key):
        stage.run(cfg, cfg.ensemble)


def test_a_member_without_test_masks_is_named(project):
    shutil.copytree(OUT / "b", OUT / "no_test", dirs_exist_ok=True)
    (OUT / "no_test" / "test.masks.safetensors").unlink()
    cfg = resolve_config(CONFIG, ["ensemble.experiments=[a,no_test]", "ensemble.name=broken"])
    with pytest.raises(DataError, match="experiment 'no_test'.*run `medalist infer`"):
        stage.run(cfg, cfg.ensemble)
    assert not (OUT / "ensemble" / "broken").exists()


def test_a_member_with_other_images_is_named(project):
    shutil.copytree(OUT / "b", OUT / "fewer", dirs_exist_ok=True)
    ids, masks = store.read_masks(OUT / "fewer" / "oof.masks.safetensors")
    store.write_masks(OUT / "fewer" / "oof.masks.safetensors", ids[1:], masks[1:])
    cfg = resolve_config(CONFIG, ["ensemble.experiments=[a,fewer]", "ensemble.name=broken"])
    with pytest.raises(DataError, match="experiment 'fewer'.*train.csv"):
        stage.run(cfg, cfg.ensemble)


def test_a_folder_without_config_is_checked_by_its_fold_files(project):
    shutil.copytree(OUT / "b", OUT / "foreign", dirs_exist_ok=True)
    (OUT / "foreign" / "config.yaml").unlink()
    cfg = resolve_config(
        CONFIG,
        ["ensemble.experiments=[a,foreign]", "ensemble.name=foreign", "ensemble.submit=false"],
    )
    assert stage.run(cfg, cfg.ensemble)["weights"]["method"] == "hill_climb"
    # Its fold files swapped: the masks of fold 0 claim fold 1's images.
    fold0, fold1 = (OUT / "foreign" / f"fold{k}" / "oof.masks.safetensors" for k in (0, 1))
    moved = fold0.with_suffix(".tmp")
    fold0.rename(moved)
    fold1.rename(fold0)
    moved.rename(fold1)
    with pytest.raises(FoldsMismatchError, match="experiment 'foreign'.*other folds"):
        stage.run(cfg, cfg.ensemble)


@pytest.fixture
def single_thread():
    with one_thread():
        yield


def test_the_bundle_of_a_mask_ensemble_writes_the_ensembles_submission(
    project, tmp_path, single_thread
):
    # A mean of two members: half levels everywhere, where a blend computed another way would
    # round some pixels the other way. One thread, as the members predicted their test masks
    # (another thread count sums convolutions in another order: other last bits).
    _ensemble("pair", "ensemble.method=mean", members=("a", "b"))
    kaggle = kaggle_overrides(tmp_path, "someone/mosaics", "kaggle.timing_rows=3")
    assert main(["package", "-c", CONFIG, *kaggle, "kaggle.ensemble=pair"]) == 0
    manifest = read_manifest(Path("package/mosaics"))
    assert [m["picks"] for m in manifest["ensemble"]["members"]] == [1, 1]
    written = run_bundle(Path("package/mosaics"), "local", environ={})
    offline = read_text_csv(written, "offline submission")
    assert offline.equals(read_text_csv("submissions/pair.csv", "local submission"))
    _, mine = store.read_quantised(
        Path("outputs/offline/predictions/ensemble__pair.masks.safetensors")
    )
    _, theirs = store.read_quantised(OUT / "ensemble" / "pair" / store.TEST_MASKS)
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))
