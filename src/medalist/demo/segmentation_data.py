"""The built-in segmentation competition's data: find the patch pasted into a photo.

Each image is a mosaic of the two photos scikit-learn ships offline
(``sklearn.datasets.load_sample_images``): ``china.jpg`` (a temple, by danielbuechele on Flickr)
and ``flower.jpg`` (a flower, by vultilion on Flickr), both released under Creative Commons
Attribution 2.0 (https://creativecommons.org/licenses/by/2.0/), as
``sklearn/datasets/images/README.txt`` states. A random crop of one photo is the background; a
random crop of the other shows through a mask of one to three random ellipses. Which photo is the
background is drawn per image, so the colours of one photo do not give the mask away: the model
learns where the texture changes and which side of the seam is the pasted patch. A quarter of the
images have nothing pasted (an empty mask), so the empty-mask convention of the score matters.

The files follow a binary segmentation competition on Kaggle: ``train_images/``,
``test_images/`` and ``train_masks/`` (0/255 PNG, one per train image, named as its image),
``train.csv`` (``id``, ``image``, ``has_mask``), ``test.csv`` and ``sample_submission.csv``
(``id``, ``rle_mask``, one row per image). The test masks are kept aside in ``solution.csv``
(outside ``data/``) as column-major RLE, scored like a leaderboard would by
:func:`score_submission`: the mean Dice per image, an empty prediction on an empty mask scoring 1.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.datasets import load_sample_images

from medalist.errors import DataError
from medalist.io import write_csv
from medalist.modalities.segmentation import rle, scoring

RLE_ORDER = "column"
RLE_COLUMN = "rle_mask"


def build_mosaics(
    folder: str | Path,
    n_train: int = 240,
    n_test: int = 60,
    size: int = 64,
    seed: int = 0,
    empty_fraction: float = 0.25,
) -> Path:
    """Write the mosaics competition into ``folder`` (data files) and ``folder/../solution.csv``.

    Args:
        folder: the competition's ``data/`` folder.
        n_train: train images (ids ``0 .. n_train - 1``).
        n_test: test images (ids after the train ids).
        size: side of the square images, in pixels.
        seed: seed of every crop, flip and mask.
        empty_fraction: fraction of each split with nothing pasted (rounded to whole images).
    """
    if not 0 <= empty_fraction <= 1:
        raise ValueError(f"empty_fraction must lie in [0, 1], got {empty_fraction}")
    folder = Path(folder)
    photos = load_sample_images().images  # china, flower: (427, 640, 3) uint8 RGB
    rng = np.random.default_rng(seed)
    tables, masks = {}, {}
    first_id = 0
    for split, count in (("train", n_train), ("test", n_test)):
        ids = np.arange(first_id, first_id + count)
        first_id += count
        empty = rng.permutation(count) < round(count * empty_fraction)
        image_dir = folder / f"{split}_images"
        image_dir.mkdir(parents=True, exist_ok=True)
        names = [f"{i:04d}.png" for i in ids]
        masks[split] = []
        for name, is_empty in zip(names, empty, strict=True):
            image, mask = mosaic(photos, size, rng, is_empty)
            cv2.imwrite(str(image_dir / name), image[..., ::-1])  # cv2 writes BGR
            masks[split].append(mask)
        tables[split] = pd.DataFrame({"id": ids, "image": names})
    mask_dir = folder / "train_masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(tables["train"]["image"], masks["train"], strict=True):
        cv2.imwrite(str(mask_dir / name), mask * np.uint8(255))  # 0/255: visible in a viewer
    train = tables["train"].assign(has_mask=[int(m.any()) for m in masks["train"]])
    test = tables["test"]
    write_csv(folder / "train.csv", train)
    write_csv(folder / "test.csv", test)
    write_csv(folder / "sample_submission.csv", pd.DataFrame({"id": test["id"], RLE_COLUMN: ""}))
    solution = [rle.encode(mask, RLE_ORDER) for mask in masks["test"]]
    write_csv(
        folder.parent / "solution.csv", pd.DataFrame({"id": test["id"], RLE_COLUMN: solution})
    )
    return folder


def mosaic(
    photos: list[np.ndarray], size: int, rng: np.random.Generator, empty: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """One sample: the (size, size, 3) uint8 RGB image and its (size, size) uint8 0/1 mask.

    The background is a crop of a photo drawn at random, the foreground a crop of the other one,
    shown where the mask is set; an ``empty`` sample is the background alone.
    """
    back = int(rng.integers(len(photos)))
    background = random_crop(photos[back], size, rng)
    foreground = random_crop(photos[1 - back], size, rng)
    mask = np.zeros((size, size), dtype=np.uint8) if empty else random_blob(size, rng)
    image = np.where(mask[..., None].astype(bool), foreground, background)
    return image, mask


def random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square of ``photo``, between ``size`` and half the photo's short side wide,
    shrunk to (size, size) and flipped at random, so crops differ in scale as well as place."""
    height, width = photo.shape[:2]
    side = int(rng.integers(size, max(size, min(height, width) // 2) + 1))
    top = int(rng.integers(height - side + 1))
    left = int(rng.integers(width - side + 1))
    crop = photo[top : top + side, left : left + side]
    crop = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    return np.ascontiguousarray(crop)


def random_blob(size: int, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) uint8 0/1 mask: the union of one to three filled ellipses, each centred
    away from the border, its half-axes between a tenth and a quarter of the image."""
    mask = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        centre = tuple(int(c) for c in rng.integers(size // 6, size - size // 6, size=2))
        axes = tuple(int(a) for a in rng.integers(max(1, size // 10), size // 4 + 1, size=2))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(mask, centre, axes, angle, 0, 360, color=1, thickness=-1)
    return mask


def read_rles(path: Path) -> pd.Series:
    """The ``rle_mask`` column of a submission or solution file, by id (as text).

    Raises:
        DataError: naming the file when it has no ``id`` or ``rle_mask`` column, or an id twice.
    """
    table = pd.read_csv(path, dtype={"id": str})
    missing = [c for c in ("id", RLE_COLUMN) if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(table.columns)}")
    repeated = table["id"][table["id"].duplicated()]
    if len(repeated):
        raise DataError(f"{path}: id {repeated.iloc[0]!r} appears more than once")
    return table.set_index("id")[RLE_COLUMN]


def score_submission(submission: Path, solution: Path, size: int = 64) -> float:
    """Mean Dice of a submission's masks against the held-out solution (the 'leaderboard'),
    per image, an empty prediction on an empty mask scoring 1.

    Args:
        submission: ``id, rle_mask`` (column-major RLE), one row per test image.
        solution: the file :func:`build_mosaics` wrote.
        size: the images' side, as given to :func:`build_mosaics`.

    Raises:
        DataError: naming the submission when its ids are not the solution's, or an RLE of it is
            invalid or runs past the image.
    """
    predicted, truth = read_rles(Path(submission)), read_rles(Path(solution))
    if set(predicted.index) != set(truth.index):
        missing = sorted(set(truth.index) - set(predicted.index))
        extra = sorted(set(predicted.index) - set(truth.index))
        raise DataError(
            f"{submission}: its ids are not the solution's ({solution}): {len(missing)} missing "
            f"{missing[:5]}, {len(extra)} not in the solution {extra[:5]}"
        )
    shape = (size, size)

    def stack(rles: pd.Series, source: Path) -> np.ndarray:  # (N, 1, H, W) booleans
        masks = [
            rle.decode(rles[i], shape, RLE_ORDER, source=f"{source}: id {i}") for i in truth.index
        ]
        return np.stack(masks)[:, None].astype(bool)

    counts = scoring.binary_counts(stack(predicted, submission), stack(truth, solution))
    return scoring.mean_score(scoring.from_counts(*counts, metric="dice", empty="one"))
