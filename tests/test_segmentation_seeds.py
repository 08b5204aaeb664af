"""Seeds as a distribution for masks (``train.seeds``): each seed trains and predicts as its own
experiment, and ``outputs/<experiment>/`` holds the seed-averaged masks, scored and post-processed
as one experiment's, which the submission, an ensemble and a pseudo round read."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.errors import DataError
from medalist.folds import load_folds
from medalist.honest.seeds import average_oof, average_tests
from medalist.modalities.segmentation import rle, store
from medalist.modalities.segmentation.postprocess import postprocess
from medalist.modalities.segmentation.scoring import mean_score, score_table
from medalist.modalities.segmentation.submission import read_text_csv
from medalist.offline.predict import read_manifest, run_bundle
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

SEEDS = ("train.seeds=[0,1]", "train.epochs=1")
OUT = Path("outputs")
AVERAGED = OUT / EXPERIMENT
SEED_FOLDERS = [OUT / f"{EXPERIMENT}@s{seed}" for seed in (0, 1)]
# A mean of two stored masks, stored again, is within half a level of the exact mean.
HALF_LEVEL = store.ERROR_BOUND + 1e-6


def _run(*stages: str, overrides: tuple[str, ...] = SEEDS) -> None:
    run_stages(*stages, overrides=overrides)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A project whose experiment trained, predicted and submitted with seeds 0 and 1."""
    with one_thread():
        folder = segmentation_project(tmp_path_factory.mktemp("mask_seeds"))
        with working_directory(folder):
            _run("folds", overrides=())
            _run("train", "infer", "submission")
    return folder


@pytest.fixture
def project(seeded):
    with working_directory(seeded):
        yield seeded


def _truth(cfg) -> list[np.ndarray]:
    train = pd.read_csv("data/train.csv")
    masks = build_task(cfg, train).encode_targets(train)
    return [np.asarray(masks[i]) for i in range(len(train))]


def _score(probs: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return mean_score(score_table(np.stack(probs), np.stack(truth), "binary"))


def _assert_mean_of_seeds(name: str) -> tuple[list, list[np.ndarray]]:
    """The averaged experiment's mask file ``name`` is each image's mean of the seeds' files."""
    ids, averaged = store.read_masks(AVERAGED / name)
    per_seed = [store.read_masks(folder / name) for folder in SEED_FOLDERS]
    assert all(seed_ids == ids for seed_ids, _ in per_seed)
    seed_0, seed_1 = (masks for _, masks in per_seed)
    assert any((a != b).any() for a, b in zip(seed_0, seed_1, strict=True))  # the seeds differ
    for mask, a, b in zip(averaged, seed_0, seed_1, strict=True):
        assert np.abs(mask - (a + b) / 2).max() <= HALF_LEVEL
    return ids, averaged


def test_the_averaged_oof_masks_are_scored_and_post_processed_as_one_experiments(project):
    cfg = resolve_config(CONFIG, list(SEEDS))
    train = pd.read_csv("data/train.csv")
    folds = pd.read_csv("folds/folds.csv").set_index("id").loc[train["id"], "fold"].to_numpy()
    for name in ("config.yaml", "task.json", "metrics.json", "postprocess.json"):
        assert (AVERAGED / name).is_file(), name
    ids, masks = _assert_mean_of_seeds(store.OOF_MASKS)
    assert list(map(str, ids)) == list(train["id"].astype(str))  # train order
    truth = _truth(cfg)

    metrics = read_json(AVERAGED / "metrics.json")
    assert metrics["seeds"] == [0, 1] and metrics["complete"]
    assert metrics["seed_experiments"] == [f.name for f in SEED_FOLDERS]
    seed_dice = [read_json(f / "metrics.json")["cv"]["dice"] for f in SEED_FOLDERS]
    assert [metrics["seed_cv"][s]["dice"] for s in ("0", "1")] == seed_dice
    assert metrics["seed_mean"]["dice"] == pytest.approx(np.mean(seed_dice))
    assert metrics["seed_std"]["dice"] == pytest.approx(np.std(seed_dice, ddof=1))
    # The averaged model's CV and per-fold scores are those of the stored averaged masks.
    assert metrics["cv"]["dice"] == pytest.approx(_score(masks, truth), abs=1e-12)
    for fold in (0, 1):
        rows = np.flatnonzero(folds == fold)
        want = _score([masks[r] for r in rows], [truth[r] for r in rows])
        assert metrics["folds"][str(fold)]["dice"] == pytest.approx(want, abs=1e-12)
    assert metrics["fold_mean"]["dice"] == pytest.approx(
        np.mean([metrics["folds"][f]["dice"] for f in ("0", "1")])
    )
    assert set(metrics["fold_std"]) == {"dice", "iou"} and metrics["seconds"] > 0
    # The threshold and minimum size are searched on the averaged masks, and score what they say.
    chosen = read_json(AVERAGED / "postprocess.json")
    assert metrics["cv_postprocessed"] == {"dice": chosen["score"]}
    kept = [
        postprocess(m, chosen["threshold"], chosen["min_size"], 8).astype(np.float32) for m in masks
    ]
    assert chosen["score"] == pytest.approx(_score(kept, truth), abs=1e-12)
    assert chosen["score"] >= metrics["cv"]["dice"] - 1e-12
    ledger = pd.read_csv(OUT / "ledger.csv", dtype={"seed": str})
    assert ledger["seed"].tolist()[-1] == "mean(0,1)"


def test_infer_averages_the_seeds_test_masks_and_the_submission_applies_their_choice(project):
    cfg = resolve_config(CONFIG, list(SEEDS))
    ids, mean = _assert_mean_of_seeds(store.TEST_MASKS)
    assert list(map(str, ids)) == list(pd.read_csv("data/test.csv")["id"].astype(str))
    assert read_json(AVERAGED / "infer.json")["tta"] == ["identity"]
    path = Path("submissions") / f"{EXPERIMENT}.csv"
    build_task(cfg, None).own_predictions.validate_file(cfg, path)
    sub = read_text_csv(path, "submission")
    chosen = read_json(AVERAGED / "postprocess.json")
    for text, probs in zip(sub["rle_mask"], mean, strict=True):
        want = postprocess(probs[0], chosen["threshold"], chosen["min_size"], 8)
        assert (rle.decode(text, (32, 32), "column") == want).all()


def test_the_averaged_experiment_is_an_ensemble_member_and_a_pseudo_teacher(project):
    members = f"ensemble.experiments=[{EXPERIMENT},{SEED_FOLDERS[0].name}]"
    assert main(["ensemble", "-c", CONFIG, members, "ensemble.name=seeds"]) == 0
    assert (OUT / "ensemble" / "seeds" / store.TEST_MASKS).is_file()
    assert main(["pseudo", "-c", CONFIG, *SEEDS, "pseudo.source=ensemble"]) == 0
    ids, labels = store.read_masks(OUT / "pseudo" / "1" / "full.masks.safetensors")
    _, teacher = store.read_masks(AVERAGED / store.TEST_MASKS)
    assert len(ids) == len(teacher)
    assert (
        max(float(np.abs(a - b).max()) for a, b in zip(labels, teacher, strict=True)) <= HALF_LEVEL
    )
    # Per fold: fold k's labels are the mean of the seeds' fold-k test masks.
    assert main(["pseudo", "-c", CONFIG, *SEEDS, "pseudo.round=2"]) == 0
    record = read_json(OUT / "pseudo" / "2" / "teachers.json")
    assert record["teachers"] == [folder.name for folder in SEED_FOLDERS]
    _, labels = store.read_masks(OUT / "pseudo" / "2" / "fold1.masks.safetensors")
    per_seed = [store.read_masks(f / "fold1" / store.TEST_MASKS)[1] for f in SEED_FOLDERS]
    for label, a, b in zip(labels, *per_seed, strict=True):
        assert float(np.abs(label - (a + b) / 2).max()) <= HALF_LEVEL


def test_the_bundle_averages_the_seeds_masks_as_infer_did(project, tmp_path):
    """Packaged alone, then as a member of a blend: each run writes the local RLE file again."""
    kaggle = kaggle_overrides(tmp_path, "someone/mask-seeds", "kaggle.timing_rows=3")
    assert main(["package", "-c", CONFIG, *SEEDS, *kaggle]) == 0
    bundle = Path("package/mask-seeds")
    manifest = read_manifest(bundle)
    seeds = [folder.name for folder in SEED_FOLDERS]
    assert list(manifest["experiments"]) == [*seeds, EXPERIMENT]
    assert manifest["experiments"][EXPERIMENT]["seeds"] == seeds
    assert manifest["timing"]["estimated_seconds"] > 0  # the sample matched the local masks
    written = run_bundle(bundle, "local", environ={})
    assert written.read_bytes() == (Path("submissions") / f"{EXPERIMENT}.csv").read_bytes()
    offline = Path("outputs/offline/predictions") / f"{EXPERIMENT}.masks.safetensors"
    mine, theirs = store.read_masks(offline)[1], store.read_masks(AVERAGED / store.TEST_MASKS)[1]
    assert all(np.array_equal(a, b) for a, b in zip(mine, theirs, strict=True))

    members = f"ensemble.experiments=[{EXPERIMENT},{SEED_FOLDERS[0].name}]"
    assert main(["ensemble", "-c", CONFIG, members, "ensemble.name=seeds"]) == 0
    assert main(["package", "-c", CONFIG, *SEEDS, *kaggle, "kaggle.ensemble=seeds"]) == 0
    assert list(read_manifest(bundle)["experiments"]) == [*seeds, EXPERIMENT]
    written = run_bundle(bundle, "local", environ={})
    assert written.read_bytes() == (Path("submissions") / "seeds.csv").read_bytes()


def test_seeds_whose_masks_hold_other_images_are_refused(project):
    cfg = resolve_config(CONFIG, [*SEEDS, "train.experiment=other"])
    for seed, folder in enumerate(SEED_FOLDERS):
        shutil.copytree(folder, OUT / f"other@s{seed}", dirs_exist_ok=True)
    for name in (store.OOF_MASKS, store.TEST_MASKS):  # seed 1 lost its last image
        ids, masks = store.read_masks(OUT / "other@s1" / name)
        store.write_masks(OUT / "other@s1" / name, ids[:-1], masks[:-1])
    train = pd.read_csv("data/train.csv")
    task = build_task(cfg, train)
    folds = load_folds("folds", train, id_column="id", target_columns=["has_mask"])
    seeds = {seed: read_json(folder / "metrics.json") for seed, folder in enumerate(SEED_FOLDERS)}
    with pytest.raises(DataError, match="experiment 'other': the seeds' oof.masks.safetensors"):
        average_oof(cfg, task, task.encode_targets(train), folds, seeds)
    with pytest.raises(DataError, match="experiment 'other': the seeds' test.masks.safetensors"):
        average_tests(cfg, task)


def test_run_brings_the_seed_average_up_to_date_then_skips_it(project, caplog):
    """``medalist run`` reads the averaged experiment's files as one experiment's (last here:
    it rewrites them)."""
    caplog.set_level(logging.INFO, logger="medalist")
    assert main(["run", "-c", CONFIG, *SEEDS]) == 0
    assert (AVERAGED / store.TEST_MASKS).is_file()
    caplog.clear()
    assert main(["run", "-c", CONFIG, *SEEDS]) == 0
    for stage in ("folds", "train", "infer", "submission"):
        assert f"{stage}: up to date, skipped" in caplog.text


def test_tta_oof_of_the_seeds_is_averaged_and_chooses_the_averaged_models_post_processing(
    project,
):
    """Last: it predicts again. With ``infer.tta_oof`` the averaged model's TTA OOF masks are the
    mean of the seeds', and its submission applies the post-processing searched on them; an
    ``infer`` without it removes them, as for one experiment."""
    tta = (*SEEDS, "infer.tta=[identity,hflip]", "infer.tta_oof=true")
    _run("infer", "submission", overrides=tta)
    ids, _ = _assert_mean_of_seeds("oof_tta.masks.safetensors")
    assert list(map(str, ids)) == list(pd.read_csv("data/train.csv")["id"].astype(str))
    report = read_json(AVERAGED / "tta.json")
    assert report["views"] == ["identity", "hflip"]
    assert report["cv"] == read_json(AVERAGED / "metrics.json")["cv"]
    cfg = resolve_config(CONFIG, list(tta))
    assert (
        build_task(cfg, None).own_predictions.chosen(cfg)["threshold"]
        == (report["postprocess"]["threshold"])
    )
    _run("infer")
    assert not (AVERAGED / "tta.json").is_file()
    assert not (AVERAGED / "oof_tta.masks.safetensors").is_file()
