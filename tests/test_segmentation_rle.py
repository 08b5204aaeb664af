"""Run-length encoding (both pixel orders), its strict decoding, the order plausibility check, and
the RLE submission writer and validator."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest

from medalist.errors import DataError, SubmissionError
from medalist.modalities.segmentation import rle
from medalist.modalities.segmentation.submission import (
    RleLayout,
    build_rle_submission,
    detect_layout,
    read_text_csv,
    sample_keys,
    validate_rle_submission,
    validate_rle_submission_file,
    write_rle_submission,
)

# Pixels numbered by hand. Column-major (top to bottom, then left to right):
#   1 4 7        0 1 1
#   2 5 8  mask  0 1 0   -> pixels 3, 4, 5, 7 -> "3 3 7 1"
#   3 6 9        1 0 0
# Row-major (left to right, then top to bottom): pixels 2, 3, 5, 7 -> "2 2 5 1 7 1".
HAND = np.array([[0, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=np.uint8)


@pytest.mark.parametrize(("order", "text"), [("column", "3 3 7 1"), ("row", "2 2 5 1 7 1")])
def test_the_hand_numbered_mask_encodes_and_decodes_in_both_orders(order, text):
    assert rle.encode(HAND, order) == text
    decoded = rle.decode(text, (3, 3), order)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, HAND)


def test_a_non_square_mask_numbers_its_pixels_down_the_columns_or_along_the_rows():
    mask = np.zeros((2, 3), dtype=np.uint8)
    mask[1, 0] = mask[0, 2] = 1  # column-major pixels 2 and 5; row-major 4 and 3
    assert rle.encode(mask, "column") == "2 1 5 1"
    assert rle.encode(mask, "row") == "3 2"


@pytest.mark.parametrize("order", rle.ORDERS)
def test_random_masks_round_trip_in_both_orders(order):
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (5, 7), (16, 9), (1, 30)]:
        for density in (0.0, 0.3, 0.9, 1.0):
            mask = (rng.random(shape) < density).astype(np.uint8)
            text = rle.encode(mask, order)
            np.testing.assert_array_equal(rle.decode(text, shape, order), mask)
    assert rle.encode(np.ones((4, 5), bool), order) == "1 20"
    assert rle.encode(np.zeros((4, 5)), order) == ""


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan"), np.nan, pd.NA])
def test_an_empty_or_missing_rle_is_the_empty_mask(empty):
    np.testing.assert_array_equal(rle.decode(empty, (3, 4), "column"), np.zeros((3, 4)))


def test_adjacent_runs_are_accepted():
    np.testing.assert_array_equal(rle.decode("1 2 3 2", (1, 5), "row"), [[1, 1, 1, 1, 0]])


def test_on_a_square_image_the_other_order_transposes_the_mask():
    rng = np.random.default_rng(1)
    mask = (rng.random((6, 6)) < 0.4).astype(np.uint8)
    np.testing.assert_array_equal(rle.decode(rle.encode(mask, "column"), (6, 6), "row"), mask.T)


SOURCE = "data/train.csv: row 7, column 'EncodedPixels'"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "has 3 numbers, not pairs"),
        ("1 x", "'x', not an integer"),
        ("1.5 2", "'1.5', not an integer"),
        ("99999999999999999999 1", "not an integer"),
        ("0 3", "run 0 starts at 0; starts count pixels from 1"),
        ("-2 3", "starts at -2"),
        ("3 0", "run 0 has length 0"),
        ("2 1 5 -1", "run 1 has length -1"),
        ("10 5", "runs past the image of 3 x 4"),
        ("12 1 13 1", "run 1 (start 13, length 1) runs past the image of 3 x 4"),
        ("9223372036854775000 9223372036854775000", "runs past the image of 3 x 4"),
        ("5 2 3 1", "run 1 starts at 3, not after the end of run 0 (pixel 6)"),
        ("1 3 2 1", "runs must increase and not overlap"),
        ("1 3 3 1", "run 1 starts at 3"),
    ],
)
def test_each_bad_rle_is_refused_naming_its_source(text, message):
    with pytest.raises(DataError, match="runs|not|start|length") as info:
        rle.decode(text, (3, 4), "column", source=SOURCE)
    assert str(info.value).startswith(SOURCE + ": ")
    assert message in str(info.value)


def test_an_unknown_order_names_the_config_key():
    with pytest.raises(DataError, match=r"segmentation\.rle_order: 'diagonal'"):
        rle.encode(HAND, "diagonal")


# ---------------------------------------------------------------------------- order check


def blobs(rng, shape, count: int) -> list[np.ndarray]:
    """Masks of 1-3 discs and rectangles each, as a competition's objects look."""
    height, width = shape
    rows, cols = np.mgrid[:height, :width]
    masks = []
    for _ in range(count):
        mask = np.zeros(shape, dtype=np.uint8)
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, height), rng.integers(0, width)
            if rng.random() < 0.5:
                radius = rng.integers(2, 8)
                mask[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = 1
            else:
                mask[r : r + rng.integers(2, 12), c : c + rng.integers(2, 20)] = 1
        masks.append(mask)
    return masks


@pytest.mark.parametrize(("encoded", "other"), [("column", "row"), ("row", "column")])
def test_blobs_pass_in_their_order_and_are_caught_in_the_other(encoded, other):
    rng = np.random.default_rng(2)
    shape = (40, 64)
    texts = [rle.encode(m, encoded) for m in blobs(rng, shape, 30)] + ["", None]
    check = rle.check_order(texts, shape, encoded, source="train.csv column 'rle'")
    assert check.compared == 30 and check.less_compact == 0
    with pytest.raises(DataError) as info:
        rle.check_order(texts, shape, other, source="train.csv column 'rle'")
    message = str(info.value)
    assert message.startswith("train.csv column 'rle': the masks look like")
    assert f"{encoded}-major RLE, not {other}-major" in message
    assert f"Set segmentation.rle_order: {encoded}" in message


def test_the_order_check_takes_one_shape_per_mask_and_samples_evenly():
    rng = np.random.default_rng(3)
    shapes = [(30, 50), (50, 30), (24, 70)] * 10
    texts = [rle.encode(blobs(rng, s, 1)[0], "row") for s in shapes]
    assert rle.check_order(texts, shapes, "row", sample=8).compared == 8
    with pytest.raises(DataError, match="look like row-major"):
        rle.check_order(texts, shapes, "column", sample=8)


def test_square_images_cannot_be_told_apart_and_are_not_refused():
    rng = np.random.default_rng(4)
    texts = [rle.encode(m, "column") for m in blobs(rng, (32, 32), 10)]
    check = rle.check_order(texts, (32, 32), "row")
    assert (check.compared, check.less_compact, check.square) == (0, 0, 10)


def test_an_invalid_rle_in_the_sample_names_its_row():
    texts = ["1 5", "1 5", "3000 4"]
    with pytest.raises(DataError, match=r"^masks: row 2: .*runs past the image of 20 x 30"):
        rle.check_order(texts, (20, 30), "column", source="masks")


def test_the_docstring_examples_run():
    assert doctest.testmod(rle).failed == 0


# ----------------------------------------------------------------------------- submission

CLASSES = ["1", "2", "3"]


def masks_of(ids, shape=(6, 10), channels=3, seed=5):
    rng = np.random.default_rng(seed)
    return [(rng.random((channels, *shape)) < 0.2).astype(np.uint8) for _ in ids]


def test_the_layouts_are_read_from_the_sample():
    per_image = pd.DataFrame({"id": ["a", "b"], "rle_mask": ["1 1", "1 1"]})
    assert detect_layout(per_image, ["mask"]) == RleLayout("id", "rle_mask")
    in_id = pd.DataFrame({"ImageId_ClassId": ["a.jpg_1", "a.jpg_2"], "EncodedPixels": ["", ""]})
    assert detect_layout(in_id, CLASSES) == RleLayout(
        "ImageId_ClassId", "EncodedPixels", separator="_"
    )
    one_class = pd.DataFrame({"id": ["scan_1", "scan_2"], "rle_mask": ""})
    assert detect_layout(one_class, ["1"]) == RleLayout("id", "rle_mask")  # ids, not classes
    column = pd.DataFrame({"ImageId": ["a", "a"], "EncodedPixels": [np.nan] * 2, "ClassId": [1, 3]})
    assert detect_layout(column, CLASSES) == RleLayout(
        "ImageId", "EncodedPixels", class_column="ClassId"
    )


def test_the_writer_fills_the_sample_rows_with_each_class_channel():
    ids = ["b.jpg", "a.jpg"]
    masks = masks_of(ids)
    masks[1][2] = 0  # an empty mask: written as ""
    sample = pd.DataFrame(
        {"ImageId_ClassId": [f"{i}_{c}" for i in ("a.jpg", "b.jpg") for c in CLASSES]}
    ).assign(EncodedPixels="1 1")
    layout = detect_layout(sample, CLASSES)
    sub = build_rle_submission(sample, layout, ids, masks, order="column", classes=CLASSES)
    assert list(sub.columns) == ["ImageId_ClassId", "EncodedPixels"]
    assert sub["ImageId_ClassId"].tolist() == sample["ImageId_ClassId"].tolist()
    assert sub["EncodedPixels"].iloc[2] == ""
    for row, (image, channel) in enumerate(zip(*sample_keys(sample, layout, CLASSES), strict=True)):
        mask = masks[ids.index(image)][channel]
        decoded = rle.decode(sub["EncodedPixels"].iloc[row], mask.shape, "column")
        np.testing.assert_array_equal(decoded, mask)


def test_a_written_submission_reads_back_valid_with_empty_masks(tmp_path):
    ids = ["0001", "0002"]  # leading zeros survive: the CSV is read as text
    masks = [np.zeros((5, 8), np.uint8), np.eye(5, 8, dtype=np.uint8)]
    sample = pd.DataFrame({"id": ids, "rle_mask": ["", ""]})
    layout = detect_layout(sample, ["mask"])
    sub = build_rle_submission(sample, layout, ids, masks, order="row", classes=["mask"])
    shapes = dict.fromkeys(ids, (5, 8))
    path = write_rle_submission(
        sub, sample, tmp_path / "sub.csv", layout, shapes=shapes, order="row", classes=["mask"]
    )
    sample.to_csv(tmp_path / "sample.csv", index=False)
    back = read_text_csv(path, "submission")
    assert back["id"].tolist() == ids and back["rle_mask"].iloc[0] == ""
    validate_rle_submission_file(
        path, tmp_path / "sample.csv", layout, shapes=shapes, order="row", classes=["mask"]
    )


def valid_case():
    ids = ["a", "b", "c"]
    shape = (20, 36)
    rng = np.random.default_rng(6)
    masks = [np.stack(blobs(rng, shape, 2)) for _ in ids]
    sample = pd.DataFrame(
        {"ImageId": np.repeat(ids, 2), "EncodedPixels": "", "ClassId": [1, 2] * 3}
    )
    layout = detect_layout(sample, ["1", "2"])
    sub = build_rle_submission(sample, layout, ids, masks, order="column", classes=["1", "2"])
    kwargs = {"shapes": dict.fromkeys(ids, shape), "order": "column", "classes": ["1", "2"]}
    return sub, sample, layout, kwargs


def test_the_valid_submission_passes():
    sub, sample, layout, kwargs = valid_case()
    assert layout.class_column == "ClassId"
    validate_rle_submission(sub, sample, layout, **kwargs)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda s: s.drop(columns="ClassId"), "columns \\['ImageId', 'EncodedPixels'\\]"),
        (lambda s: s.iloc[:-1], "sub.csv: 5 rows; the sample submission has 6"),
        (lambda s: s.iloc[[1, 0, 2, 3, 4, 5]], "row 0: column 'ClassId' is '2', the sample's '1'"),
        (lambda s: s.assign(ImageId=["a", "a", "b", "b", "x", "c"]), "row 4: column 'ImageId'"),
        (lambda s: s.assign(EncodedPixels=["1 2 3", *s.EncodedPixels[1:]]), "row 0 \\(image 'a'"),
        (lambda s: s.assign(EncodedPixels=[*s.EncodedPixels[:5], "700 30"]), "past the image of"),
    ],
)
def test_each_bad_submission_is_refused_naming_the_file_and_row(spoil, message):
    sub, sample, layout, kwargs = valid_case()
    with pytest.raises(SubmissionError, match=message) as info:
        validate_rle_submission(spoil(sub), sample, layout, source="sub.csv", **kwargs)
    assert str(info.value).startswith("sub.csv")


def test_a_submission_encoded_in_the_other_order_is_refused():
    sub, sample, layout, kwargs = valid_case()
    kwargs["order"] = "row"
    with pytest.raises(SubmissionError, match="look like column-major RLE"):
        validate_rle_submission(sub, sample, layout, **kwargs)


def test_an_image_without_a_size_or_a_mask_is_refused():
    sub, sample, layout, kwargs = valid_case()
    kwargs["shapes"].pop("b")
    with pytest.raises(SubmissionError, match=r"no image size known for image\(s\) \['b'\]"):
        validate_rle_submission(sub, sample, layout, **kwargs)
    with pytest.raises(SubmissionError, match="1 image\\(s\\) of the sample submission have no"):
        build_rle_submission(
            sample, layout, ["a", "c"], masks_of("ac", channels=2), order="row", classes=["1", "2"]
        )


def test_a_sample_with_unknown_classes_or_repeated_rows_is_refused():
    sample = pd.DataFrame({"ImageId_ClassId": ["a_1", "a_4"], "EncodedPixels": ""})
    layout = RleLayout("ImageId_ClassId", "EncodedPixels", separator="_")
    with pytest.raises(SubmissionError, match="row 1: class '4' is not one of"):
        sample_keys(sample, layout, CLASSES)
    sample = pd.DataFrame({"ImageId_ClassId": ["a_1", "a_1"], "EncodedPixels": ""})
    with pytest.raises(SubmissionError, match="row 1: image 'a', class '1' appears twice"):
        sample_keys(sample, layout, CLASSES)
    with pytest.raises(SubmissionError, match="one row per image, but there are 3 classes"):
        sample_keys(sample, RleLayout("ImageId_ClassId", "EncodedPixels"), CLASSES)


def test_probabilities_are_not_written_as_masks():
    sample = pd.DataFrame({"id": ["a"], "rle_mask": [""]})
    with pytest.raises(SubmissionError, match="holds floats; .*threshold the probabilities"):
        build_rle_submission(
            sample,
            RleLayout("id", "rle_mask"),
            ["a"],
            [np.full((4, 5), 0.2)],
            order="row",
            classes=["mask"],
        )
