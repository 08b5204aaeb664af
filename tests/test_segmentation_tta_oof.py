"""``infer.tta_oof`` for masks: the OOF images predicted again with the views, CV without and with
TTA, and the threshold and minimum size searched on those masks applied by the submission (local
and offline) only while they belong to the test masks of the last ``infer``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from accelerate import Accelerator

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.modalities import get_modality
from medalist.modalities.segmentation import rle, store
from medalist.modalities.segmentation.postprocess import postprocess
from medalist.modalities.segmentation.predictions import predict_with_files
from medalist.modalities.segmentation.scoring import mean_score, score_table
from medalist.modalities.segmentation.submission import read_text_csv
from medalist.offline.predict import run_bundle
from medalist.tasks import build_task
from support.bundles import kaggle_overrides
from support.segmentation_project import (
    CONFIG,
    EXPERIMENT,
    read_json,
    run_stages,
    segmentation_project,
)
from support.threads import one_thread

OUT = Path("outputs") / EXPERIMENT
VIEWS = ("infer.tta=[identity,hflip]",)
TTA = (*VIEWS, "infer.tta_oof=true")
SUBMISSION = Path("submissions") / f"{EXPERIMENT}.csv"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project trained (one epoch) and inferred with two views and ``tta_oof``."""
    with one_thread():
        folder = segmentation_project(tmp_path_factory.mktemp("tta_oof"))
        with working_directory(folder):
            run_stages("folds", "train", overrides=("train.epochs=1",))
            run_stages("infer", overrides=TTA)
            yield folder


def _truth(ids) -> list[np.ndarray]:
    """The true masks of train ids, as the task reads them."""
    train = pd.read_csv("data/train.csv")
    masks = build_task(resolve_config(CONFIG), train).encode_targets(train)
    position = {str(i): row for row, i in enumerate(train["id"].astype(str))}
    return [np.asarray(masks[position[str(i)]]) for i in ids]


def _submitted_masks() -> list[np.ndarray]:
    sub = read_text_csv(SUBMISSION, "submission")
    return [rle.decode(text, (32, 32), "column") for text in sub["rle_mask"]]


def _expected_masks(choice: dict) -> list[np.ndarray]:
    """The mean test masks post-processed as ``choice`` says."""
    _, mean = store.read_masks(OUT / "test.masks.safetensors")
    return [postprocess(p[0], choice["threshold"], choice["min_size"], 8) for p in mean]


def _with_other_choice(report: dict, plain: dict) -> dict:
    """``report`` whose TTA choice differs from ``plain``'s, so that which one the submission
    applies shows in its masks."""
    threshold = 0.9 if plain["threshold"] < 0.7 else 0.1
    return {**report, "postprocess": {**report["postprocess"], "threshold": threshold}}


def test_the_oof_masks_are_predicted_again_with_the_views_and_scored(project):
    train = pd.read_csv("data/train.csv")
    report = read_json(OUT / "tta.json")
    assert report["views"] == ["identity", "hflip"] and report["merge"] == "mean"
    assert report["infer"] == read_json(OUT / "infer.json")
    # Train order, as the plain OOF masks; cv is theirs, cv_tta the written TTA masks'.
    ids, masks = store.read_masks(OUT / "oof_tta.masks.safetensors")
    assert list(map(str, ids)) == list(train["id"].astype(str))
    truth = np.stack(_truth(ids))
    assert report["cv"] == read_json(OUT / "metrics.json")["cv"]
    for metric in ("dice", "iou"):
        table = score_table(np.stack(masks), truth, "binary", metric=metric)
        assert report["cv_tta"][metric] == pytest.approx(mean_score(table), abs=1e-12)
    # The post-processing searched on them scores what it says.
    chosen = report["postprocess"]
    hard = np.stack([postprocess(m, chosen["threshold"], chosen["min_size"], 8) for m in masks])
    table = score_table(hard.astype(np.float32), truth, "binary")
    assert chosen["metric"] == "dice"
    assert chosen["score"] == pytest.approx(mean_score(table), abs=1e-12)
    # Fold 0's images are its prediction weights' masks with both views, not the plain ones.
    cfg = resolve_config(CONFIG, list(VIEWS))
    folds = pd.read_csv("folds/folds.csv")
    subset = train.loc[folds["fold"].to_numpy() == 0].reset_index(drop=True)
    modality = get_modality("segmentation")
    dataset = modality.build_dataset(cfg, subset, None, split="train", train=False, source="t")
    paths = [
        OUT / "fold0" / name for name in read_json(OUT / "fold0/scores.json")["prediction_weights"]
    ]
    task = build_task(cfg, train)
    views = ["identity", "hflip"]
    want = predict_with_files(cfg, task, modality, Accelerator(cpu=True), paths, dataset, views)
    position = {str(i): k for k, i in enumerate(ids)}
    got = [masks[position[str(i)]] for i in subset["id"]]
    assert max(np.abs(g - w).max() for g, w in zip(got, want, strict=True)) <= store.ERROR_BOUND
    _, plain = store.read_masks(OUT / "oof.masks.safetensors")
    assert any(not np.allclose(a, b) for a, b in zip(plain, masks, strict=True))


def test_the_submission_applies_the_choice_searched_on_the_tta_oof_masks(project):
    report = read_json(OUT / "tta.json")
    plain = read_json(OUT / "postprocess.json")
    run_stages("submission")
    for got, want in zip(_submitted_masks(), _expected_masks(report["postprocess"]), strict=True):
        assert (got == want).all()
    # A TTA choice other than train's: the submission follows it.
    changed = _with_other_choice(report, plain)
    (OUT / "tta.json").write_text(json.dumps(changed))
    try:
        run_stages("submission")
        masks, want = _submitted_masks(), _expected_masks(changed["postprocess"])
        assert all((g == w).all() for g, w in zip(masks, want, strict=True))
        assert any((g != w).any() for g, w in zip(masks, _expected_masks(plain), strict=True))
    finally:
        (OUT / "tta.json").write_text(json.dumps(report))


def test_the_offline_bundle_applies_the_same_choice_as_the_local_submission(project, tmp_path):
    report, plain = read_json(OUT / "tta.json"), read_json(OUT / "postprocess.json")
    changed = _with_other_choice(report, plain)
    (OUT / "tta.json").write_text(json.dumps(changed))
    try:
        run_stages("submission")
        kaggle = kaggle_overrides(tmp_path, "someone/mosaics", "kaggle.timing_rows=3")
        assert main(["package", "-c", CONFIG, *VIEWS, *kaggle]) == 0
        shipped = Path("package/mosaics/outputs") / EXPERIMENT
        assert (shipped / "tta.json").is_file() and (shipped / "infer.json").is_file()
        offline = read_text_csv(run_bundle(Path("package/mosaics"), "local", environ={}), "off")
        assert offline.equals(read_text_csv(SUBMISSION, "local submission"))
        want = _expected_masks(changed["postprocess"])
        for text, mask in zip(offline["rle_mask"], want, strict=True):
            assert (rle.decode(text, (32, 32), "column") == mask).all()
    finally:
        (OUT / "tta.json").write_text(json.dumps(report))


def test_a_choice_searched_with_other_views_than_the_test_masks_is_not_applied(project, caplog):
    settings = read_json(OUT / "infer.json")
    report, plain = read_json(OUT / "tta.json"), read_json(OUT / "postprocess.json")
    (OUT / "tta.json").write_text(json.dumps(_with_other_choice(report, plain)))
    (OUT / "infer.json").write_text(json.dumps({**settings, "tta": ["identity"]}))
    try:
        run_stages("submission")
        for got, want in zip(_submitted_masks(), _expected_masks(plain), strict=True):
            assert (got == want).all()
        assert "searched with other infer settings (['tta'])" in caplog.text
    finally:
        (OUT / "tta.json").write_text(json.dumps(report))
        (OUT / "infer.json").write_text(json.dumps(settings))


def test_infer_without_tta_oof_goes_back_to_the_plain_choice(project, caplog):
    caplog.set_level(logging.INFO, logger="medalist")
    report, plain = read_json(OUT / "tta.json"), read_json(OUT / "postprocess.json")
    (OUT / "tta.json").write_text(json.dumps(_with_other_choice(report, plain)))
    run_stages("infer", overrides=VIEWS)  # the same views, no tta_oof: the earlier TTA OOF files go
    assert not (OUT / "tta.json").exists()
    assert not (OUT / "oof_tta.masks.safetensors").exists()
    run_stages("submission")
    for got, want in zip(_submitted_masks(), _expected_masks(plain), strict=True):
        assert (got == want).all()
    # With tta_oof again, the choice comes back, searched anew.
    run_stages("infer", overrides=TTA)
    assert read_json(OUT / "tta.json")["postprocess"] == report["postprocess"]
    assert "CV without TTA" in caplog.text
