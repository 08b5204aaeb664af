"""The leak alarm (``medalist sanity``) on masks: a row's label is its mask.

The shuffle moves masks between groups of identical images of one fold and one image size (a mask
fits only an image of its size); the OOF masks of the shuffled-mask run are scored by Dice and IoU
against fresh shuffles. On the clean mosaics, with images of two sizes, the CV is at chance; a
dataset that writes each image's mask into its pixels (labels reaching the inputs) fires it.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.honest import sanity
from medalist.modalities.segmentation import data
from medalist.tasks import build_task
from support.segmentation_project import CONFIG, EXPERIMENT, segmentation_project
from support.threads import one_thread

SANITY = ["sanity", "-c", CONFIG]
LARGE = [0, 1, 2, 3, 4, 5, 6, 7]  # train rows whose image and mask are doubled to 64 px


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> Path:
    """The tiny mosaics with the images (and masks) of :data:`LARGE` at 64 px, folds written."""
    project = segmentation_project(tmp_path_factory.mktemp("baked"))
    train = pd.read_csv(project / "data" / "train.csv")
    for name in train["image"].iloc[LARGE]:
        for folder in ("train_images", "train_masks"):
            path = project / "data" / folder / name
            pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(path), cv2.resize(pixels, (64, 64), interpolation=cv2.INTER_NEAREST))
    with working_directory(project):
        assert main(["folds", "-c", CONFIG]) == 0
    return project


@pytest.fixture
def project(baked, tmp_path):
    folder = shutil.copytree(baked, tmp_path / "project")
    with working_directory(folder):
        yield folder


def _result() -> dict:
    return json.loads((Path("outputs/sanity") / EXPERIMENT / "sanity.json").read_text())


def test_masks_move_only_between_images_of_one_size_and_fold(project):
    cfg = resolve_config(CONFIG)
    train = pd.read_csv("data/train.csv")
    task = build_task(cfg, train)
    masks = task.encode_targets(train)
    kinds = task.own_predictions.sanity_kinds(cfg, train, "train.csv")
    assert sorted(np.flatnonzero(kinds == kinds[0])) == LARGE
    fold = pd.read_csv("folds/folds.csv")["fold"].to_numpy()
    blocks = sanity.exchange_blocks(fold, kinds)
    moved = np.zeros(len(train), dtype=bool)
    for seed in range(20):
        shuffled = sanity.shuffle_labels(masks, blocks, np.arange(len(train)), seed)
        for row in range(len(train)):
            source = int(shuffled.rows[row])
            assert (fold[source], kinds[source]) == (fold[row], kinds[row])
            assert shuffled[row].shape == masks[row].shape  # (1, 64, 64) or (1, 32, 32)
            moved[row] |= source != row
    assert moved.all()  # every block holds several images: each mask moves in some shuffle


def test_copies_of_an_image_are_one_group_whatever_their_ids(project):
    cfg = resolve_config(CONFIG)
    train = pd.read_csv("data/train.csv")
    copies = train.iloc[[0, 9]].assign(id=lambda f: f["id"] + 1000)  # one image of each size
    table = pd.concat([train, copies], ignore_index=True)
    kinds = build_task(cfg, table).own_predictions.sanity_kinds(cfg, table, "train.csv")
    groups = sanity.content_groups(cfg, table, kinds)
    n = len(train)
    assert list(groups[n:]) == [0, 9]
    assert len(set(groups[:n])) == n  # the mosaics themselves are all distinct


def test_a_clean_project_is_at_chance_and_the_real_experiment_is_untouched(project):
    assert main([*SANITY, "sanity.epochs=2"]) == 0
    result = _result()
    assert result["verdict"] == "chance" and result["judged_by"] == "dice"
    assert result["duplicate_groups_across_folds"] == 0
    assert set(result["metrics"]) == {"dice", "iou"}
    assert result["rows_scored"] == 16 and abs(result["main"]["z"]) < 3
    assert result["main"]["informative"] and result["main"]["standard_error"] > 0
    # The prior (each channel at its foreground fraction, under 0.5) is the empty mask: Dice 1
    # on the empty masks, 0 on the others.
    empty = (pd.read_csv("data/train.csv")["has_mask"] == 0).mean()
    assert result["main"]["constant_prior"] == pytest.approx(empty)
    assert not Path("outputs", EXPERIMENT).exists()
    assert not Path("outputs", "ledger.csv").exists()


def test_masks_written_into_the_pixels_fire_the_alarm(project, monkeypatch, caplog):
    """A dataset that reads the mask to make its input (a planted bug) carries the shuffled
    masks into the validation images, exactly as it carried the real ones."""
    plain = data.SegmentationDataset.__getitem__

    def leaky(self, index):
        sample = plain(self, index)
        if "target" in sample:
            sample["input"] = sample["input"] + 4 * sample["target"]
        return sample

    monkeypatch.setattr(data.SegmentationDataset, "__getitem__", leaky)
    caplog.set_level(logging.WARNING, logger="medalist")
    assert main([*SANITY, "sanity.epochs=10", "sanity.duplicates=false"]) == 2
    result = _result()
    assert result["verdict"] == "leak"
    main_metric = result["main"]
    assert main_metric["score"] > main_metric["chance"] + 3 * main_metric["standard_error"]
    assert "labels reaching the inputs" in caplog.text
