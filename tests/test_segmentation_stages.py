"""Segmentation through the stages: folds -> train -> infer -> submission on a tiny mosaic
competition (real photos, exact masks), a U-Net on timm's test_resnet."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from accelerate import Accelerator

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.demo.segmentation_data import score_submission
from medalist.errors import ConfigError
from medalist.modalities import get_modality
from medalist.modalities.segmentation import rle, store
from medalist.modalities.segmentation.data import WholeImages
from medalist.modalities.segmentation.postprocess import postprocess
from medalist.modalities.segmentation.predictions import predict_with_files
from medalist.modalities.segmentation.scoring import mean_score, score_table
from medalist.modalities.segmentation.submission import read_text_csv
from medalist.offline.predict import read_manifest, run_bundle
from medalist.tasks import build_task
from medalist.training.weights import load_weights
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


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture
def project(tmp_path):
    folder = segmentation_project(tmp_path)
    with working_directory(folder):
        yield folder


def _truth(cfg, ids) -> list[np.ndarray]:
    """The true masks of train ids, as the task reads them."""
    train = pd.read_csv("data/train.csv")
    task = build_task(cfg, train)
    masks = task.encode_targets(train)
    position = {str(i): row for row, i in enumerate(train["id"].astype(str))}
    return [np.asarray(masks[position[str(i)]]) for i in ids]


def test_folds_train_infer_submission_write_masks_scores_and_a_valid_rle_file(project):
    run_stages("folds", "train", "infer", "submission")
    cfg = resolve_config(CONFIG)
    train, test = pd.read_csv("data/train.csv"), pd.read_csv("data/test.csv")
    folds = pd.read_csv("folds/folds.csv")
    metrics = read_json(OUT / "metrics.json")
    assert metrics["main_metric"] == "dice" and metrics["complete"]
    assert set(metrics["cv"]) == {"dice", "iou"}
    # Each fold's OOF masks are its validation images, at their own size, in the store.
    for fold in (0, 1):
        ids, masks = store.read_masks(OUT / f"fold{fold}" / "oof.masks.safetensors")
        assert sorted(map(str, ids)) == sorted(folds.loc[folds["fold"] == fold, "id"].astype(str))
        assert all(m.shape == (1, 32, 32) for m in masks)
        # The fold's scores are those masks' scores against the true masks.
        scores = read_json(OUT / f"fold{fold}" / "scores.json")["scores"]
        table = score_table(np.stack(masks), np.stack(_truth(cfg, ids)), "binary")
        assert scores["dice"] == pytest.approx(mean_score(table), abs=1e-12)
    # The joined OOF is in train order; the CV is its score.
    ids, masks = store.read_masks(OUT / "oof.masks.safetensors")
    assert list(map(str, ids)) == list(train["id"].astype(str))
    table = score_table(np.stack(masks), np.stack(_truth(cfg, ids)), "binary")
    assert metrics["cv"]["dice"] == pytest.approx(mean_score(table), abs=1e-12)
    # The post-processing searched on OOF scores what it says, and at least the plain 0.5.
    chosen = read_json(OUT / "postprocess.json")
    assert metrics["cv_postprocessed"] == {"dice": chosen["score"]}
    assert 0.5 in chosen["searched"]["thresholds"] and 0 in chosen["searched"]["min_sizes"]
    assert chosen["score"] >= metrics["cv"]["dice"] - 1e-12
    # Test masks: each fold's, and their mean.
    ids, mean = store.read_masks(OUT / "test.masks.safetensors")
    assert list(map(str, ids)) == list(test["id"].astype(str))
    per_fold = [store.read_masks(OUT / f"fold{k}" / "test.masks.safetensors")[1] for k in (0, 1)]
    for i, m in enumerate(mean):
        assert np.abs(m - (per_fold[0][i] + per_fold[1][i]) / 2).max() <= 1.5 / 255
    # The submission: the sample's rows, RLE of the post-processed mean masks, scored.
    sub = read_text_csv(Path("submissions") / f"{EXPERIMENT}.csv", "submission")
    sample = read_text_csv("data/sample_submission.csv", "sample")
    assert list(sub.columns) == list(sample.columns) and list(sub["id"]) == list(sample["id"])
    for text, probs in zip(sub["rle_mask"], mean, strict=True):
        want = postprocess(probs[0], chosen["threshold"], chosen["min_size"], 8)
        assert (rle.decode(text, (32, 32), "column") == want).all()
    score = score_submission(
        Path("submissions") / f"{EXPERIMENT}.csv", project / "solution.csv", 32
    )
    assert 0.0 <= score <= 1.0


def test_the_loop_scores_validation_images_as_the_oof_masks_score(project):
    """The loop's Dice (pixel counts batch by batch) equals scoring the same model's masks."""
    run_stages("folds", "train")
    cfg = resolve_config(CONFIG)
    modality = get_modality("segmentation")
    train = pd.read_csv("data/train.csv")
    task = build_task(cfg, train)
    rows = np.flatnonzero(pd.read_csv("folds/folds.csv")["fold"].to_numpy() == 0)
    subset = train.iloc[rows].reset_index(drop=True)
    dataset = modality.build_dataset(cfg, subset, None, split="train", train=False, source="t")
    assert isinstance(dataset, WholeImages)
    accelerator = Accelerator(cpu=True)
    paths = [OUT / "fold0" / "model.safetensors"]
    masks = predict_with_files(cfg, task, modality, accelerator, paths, dataset, ["identity"])
    model = modality.build_model(cfg, task)
    model = load_weights(model, paths[0])
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=dataset.batch_sampler(3))
    scores, kept = task.evaluate(model, loader, task.encode_targets(subset), accelerator)
    assert kept is None and set(scores) == {"valid_loss", "dice", "iou"}
    table = score_table(np.stack(masks), np.stack(_truth(cfg, subset["id"])), "binary")
    assert scores["dice"] == pytest.approx(mean_score(table), abs=1e-9)
    # Whole images go through the model infer.batch_size at a time: the batch size does not
    # change a mask, and the identity view is one plain forward pass of each image (up to
    # float32 sums in another order, far below a stored level, 1/255).
    for batch_size in (1, 3):
        again = predict_with_files(
            resolve_config(CONFIG, [f"infer.batch_size={batch_size}"]),
            task,
            modality,
            accelerator,
            paths,
            dataset,
            ["identity"],
        )
        for a, b in zip(masks, again, strict=True):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    with torch.no_grad():
        for index, mask in enumerate(masks):
            plain = model.eval()(dataset[index]["input"][None]).sigmoid()[0]
            np.testing.assert_allclose(mask, plain.numpy(), rtol=0, atol=1e-5)


def test_a_finished_experiment_is_not_retrained_when_only_the_post_processing_changes(project):
    run_stages("folds", "train")
    before = (OUT / "fold0" / "model.safetensors").stat().st_mtime_ns
    run_stages("train", overrides=("segmentation.threshold=0.3", "segmentation.min_size=0"))
    assert (OUT / "fold0" / "model.safetensors").stat().st_mtime_ns == before
    chosen = read_json(OUT / "postprocess.json")
    assert (chosen["threshold"], chosen["min_size"]) == (0.3, 0)


def test_ema_tiles_and_views_flow_through_to_the_submission(project):
    overrides = (
        "tricks.ema.enabled=true",
        "segmentation.tile.size=32",
        "segmentation.tile.overlap=8",
        "infer.tta=[identity,hflip]",
    )
    run_stages("folds", "train", "infer", "submission", overrides=overrides)
    scores = read_json(OUT / "fold0" / "scores.json")
    assert scores["prediction_weights"] == ["ema.safetensors"]
    assert read_json(OUT / "infer.json")["tta"] == ["identity", "hflip"]
    assert (Path("submissions") / f"{EXPERIMENT}.csv").is_file()


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("tricks.mix.enabled=true", "tricks.mix"),
        ("tricks.loss.label_smoothing=0.1", "tricks.loss.label_smoothing"),
        ("pseudo.balance=true", "pseudo.balance"),
    ],
)
def test_what_does_not_fit_masks_is_refused_naming_its_key(project, override, key):
    with pytest.raises(ConfigError, match=key):
        resolve_config(CONFIG, [override])


def test_a_pseudo_round_trains_each_fold_on_its_own_teachers_test_masks(project, caplog):
    caplog.set_level(logging.INFO, logger="medalist")
    run_stages("folds", "train", "infer")
    assert main(["pseudo", "-c", CONFIG]) == 0
    record = read_json("outputs/pseudo/1/teachers.json")
    for fold in (0, 1):
        ids, labels = store.read_masks(Path(f"outputs/pseudo/1/fold{fold}.masks.safetensors"))
        # Fold k's labels are the fold-k teacher's test masks (it never saw fold k's images).
        teacher_ids, teacher = store.read_masks(OUT / f"fold{fold}" / "test.masks.safetensors")
        position = {image: k for k, image in enumerate(teacher_ids)}
        assert len(ids) == record["files"][f"fold{fold}"]["rows"] == 6
        for image, mask in zip(ids, labels, strict=True):
            assert np.abs(mask - teacher[position[image]]).max() <= 1.01 / 255
        table = pd.read_parquet(f"outputs/pseudo/1/fold{fold}.parquet")
        assert list(table["id"]) == list(ids) and (table["pseudo_weight"] == 1.0).all()
    run_stages("train", overrides=("train.pseudo_round=1", "train.experiment=student"))
    assert "fold 0: 6 pseudo-labelled test rows added to training" in caplog.text
    assert read_json(Path("outputs/student/metrics.json"))["complete"]
    # Hard masks of the most confident half, in a second round.
    assert (
        main(
            [
                "pseudo",
                "-c",
                CONFIG,
                "pseudo.round=2",
                "pseudo.mode=hard",
                "pseudo.max_fraction=0.5",
            ]
        )
        == 0
    )
    ids, labels = store.read_masks(Path("outputs/pseudo/2/fold0.masks.safetensors"))
    table = pd.read_parquet("outputs/pseudo/1/fold0.parquet").set_index("id")
    confident = table["confidence"].sort_values(ascending=False, kind="stable").index[:3]
    assert sorted(ids) == sorted(confident)
    assert all(set(np.unique(mask)) <= {0.0, 1.0} for mask in labels)
    # A label file changed after the pseudo stage wrote it is refused before training.
    store.write_masks(
        Path("outputs/pseudo/2/fold0.masks.safetensors"), ids, [1 - m for m in labels]
    )
    caplog.clear()
    assert main(["train", "-c", CONFIG, "train.pseudo_round=2", "train.experiment=tampered"]) != 0
    assert "changed since `medalist pseudo` wrote it" in caplog.text


def test_a_full_fit_needs_a_configured_threshold_for_its_submission(project):
    run_stages("folds", "train", "infer", overrides=("train.folds=[-1]",))
    assert main(["submission", "-c", CONFIG, "train.folds=[-1]"]) != 0
    run_stages(
        "submission",
        overrides=("train.folds=[-1]", "segmentation.threshold=0.5", "segmentation.min_size=0"),
    )


def test_the_offline_bundle_writes_the_same_rle_as_the_submission_stage(project, tmp_path):
    tiles = ("segmentation.tile.size=32", "segmentation.tile.overlap=8")
    overrides = ("infer.tta=[identity,vflip]", *tiles)
    run_stages("folds", "train", "infer", "submission", overrides=overrides)
    kaggle = kaggle_overrides(tmp_path, "someone/mosaics", "kaggle.timing_rows=3")
    assert main(["package", "-c", CONFIG, *overrides, *kaggle]) == 0
    bundle = Path("package/mosaics")
    manifest = read_manifest(bundle)
    entry = manifest["experiments"][EXPERIMENT]
    assert (bundle / "outputs" / EXPERIMENT / "postprocess.json").is_file()
    assert entry["infer"]["tta"] == ["identity", "vflip"]
    assert manifest["timing"]["estimated_seconds"] > 0  # the sample matched the local masks
    written = run_bundle(bundle, "local", environ={})
    offline = read_text_csv(written, "offline submission")
    local = read_text_csv(Path("submissions") / f"{EXPERIMENT}.csv", "local submission")
    assert offline.equals(local)
    # The bundle's masks are infer's, quantised alike.
    _, mine = store.read_masks(
        Path("outputs/offline/predictions") / f"{EXPERIMENT}.masks.safetensors"
    )
    _, theirs = store.read_masks(OUT / "test.masks.safetensors")
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))


def test_a_bundle_whose_masks_differ_from_infer_is_refused(project, tmp_path, caplog):
    run_stages("folds", "train", "infer")
    # Masks predicted with other views than the ones the bundle ships.
    ids, masks = store.read_masks(OUT / "test.masks.safetensors")
    store.write_masks(OUT / "test.masks.safetensors", ids, [np.flip(m, -1) for m in masks])
    kaggle = kaggle_overrides(tmp_path, "someone/mosaics", "kaggle.timing_rows=3")
    assert main(["package", "-c", CONFIG, *kaggle]) != 0
    assert f"{EXPERIMENT}: the bundle predicts other masks than" in caplog.text
    assert not Path("package/mosaics").exists()


def test_adversarial_validation_tells_images_apart_and_the_cv_scores_the_test_like_ones(project):
    """The train-versus-test run classifies images (the image modality on the same encoder);
    its test-like rows then get a CV of their own (cv_test_like) from the OOF masks."""
    adversarial = ["adversarial.n_splits=2", "adversarial.epochs=1"]
    assert main(["adversarial", "-c", CONFIG, *adversarial]) == 0
    folder = Path("outputs/adversarial") / EXPERIMENT
    result = read_json(folder / "adversarial.json")
    assert 0.0 <= result["auc"] <= 1.0
    assert resolve_config(folder / "config.yaml").modality == "image"
    flags = pd.read_csv(folder / "test_like.csv")
    run_stages("folds", "train", overrides=(f"folds.test_like={folder / 'test_like.csv'}",))
    metrics = read_json(OUT / "metrics.json")
    flagged = flags.loc[flags["test_like"] == 1, "id"].astype(str).tolist()
    assert metrics["test_like_rows"] == len(flagged) > 0
    ids, masks = store.read_masks(OUT / "oof.masks.safetensors")
    chosen = [i for i, image in enumerate(ids) if str(image) in flagged]
    cfg = resolve_config(CONFIG)
    truth = _truth(cfg, [ids[i] for i in chosen])
    table = score_table(np.stack([masks[i] for i in chosen]), np.stack(truth), "binary")
    assert metrics["cv_test_like"]["dice"] == pytest.approx(mean_score(table), abs=1e-12)


def test_run_skips_what_is_up_to_date_and_resubmits_new_test_masks(project, caplog):
    caplog.set_level(logging.INFO, logger="medalist")
    assert main(["run", "-c", CONFIG]) == 0
    caplog.clear()
    assert main(["run", "-c", CONFIG]) == 0
    for stage in ("train", "infer", "submission"):
        assert f"{stage}: up to date, skipped" in caplog.text, stage
    before = (Path("submissions") / f"{EXPERIMENT}.csv").stat().st_mtime_ns
    caplog.clear()
    assert main(["run", "-c", CONFIG, "infer.tta=[identity,hflip]"]) == 0
    assert "train: up to date, skipped" in caplog.text
    assert "infer: running" in caplog.text and "submission: running" in caplog.text
    assert (Path("submissions") / f"{EXPERIMENT}.csv").stat().st_mtime_ns > before
