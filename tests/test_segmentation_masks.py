"""Segmentation targets from mask files and RLE columns, and the checks made before training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medalist.errors import ConfigError, DataError
from medalist.modalities.segmentation import rle
from medalist.modalities.segmentation.masks import (
    MaskLayout,
    MaskTargets,
    check_masks,
    mask_paths,
    rle_columns_from_long,
    target_from_files,
    target_from_rles,
)

SHAPE = (6, 9)  # height, width: not square, so the RLE order check can see the order


def png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array), mode).save(path)
    return path


def images(tmp_path, names=("a.jpg", "b.jpg"), shape=SHAPE):
    return [png(tmp_path / "images" / name, np.full((*shape, 3), 90, np.uint8)) for name in names]


def disc(shape=SHAPE, value=1, centre=(3, 4), radius=2):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2
    return (inside * value).astype(np.uint8)


def layout(tmp_path, **kwargs):
    kwargs.setdefault("task", "binary")
    kwargs.setdefault("classes", ("mask",))
    return MaskLayout(mask_dir=tmp_path / "masks", **kwargs)


# ------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("scale", [1, 255])
def test_a_binary_mask_file_of_0_1_or_0_255_is_one_channel_of_0_1(tmp_path, scale):
    (image,) = images(tmp_path, ["a.jpg"])
    png(tmp_path / "masks" / "a.png", disc(value=scale))
    target = target_from_files(layout(tmp_path), image, "train.csv: row 0")
    assert target.dtype == np.uint8 and target.shape == (1, *SHAPE)
    np.testing.assert_array_equal(target[0], disc())


def test_a_multiclass_mask_file_is_a_map_of_class_indices(tmp_path):
    (image,) = images(tmp_path, ["a.jpg"])
    mask = disc() + 2 * disc(centre=(1, 7), radius=1)
    png(tmp_path / "masks" / "a_mask.png", mask)
    spec = layout(
        tmp_path, task="multiclass", classes=("bg", "x", "y"), mask_pattern="{stem}_mask.png"
    )
    target = target_from_files(spec, image, "train.csv: row 0")
    assert target.dtype == np.uint8 and target.shape == SHAPE
    np.testing.assert_array_equal(target, mask)


def test_a_palette_mask_gives_its_indices_and_a_grey_rgb_mask_its_grey(tmp_path):
    (image,) = images(tmp_path, ["a.jpg"])
    spec = layout(tmp_path, task="multiclass", classes=("bg", "x", "y"))
    (tmp_path / "masks").mkdir()
    Image.fromarray(disc() * 2, "L").convert("P").save(tmp_path / "masks" / "a.png")
    np.testing.assert_array_equal(target_from_files(spec, image, "row 0"), disc() * 2)
    png(tmp_path / "masks" / "a.png", np.repeat(disc()[..., None], 3, axis=2))
    np.testing.assert_array_equal(target_from_files(spec, image, "row 0"), disc())


@pytest.mark.parametrize("pattern", ["{class}/{stem}.png", "{stem}_{class}.png"])
def test_multilabel_masks_are_one_file_per_class(tmp_path, pattern):
    (image,) = images(tmp_path, ["a.jpg"])
    spec = layout(tmp_path, task="multilabel", classes=("cat", "dog"), mask_pattern=pattern)
    cat, dog = disc(), disc(centre=(2, 5), value=255)
    for name, mask in zip(("cat", "dog"), (cat, dog), strict=True):
        png(tmp_path / "masks" / pattern.format(stem="a", **{"class": name}), mask)
    assert [p.relative_to(tmp_path / "masks").as_posix() for p in mask_paths(spec, image)] == [
        pattern.format(stem="a", **{"class": c}) for c in ("cat", "dog")
    ]
    target = target_from_files(spec, image, "row 0")
    assert target.shape == (2, *SHAPE)
    np.testing.assert_array_equal(target, np.stack([cat, dog // 255]))


def test_the_table_check_passes_good_masks_and_returns_the_sizes(tmp_path):
    paths = images(tmp_path)
    for path in paths:
        png(tmp_path / "masks" / f"{path.stem}.png", disc(value=255))
    table = pd.DataFrame({"image": [p.name for p in paths]})
    spec = layout(tmp_path)
    assert check_masks(spec, table, paths, "train.csv") == [SHAPE, SHAPE]
    assert check_masks(spec, table, paths, "train.csv", values=False) == [SHAPE, SHAPE]
    targets = MaskTargets(spec, table, paths, "train.csv")
    assert len(targets) == 2 and targets[1].shape == (1, *SHAPE)


@pytest.mark.parametrize("values", [True, False])
def test_a_mask_of_another_size_than_its_image_is_named(tmp_path, values):
    paths = images(tmp_path)
    png(tmp_path / "masks" / "a.png", disc())
    png(tmp_path / "masks" / "b.png", disc(shape=(9, 6)))
    table = pd.DataFrame({"image": ["a.jpg", "b.jpg"]})
    with pytest.raises(DataError) as info:
        check_masks(layout(tmp_path), table, paths, "train.csv", values=values)
    message = str(info.value)
    assert message.startswith("train.csv: row 1: mask ")
    assert "b.png is 9 x 6 (height x width), its image " in message and "b.jpg is 6 x 9" in message


def test_mask_values_outside_the_classes_are_named_with_those_seen(tmp_path):
    paths = images(tmp_path, ["a.jpg"])
    png(tmp_path / "masks" / "a.png", disc() + 7 * disc(centre=(1, 1), radius=0))
    table = pd.DataFrame({"image": ["a.jpg"]})
    spec = layout(tmp_path, task="multiclass", classes=("bg", "x", "y"))
    with pytest.raises(
        DataError,
        match=r"row 0: mask .*a.png holds values \[0, 1, 7\]; the classes"
        r" are 0..2 \(\['bg', 'x', 'y'\]\), so \[7\] are outside",
    ):
        check_masks(spec, table, paths, "train.csv")
    png(tmp_path / "masks" / "a.png", disc(value=255))
    with pytest.raises(DataError, match=r"\[0, 255\].*segmentation.task: binary"):
        check_masks(spec, table, paths, "train.csv")
    png(tmp_path / "masks" / "a.png", disc(value=255) // 2)
    with pytest.raises(
        DataError, match=r"holds values \[0, 127\]; a binary mask holds 0/1 or 0/255"
    ):
        check_masks(layout(tmp_path), table, paths, "train.csv")


def test_a_missing_mask_or_image_file_is_named(tmp_path):
    paths = images(tmp_path)
    png(tmp_path / "masks" / "a.png", disc())
    table = pd.DataFrame({"image": ["a.jpg", "b.jpg"]})
    for values in (True, False):
        with pytest.raises(DataError, match=r"^train.csv: row 1: mask file not found: .*b.png"):
            check_masks(layout(tmp_path), table, paths, "train.csv", values=values)
    paths[0].unlink()
    with pytest.raises(DataError, match=r"^train.csv: row 0: image file not found: .*a.jpg"):
        check_masks(layout(tmp_path), table, paths, "train.csv")


def test_a_colour_mask_or_a_file_that_is_no_image_is_refused(tmp_path):
    (image,) = images(tmp_path, ["a.jpg"])
    colour = np.zeros((*SHAPE, 3), np.uint8)
    colour[..., 0] = disc(value=255)
    png(tmp_path / "masks" / "a.png", colour)
    with pytest.raises(DataError, match="is a colour image \\(RGB\\).*convert colours to indices"):
        target_from_files(layout(tmp_path), image, "row 0")
    (tmp_path / "masks" / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="a.png is not an image PIL can read"):
        target_from_files(layout(tmp_path), image, "row 0")


# -------------------------------------------------------------------------------------- rle


def rle_table(order="column", shape=SHAPE):
    first = disc(shape)
    second = disc(shape, centre=(1, 7), radius=1)
    return pd.DataFrame(
        {
            "image": ["a.jpg", "b.jpg"],
            "EncodedPixels_1": [rle.encode(first, order), ""],
            "EncodedPixels_2": [rle.encode(second, order), np.nan],
        }
    ), (first, second)


def rle_layout(task="multilabel", order="column"):
    classes = ("bg", "1", "2") if task == "multiclass" else ("1", "2")
    return MaskLayout(
        task=task,
        classes=classes,
        masks="rle",
        rle_columns=("EncodedPixels_1", "EncodedPixels_2"),
        rle_order=order,
    )


@pytest.mark.parametrize("order", rle.ORDERS)
def test_rle_columns_give_multilabel_channels_and_multiclass_indices(tmp_path, order):
    paths = images(tmp_path)
    table, (first, second) = rle_table(order)
    spec = rle_layout(order=order)
    sizes = check_masks(spec, table, paths, "train.csv")
    targets = MaskTargets(spec, table, paths, "train.csv", sizes=sizes)
    np.testing.assert_array_equal(targets[0], np.stack([first, second]))
    np.testing.assert_array_equal(targets[1], np.zeros((2, *SHAPE)))
    assert check_masks(rle_layout("multiclass", order), table, paths, "train.csv") == sizes
    multiclass = MaskTargets(rle_layout("multiclass", order), table, paths, "train.csv")
    np.testing.assert_array_equal(multiclass[0], first + 2 * second)


def test_an_rle_past_the_image_is_named_with_its_row_and_column(tmp_path):
    paths = images(tmp_path)
    table, _ = rle_table()
    table.loc[1, "EncodedPixels_2"] = "50 10"
    with pytest.raises(DataError) as info:
        check_masks(rle_layout(), table, paths, "train.csv")
    assert str(info.value).startswith("train.csv: row 1, column 'EncodedPixels_2': run 0")
    assert "runs past the image of 6 x 9" in str(info.value)
    with pytest.raises(DataError, match="runs past the image of 6 x 9"):
        target_from_rles(rle_layout(), ["", "50 10"], SHAPE, "train.csv: row 1")


def test_overlapping_classes_of_a_multiclass_rle_table_are_refused(tmp_path):
    paths = images(tmp_path)
    table, (first, _) = rle_table()
    table.loc[0, "EncodedPixels_2"] = rle.encode(disc(radius=1), "column")
    with pytest.raises(
        DataError,
        match=r"^train.csv: row 0: columns \['EncodedPixels_1', "
        r"'EncodedPixels_2'\] cover the same 5 pixel",
    ):
        check_masks(rle_layout("multiclass"), table, paths, "train.csv")
    check_masks(rle_layout("multilabel"), table, paths, "train.csv")  # overlap is fine there


def test_rles_in_the_other_order_are_caught_before_training(tmp_path):
    names = [f"{i}.jpg" for i in range(6)]
    paths = images(tmp_path, names, shape=(20, 34))
    rng = np.random.default_rng(0)
    texts = []
    for _ in names:
        mask = np.zeros((20, 34), np.uint8)
        r, c = rng.integers(2, 12), rng.integers(2, 20)
        mask[r : r + 6, c : c + 10] = 1
        texts.append(rle.encode(mask, "row"))
    table = pd.DataFrame({"image": names, "rle": texts})
    spec = MaskLayout(task="binary", classes=("mask",), masks="rle", rle_columns=("rle",))
    with pytest.raises(
        DataError,
        match=r"train.csv: column 'rle': the masks look like row-major"
        r".*Set segmentation.rle_order: row",
    ):
        check_masks(spec, table, paths, "train.csv")


def test_a_missing_rle_column_is_named(tmp_path):
    paths = images(tmp_path)
    table, _ = rle_table()
    with pytest.raises(DataError, match=r"missing RLE column\(s\) \['EncodedPixels_2'\]"):
        check_masks(rle_layout(), table.drop(columns="EncodedPixels_2"), paths, "train.csv")


def test_a_long_table_becomes_one_rle_column_per_class():
    long = pd.DataFrame(
        {
            "ImageId": ["b", "a", "b"],
            "ClassId": [3, 1, 1],
            "EncodedPixels": ["1 2", "3 4", "5 6"],
        }
    )
    wide = rle_columns_from_long(
        long,
        id_column="ImageId",
        class_column="ClassId",
        rle_column="EncodedPixels",
        classes=[1, 2, 3],
        ids=["a", "b", "c"],
    )
    assert list(wide.columns) == ["ImageId", "1", "2", "3"]
    assert wide.to_dict("list") == {
        "ImageId": ["a", "b", "c"],
        "1": ["3 4", "5 6", ""],
        "2": ["", "", ""],
        "3": ["", "1 2", ""],
    }
    kwargs = {"id_column": "ImageId", "class_column": "ClassId", "rle_column": "EncodedPixels"}
    with pytest.raises(DataError, match="row 0: class '3' in column 'ClassId' is not one of"):
        rle_columns_from_long(long, classes=[1, 2], source="train.csv", **kwargs)
    with pytest.raises(DataError, match="row 3: image 'a' has class '1' twice"):
        rle_columns_from_long(pd.concat([long, long.iloc[[1]]]), classes=[1, 2, 3], **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "instance"}, "segmentation.task: 'instance' is not one of"),
        ({"classes": ("a", "b")}, "segmentation.classes: a binary task has one class"),
        ({"task": "multiclass", "classes": ("bg",)}, "a multiclass task has 2 to 256 classes"),
        ({"task": "multilabel", "classes": ("a", "a")}, "repeated names"),
        ({"masks": "polygons"}, "segmentation.masks: 'polygons'"),
        ({"mask_dir": None}, "segmentation.mask_dir"),
        ({"mask_pattern": "{id}.png"}, r"names \{id\}; it may use \{stem\}"),
        ({"mask_pattern": "mask.png"}, "names no image"),
        ({"task": "multilabel", "classes": ("a", "b")}, "put \\{class\\} in"),
        (
            {"task": "multiclass", "classes": ("a", "b"), "mask_pattern": "{class}/{stem}.png"},
            "one file of class indices per image",
        ),
        ({"masks": "rle", "rle_columns": ("x", "y")}, "segmentation.rle_columns: a binary task"),
        ({"masks": "rle", "rle_columns": ("x",), "rle_order": "F"}, "segmentation.rle_order"),
    ],
)
def test_each_inconsistent_layout_names_its_config_key(tmp_path, kwargs, message):
    kwargs = {"task": "binary", "classes": ("mask",), "mask_dir": tmp_path, **kwargs}
    with pytest.raises(ConfigError, match=message):
        MaskLayout(**kwargs)
