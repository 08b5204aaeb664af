"""The segmentation demo's data: Kaggle's file layout, masks medalist's checks accept and that
match the pasted patches, the same bytes for a seed, and a leaderboard score with the empty-mask
convention."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from medalist.demo.segmentation_data import build_mosaics, mosaic, score_submission
from medalist.errors import DataError
from medalist.modalities.segmentation import rle
from medalist.modalities.segmentation.masks import MaskLayout, check_masks
from medalist.modalities.segmentation.submission import RleLayout, detect_layout

N_TRAIN, N_TEST, SIZE = 12, 4, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_mosaics(
        tmp_path_factory.mktemp("mosaics") / "data", n_train=N_TRAIN, n_test=N_TEST, size=SIZE
    )


def _image(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _mask(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _solution_masks(data):
    solution = pd.read_csv(data.parent / "solution.csv")
    return [rle.decode(text, (SIZE, SIZE), "column") for text in solution["rle_mask"]]


def test_files_columns_and_counts(data):
    train = pd.read_csv(data / "train.csv")
    test = pd.read_csv(data / "test.csv")
    sample = pd.read_csv(data / "sample_submission.csv")
    solution = pd.read_csv(data.parent / "solution.csv")
    assert list(train.columns) == ["id", "image", "has_mask"]
    assert list(test.columns) == ["id", "image"]
    assert list(sample.columns) == ["id", "rle_mask"]
    assert list(solution.columns) == ["id", "rle_mask"]
    assert len(train) == N_TRAIN and len(test) == N_TEST
    assert set(train["id"]).isdisjoint(test["id"])
    assert list(sample["id"]) == list(test["id"]) == list(solution["id"])
    assert sample["rle_mask"].isna().all()  # empty strings, read back as missing
    for split, table in (("train", train), ("test", test)):
        for name in table["image"]:
            image = _image(data / f"{split}_images" / name)
            assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    for name in train["image"]:
        assert (data / "train_masks" / name).is_file()
    assert not (data / "test_masks").exists()
    # One row per image, as the submission stage reads it.
    assert detect_layout(sample, ["mask"]) == RleLayout("id", "rle_mask")


def test_masks_binary_sized_and_a_quarter_empty(data):
    train = pd.read_csv(data / "train.csv")
    masks = [_mask(data / "train_masks" / name) for name in train["image"]]
    for mask in masks:
        assert mask.shape == (SIZE, SIZE)
        assert set(np.unique(mask)) <= {0, 255}
    has_mask = [int(mask.any()) for mask in masks]
    assert list(train["has_mask"]) == has_mask
    assert sum(has_mask) == N_TRAIN - N_TRAIN // 4  # a quarter empty
    for mask in masks:
        if mask.any():  # a blob, neither a speck nor the whole image
            assert 0.02 < (mask > 0).mean() < 0.9
    test_masks = _solution_masks(data)
    assert sum(not m.any() for m in test_masks) == N_TEST // 4


def test_medalist_mask_checks_accept_the_data(data):
    train = pd.read_csv(data / "train.csv")
    layout = MaskLayout(
        task="binary",
        classes=("mask",),
        masks="files",
        mask_dir=data / "train_masks",
        mask_pattern="{stem}.png",
    )
    paths = [data / "train_images" / name for name in train["image"]]
    assert check_masks(layout, train, paths, "train.csv") == [(SIZE, SIZE)] * N_TRAIN


def test_mask_marks_the_pasted_patch():
    """Inside the mask the image is the foreground crop, outside the background crop; the two
    crops differ, so a mask that missed the patch would fail here."""
    photos = [np.full((80, 90, 3), 10, np.uint8), np.full((80, 90, 3), 200, np.uint8)]
    image, mask = mosaic(photos, SIZE, np.random.default_rng(3))
    inside, outside = image[mask == 1], image[mask == 0]
    assert 0 < len(inside) < SIZE * SIZE
    assert len(np.unique(inside)) == 1 and len(np.unique(outside)) == 1
    assert inside[0, 0] != outside[0, 0]
    image, mask = mosaic(photos, SIZE, np.random.default_rng(3), empty=True)
    assert not mask.any() and len(np.unique(image)) == 1


def _seam_contrast(image, mask):
    """How much more the image changes between neighbours across the mask's border than between
    the other neighbours (1: the border is nowhere to be seen in the image)."""
    image = image.astype(np.int16)
    across, elsewhere = [], []
    for axis in (0, 1):
        seam = np.diff(mask.astype(np.int8), axis=axis) != 0
        jumps = np.abs(np.diff(image, axis=axis)).sum(-1)
        across.append(jumps[seam])
        elsewhere.append(jumps[~seam])
    return np.concatenate(across).mean() / np.concatenate(elsewhere).mean()


def test_train_masks_are_where_the_image_changes(data):
    """On the real photos every non-empty mask's border is a seam in the image (the patch
    pasted there), several times the image's usual change between neighbours."""
    train = pd.read_csv(data / "train.csv")
    for name in train["image"][train["has_mask"] == 1]:
        mask = _mask(data / "train_masks" / name) > 0
        assert _seam_contrast(_image(data / "train_images" / name), mask) > 2


def _all_bytes(folder):
    root = folder.parent
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(data, tmp_path):
    again = build_mosaics(tmp_path / "a" / "data", n_train=N_TRAIN, n_test=N_TEST, size=SIZE)
    assert _all_bytes(again) == _all_bytes(data)
    other = build_mosaics(
        tmp_path / "b" / "data", n_train=N_TRAIN, n_test=N_TEST, size=SIZE, seed=1
    )
    assert _all_bytes(other).keys() == _all_bytes(data).keys()
    image = Path("data/train_images/0000.png")
    assert _all_bytes(other)[image] != _all_bytes(data)[image]


def test_solution_decodes_to_the_test_masks(data):
    """The solution's column-major RLEs decode to the patches pasted into the test images; read
    in the other order they would be transposed, and their borders would miss the seams."""
    solution = pd.read_csv(data.parent / "solution.csv")
    masks = _solution_masks(data)
    for text, mask in zip(solution["rle_mask"].fillna(""), masks, strict=True):
        assert rle.encode(mask, "column") == text
    images = [
        _image(data / "test_images" / name) for name in pd.read_csv(data / "test.csv")["image"]
    ]
    pasted = [(image, mask) for image, mask in zip(images, masks, strict=True) if mask.any()]
    assert pasted
    assert all(_seam_contrast(image, mask) > 2 for image, mask in pasted)
    assert np.median([_seam_contrast(image, mask.T) for image, mask in pasted]) < 2


def test_score_of_the_solution_and_of_empty_masks(data, tmp_path):
    solution = data.parent / "solution.csv"
    assert score_submission(solution, solution, size=SIZE) == 1.0
    empty_fraction = np.mean([not m.any() for m in _solution_masks(data)])
    assert 0 < empty_fraction < 1
    sample = data / "sample_submission.csv"
    assert score_submission(sample, solution, size=SIZE) == pytest.approx(empty_fraction)
    # One test mask predicted in full, the others empty: its Dice is 2|T| / (|T| + size^2).
    truth = pd.read_csv(solution)
    row = next(i for i, m in enumerate(_solution_masks(data)) if m.any())
    area = int(_solution_masks(data)[row].sum())
    full = truth.assign(rle_mask="")
    full.loc[row, "rle_mask"] = rle.encode(np.ones((SIZE, SIZE), np.uint8), "column")
    full.to_csv(tmp_path / "full.csv", index=False)
    want = (empty_fraction * N_TEST + 2 * area / (area + SIZE * SIZE)) / N_TEST
    assert score_submission(tmp_path / "full.csv", solution, size=SIZE) == pytest.approx(want)


def test_score_refuses_other_ids(data, tmp_path):
    solution = data.parent / "solution.csv"
    wrong = pd.read_csv(solution)
    wrong.loc[0, "id"] = 9999
    path = tmp_path / "wrong_ids.csv"
    wrong.to_csv(path, index=False)
    with pytest.raises(DataError, match="wrong_ids.csv") as error:
        score_submission(path, solution, size=SIZE)
    assert "9999" in str(error.value)
