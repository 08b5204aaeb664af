"""Several classes through the stages: a multiclass and a multilabel mosaic competition, each
with a sample submission of one row per image and class, from folds to a validated RLE file.

The binary mosaics' pasted region is split at the image's middle column into two classes (left
and right), so every image has a mask of each class, of one or of none."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.modalities.segmentation import rle, store
from medalist.modalities.segmentation.postprocess import postprocess
from medalist.modalities.segmentation.submission import read_text_csv
from support.segmentation_project import CONFIG, EXPERIMENT, segmentation_project
from support.threads import one_thread

OUT = Path("outputs") / EXPERIMENT
SIZE = 32
CLASSES = ["left", "right"]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def _split(mask: np.ndarray) -> list[np.ndarray]:
    """A binary mask's left and right halves, as two binary masks of the whole image."""
    left, right = mask.copy(), mask.copy()
    left[:, SIZE // 2 :] = 0
    right[:, : SIZE // 2] = 0
    return [left, right]


def _classes_project(root: Path, task: str) -> Path:
    """The tiny mosaic project with masks of two classes: one file of class indices per image
    (multiclass: 0 background, 1 left, 2 right) or a folder per class (multilabel); the sample
    submission has a row per test image and class (``ImageId_ClassId`` for multiclass, an
    ``ImageId, EncodedPixels, ClassId`` table for multilabel)."""
    project = segmentation_project(root)
    data = project / "data"
    train = pd.read_csv(data / "train.csv", dtype={"id": str})
    for name in train["image"]:
        stem = Path(name).stem
        mask = (cv2.imread(str(data / "train_masks" / f"{stem}.png"), 0) > 0).astype(np.uint8)
        left, right = _split(mask)
        if task == "multiclass":
            cv2.imwrite(str(data / "train_masks" / f"{stem}.png"), left + 2 * right)
        else:
            for label, part in zip(CLASSES, (left, right), strict=True):
                (data / "train_masks" / label).mkdir(exist_ok=True)
                cv2.imwrite(str(data / "train_masks" / label / f"{stem}.png"), part * 255)
    test = pd.read_csv(data / "test.csv", dtype={"id": str})
    if task == "multiclass":
        sample = pd.DataFrame(
            {"ImageId_ClassId": [f"{i}_{c}" for i in test["id"] for c in CLASSES]}
        )
        sample["EncodedPixels"] = ""
    else:
        sample = pd.DataFrame(
            {
                "ImageId": [i for i in test["id"] for _ in CLASSES],
                "EncodedPixels": "",
                "ClassId": CLASSES * len(test),
            }
        )
    sample.to_csv(data / "sample_submission.csv", index=False)
    settings = {
        "multiclass": "  task: multiclass\n  classes: [background, left, right]\n",
        "multilabel": "  task: multilabel\n  classes: [left, right]\n"
        "  mask_pattern: '{class}/{stem}.png'\n",
    }[task]
    config = project / CONFIG
    config.write_text(config.read_text().replace("segmentation:\n", "segmentation:\n" + settings))
    return project


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_several_classes_train_infer_and_submit_one_rle_per_image_and_class(tmp_path, task):
    project = _classes_project(tmp_path, task)
    with working_directory(project):
        for stage in ("folds", "train", "infer", "submission"):
            assert main([stage, "-c", CONFIG]) == 0, stage
        cfg = resolve_config(CONFIG)
        channels = 3 if task == "multiclass" else 2
        ids, mean = store.read_masks(OUT / "test.masks.safetensors")
        assert all(m.shape == (channels, SIZE, SIZE) for m in mean)
        sub = read_text_csv(Path("submissions") / f"{EXPERIMENT}.csv", "submission")
        sample = read_text_csv("data/sample_submission.csv", "sample")
        assert list(sub.columns) == list(sample.columns)
        assert len(sub) == len(ids) * len(CLASSES)
        # Each row's RLE is its image's mask of its class, as the task binarizes it: argmax
        # (multiclass), or the threshold and minimum size chosen on OOF (multilabel).
        position = {str(i): k for k, i in enumerate(ids)}
        for _, row in sub.iterrows():
            if task == "multiclass":
                image, label = row["ImageId_ClassId"].rsplit("_", 1)
                probs = mean[position[image]]
                want = probs.argmax(0) == 1 + CLASSES.index(label)
            else:
                image, label = row["ImageId"], row["ClassId"]
                probs = mean[position[image]][CLASSES.index(label)]
                choice = _postprocess_choice()
                want = postprocess(probs, choice["threshold"], choice["min_size"], 8)
            got = rle.decode(row["EncodedPixels"], (SIZE, SIZE), cfg.segmentation.rle_order)
            assert (got == want).all(), (image, label)
        # `medalist validate` accepts the file, and refuses it with a class row removed.
        assert main(["validate", str(Path("submissions") / f"{EXPERIMENT}.csv"), "-c", CONFIG]) == 0
        broken = Path("submissions") / "broken.csv"
        sub.iloc[1:].to_csv(broken, index=False)
        assert main(["validate", str(broken), "-c", CONFIG]) != 0


def _postprocess_choice() -> dict:
    return pd.read_json(OUT / "postprocess.json", typ="series").to_dict()
