"""Segmentation samples: the image and its mask transformed together, training crops, whole
images for evaluation, augmentation fixed by (seed, epoch, row), inputs checked before work."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medalist.config import resolve_config
from medalist.errors import ConfigError, DataError
from medalist.modalities.segmentation import rle
from medalist.modalities.segmentation.data import build_dataset, build_pipeline, crop_size
from medalist.modalities.segmentation.inputs import check_inputs

SHAPE = (40, 60)  # height, width: larger than the 32 px crops, not square


def png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def project(tmp_path, n=3, shape=SHAPE, seed=0):
    """Grey images with random pixels and random blob masks (0/255) under tmp_path."""
    rng = np.random.default_rng(seed)
    names = [f"img{i}.png" for i in range(n)]
    for name in names:
        png(tmp_path / "train_images" / name, rng.integers(0, 256, shape))
        blobs = rng.random((shape[0] // 4 + 1, shape[1] // 4 + 1)) > 0.6
        mask = np.kron(blobs, np.ones((4, 4)))[: shape[0], : shape[1]]
        png(tmp_path / "masks" / name, mask * 255)
    return pd.DataFrame({"image": names})


def cfg(tmp_path, *extra: str):
    return resolve_config(
        None,
        [
            "competition.target_columns=[y]",
            f"competition.data_dir={tmp_path}",
            "image.channels=1",
            "image.mean=[0.5]",
            "image.std=[0.5]",
            "image.size=32",
            "segmentation.mask_dir=masks",
            *extra,
        ],
    )


def pixels(sample) -> np.ndarray:
    """The input back on the 0-255 scale (mean 0.5, std 0.5), one channel."""
    return np.rint((sample["input"][0].numpy() * 0.5 + 0.5) * 255).astype(np.int64)


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def window_of(crop: np.ndarray, whole: np.ndarray) -> tuple[int, int]:
    """Where ``crop`` lies in ``whole``: its one (top, left)."""
    height, width = crop.shape
    found = [
        (top, left)
        for top in range(whole.shape[0] - height + 1)
        for left in range(whole.shape[1] - width + 1)
        if np.array_equal(whole[top : top + height, left : left + width], crop)
    ]
    assert len(found) == 1, found
    return found[0]


def test_a_training_crop_takes_the_same_window_from_image_and_mask(tmp_path):
    df = project(tmp_path)
    config = cfg(tmp_path)
    data = build_dataset(config, df, split="train", train=True, source="train.csv")
    assert crop_size(config) == 32  # null: image.size
    for row in range(len(df)):
        sample = data[row]
        assert sample["index"] == row
        assert sample["input"].dtype == torch.float32 and sample["input"].shape == (1, 32, 32)
        assert sample["target"].dtype == torch.float32 and sample["target"].shape == (1, 32, 32)
        top, left = window_of(pixels(sample), read(tmp_path / "train_images" / df.image[row]))
        mask = read(tmp_path / "masks" / df.image[row]) // 255
        np.testing.assert_array_equal(
            sample["target"][0].numpy(), mask[top : top + 32, left : left + 32]
        )


def test_a_flip_moves_the_mask_with_the_image(tmp_path):
    df = project(tmp_path, n=1)
    flip = "image.train_transforms=[{name: HorizontalFlip, p: 1.0}]"
    # A 64 px crop of the 40 x 60 image padded to 64 x 64 (centred) is the whole padded image.
    sample = build_dataset(
        cfg(tmp_path, flip, "segmentation.crop_size=64"), df, split="train", train=True, source="t"
    )[0]
    image = read(tmp_path / "train_images" / "img0.png")
    mask = read(tmp_path / "masks" / "img0.png") // 255
    pad = ((12, 12), (2, 2))
    np.testing.assert_array_equal(pixels(sample), np.pad(image[:, ::-1], pad, "reflect"))
    np.testing.assert_array_equal(
        sample["target"][0].numpy(), np.pad(mask[:, ::-1], pad, "reflect")
    )
    assert not np.array_equal(sample["target"][0].numpy(), np.pad(mask, pad, "reflect"))


def test_eval_samples_are_whole_images_with_their_masks(tmp_path):
    df = project(tmp_path, n=2)
    data = build_dataset(cfg(tmp_path), df, split="train", train=False, source="t")
    for row in range(2):
        sample = data[row]
        assert sample["input"].shape == (1, *SHAPE)
        np.testing.assert_array_equal(
            pixels(sample), read(tmp_path / "train_images" / df.image[row])
        )
        np.testing.assert_array_equal(
            sample["target"][0].numpy(), read(tmp_path / "masks" / df.image[row]) // 255
        )
    as_test = cfg(tmp_path, "image.test_dir=train_images")
    test = build_dataset(as_test, df, split="test", train=False, source="test.csv")
    assert set(test[0]) == {"index", "input"} and test[0]["input"].shape == (1, *SHAPE)


def test_augmentation_is_fixed_by_seed_epoch_and_row(tmp_path):
    df = project(tmp_path, n=2)
    whole = read(tmp_path / "train_images" / "img1.png")

    def windows(*extra: str) -> list[tuple[int, int]]:
        data = build_dataset(cfg(tmp_path, *extra), df, split="train", train=True, source="t")
        found = []
        for epoch in range(4):
            data.set_epoch(epoch)
            data[0]  # another row read first changes nothing
            found.append(window_of(pixels(data[1]), whole))
        return found

    crops = windows()
    assert len(set(crops)) > 1  # another epoch, another crop
    assert windows() == crops  # the same run again
    data = build_dataset(cfg(tmp_path), df, split="train", train=True, source="t")
    data.set_epoch(2)
    assert window_of(pixels(data[1]), whole) == crops[2]  # row 1 alone, as in epoch 2
    assert windows("train.seed=7") != crops


def test_an_image_smaller_than_the_crop_is_padded_by_reflection_with_its_mask(tmp_path):
    df = project(tmp_path, n=1, shape=(20, 24))
    sample = build_dataset(cfg(tmp_path), df, split="train", train=True, source="t")[0]
    assert sample["input"].shape == (1, 32, 32) and sample["target"].shape == (1, 32, 32)
    image = read(tmp_path / "train_images" / "img0.png")
    mask = read(tmp_path / "masks" / "img0.png") // 255
    # Reflection about the edge pixel (OpenCV's BORDER_REFLECT_101), centred: 6 + 20 + 6 rows
    # and 4 + 24 + 4 columns; the mask reflected alike.
    np.testing.assert_array_equal(pixels(sample), np.pad(image, ((6, 6), (4, 4)), "reflect"))
    np.testing.assert_array_equal(
        sample["target"][0].numpy(), np.pad(mask, ((6, 6), (4, 4)), "reflect")
    )


def test_multilabel_channels_move_together_and_multiclass_masks_are_class_indices(tmp_path):
    df = project(tmp_path, n=1)
    rng = np.random.default_rng(3)
    channels = (rng.random((3, *SHAPE)) > 0.5).astype(np.uint8)
    for name, channel in zip("abc", channels, strict=True):
        png(tmp_path / "masks" / f"img0_{name}.png", channel)
    flip = "image.train_transforms=[{name: VerticalFlip, p: 1.0}]"
    labels = cfg(
        tmp_path,
        flip,
        "segmentation.crop_size=64",
        "segmentation.task=multilabel",
        "segmentation.classes=[a, b, c]",
        "segmentation.mask_pattern={stem}_{class}.png",
    )
    sample = build_dataset(labels, df, split="train", train=False, source="t")[0]
    assert sample["target"].shape == (3, *SHAPE) and sample["target"].dtype == torch.float32
    np.testing.assert_array_equal(sample["target"].numpy(), channels)
    flipped = build_dataset(labels, df, split="train", train=True, source="t")[0]
    assert flipped["target"].shape == (3, 64, 64)
    padded = np.pad(channels[:, ::-1, :], ((0, 0), (12, 12), (2, 2)), "reflect")
    np.testing.assert_array_equal(flipped["target"].numpy(), padded)

    classes = rng.integers(0, 3, SHAPE).astype(np.uint8)
    png(tmp_path / "masks" / "img0.png", classes)
    multiclass = cfg(tmp_path, "segmentation.task=multiclass", "segmentation.classes=[bg, a, b]")
    sample = build_dataset(multiclass, df, split="train", train=False, source="t")[0]
    assert sample["target"].dtype == torch.int64 and sample["target"].shape == SHAPE
    np.testing.assert_array_equal(sample["target"].numpy(), classes)


def test_rle_masks_are_read_from_the_table(tmp_path):
    df = project(tmp_path, n=2)
    masks = [read(tmp_path / "masks" / name) // 255 for name in df.image]
    df["EncodedPixels"] = [rle.encode(m, "row") for m in masks]
    config = cfg(
        tmp_path,
        "segmentation.masks=rle",
        "segmentation.rle_columns=[EncodedPixels]",
        "segmentation.rle_order=row",
    )
    data = build_dataset(config, df, split="train", train=False, source="t")
    for row in range(2):
        np.testing.assert_array_equal(data[row]["target"][0].numpy(), masks[row])


def test_a_mask_that_does_not_fit_its_decoded_image_is_named(tmp_path):
    df = project(tmp_path, n=1)
    data = build_dataset(
        cfg(tmp_path), df, [np.zeros((1, 60, 40), np.float32)], split="train", train=False,
        source="train.csv",
    )  # fmt: skip
    with pytest.raises(DataError, match=r"train.csv: row 0: .*img0.png decodes to 40 x 60"):
        data[0]


def test_check_inputs_names_the_row_of_a_bad_mask_before_any_work(tmp_path):
    df = project(tmp_path, n=3)
    config = cfg(tmp_path, "model.backbone=test_resnet", "image.test_dir=train_images")
    assert check_inputs(config, df, "train", "train.csv") == [SHAPE] * 3
    assert check_inputs(config, df, "test", "test.csv") is None  # no masks to check
    png(tmp_path / "masks" / "img1.png", np.zeros((10, 10)))
    with pytest.raises(DataError, match=r"train.csv: row 1: mask .*img1.png is 10 x 10"):
        check_inputs(config, df, "train", "train.csv")
    (tmp_path / "masks" / "img2.png").unlink()
    png(tmp_path / "masks" / "img1.png", np.zeros(SHAPE))
    with pytest.raises(DataError, match=r"train.csv: row 2: mask file not found"):
        check_inputs(config, df, "train", "train.csv")
    png(tmp_path / "masks" / "img2.png", np.full(SHAPE, 7))
    with pytest.raises(DataError, match=r"row 2: mask .*img2.png holds values \[7\]"):
        check_inputs(config, df, "train", "train.csv")
    with pytest.raises(ConfigError, match="model.backbone: test_vit gives features at"):
        check_inputs(cfg(tmp_path, "model.backbone=test_vit"), df, "train", "train.csv")


def test_a_bad_transform_is_named_by_its_key(tmp_path):
    config = cfg(tmp_path, "image.train_transforms=[{name: NoSuchFlip}]")
    with pytest.raises(ConfigError, match=r"image.train_transforms\[0\].*NoSuchFlip"):
        build_pipeline(config, train=True)
