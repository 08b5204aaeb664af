"""Post-processing: small components removed, and the OOF search recovers a planted mask."""

import numpy as np
import pytest

from medalist.modalities.segmentation.postprocess import (
    postprocess,
    remove_small_components,
    search,
)
from medalist.modalities.segmentation.scoring import mean_score, score_table
from medalist.modalities.segmentation.store import Probabilities, dequantise, quantise


def test_components_under_min_size_are_removed():
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:3, 0:3] = True  # 9 pixels
    mask[5:7, 5:7] = True  # 4 pixels
    mask[0, 7] = True  # 1 pixel
    kept = remove_small_components(mask, 5)
    expected = np.zeros_like(mask)
    expected[0:3, 0:3] = True
    assert np.array_equal(kept, expected)
    assert np.array_equal(remove_small_components(mask, 4), mask & ~(np.arange(8) == 7)[None, :])
    assert np.array_equal(remove_small_components(mask, 0), mask)


def test_connectivity_decides_whether_diagonal_pixels_join():
    mask = np.eye(2, dtype=bool)  # two pixels touching at a corner
    assert remove_small_components(mask, 2, connectivity=8).sum() == 2
    assert remove_small_components(mask, 2, connectivity=4).sum() == 0


def test_components_never_join_across_images_or_channels():
    masks = np.zeros((2, 2, 4, 4), dtype=bool)
    masks[:, :, 1:3, 1] = True  # 2 pixels at the same place in every image and channel
    assert not remove_small_components(masks, 3).any()
    assert np.array_equal(remove_small_components(masks, 2), masks)


def planted(seed=0):
    """Six 32 x 32 images: a true 8 x 8 square in four (probability 0.45, below the default
    threshold), none in two; background 0.2-0.25; 2 x 2 noise blobs of 0.9 away from the squares."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((6, 32, 32), dtype=np.uint8)
    probs = 0.2 + 0.05 * rng.random((6, 32, 32))
    for image in range(6):
        if image < 4:
            top, left = rng.integers(0, 12, 2)
            truth[image, top : top + 8, left : left + 8] = 1
        probs[image, 26:28, 26:28] = 0.9
        probs[image, 22:24, 3:5] = 0.9
    probs[truth == 1] = 0.45
    return probs, truth


def test_the_search_removes_the_noise_and_recovers_the_threshold():
    probs, truth = planted()
    choice = search(probs, truth, [0.3, 0.4, 0.5, 0.6, 0.7], [0, 3, 5, 10, 100])
    # 0.3 and 0.4 find the squares, 5 and 10 drop the 4-pixel noise and keep the 64-pixel
    # squares: ties go to the smallest size, then the threshold nearest 0.5.
    assert (choice.threshold, choice.min_size, choice.score) == (0.4, 5, 1.0)
    assert np.array_equal(postprocess(probs, choice.threshold, choice.min_size), truth == 1)
    assert len(choice.table) == 25
    best = choice.table.loc[choice.table.score == 1.0, ["threshold", "min_size"]]
    assert sorted(map(tuple, best.to_numpy().tolist())) == [
        (0.3, 5),
        (0.3, 10),
        (0.4, 5),
        (0.4, 10),
    ]


@pytest.mark.parametrize("empty", ["one", "skip"])
def test_the_table_equals_scoring_the_postprocessed_masks(empty):
    rng = np.random.default_rng(1)
    probs = rng.random((3, 2, 12, 12)) ** 2
    truth = rng.random((3, 2, 12, 12)) > 0.7
    truth[0, 1] = False  # an empty channel
    choice = search(probs, truth, [0.2, 0.5, 0.8], [0, 2, 4], empty=empty, connectivity=4)
    for row in choice.table.itertuples():
        masks = postprocess(probs, row.threshold, row.min_size, connectivity=4)
        table = score_table(masks.astype(float), truth, "multilabel", empty=empty)
        assert row.score == pytest.approx(mean_score(table), abs=1e-12)


def test_ties_go_to_no_removal_then_the_threshold_nearest_half_then_the_higher():
    truth = np.zeros((2, 6, 6), dtype=bool)
    truth[0, 1:5, 1:5] = True
    probs = np.where(truth, 0.95, 0.05)  # every threshold in between gives the same masks
    assert search(probs, truth, [0.2, 0.45, 0.6], [10, 0]).threshold == 0.45
    choice = search(probs, truth, [0.3, 0.7], [10, 0])
    assert (choice.threshold, choice.min_size) == (0.7, 0)


def test_bad_grids_are_refused():
    probs, truth = planted()
    with pytest.raises(ValueError, match="thresholds in"):
        search(probs, truth, [0.5, 1.5], [0])
    with pytest.raises(ValueError, match="at least one"):
        search(probs, truth, [], [0])
    with pytest.raises(ValueError, match="one shape"):
        search(probs, truth[:3], [0.5], [0])
    with pytest.raises(ValueError, match="connectivity"):
        remove_small_components(truth, 3, connectivity=6)


def test_images_of_several_sizes_are_searched_in_chunks_with_the_same_scores():
    """Images of two sizes, labelled a few at a time: each pair's score is the mean over every
    image and channel of scoring the post-processed masks, whatever the chunk size."""
    rng = np.random.default_rng(2)
    shapes = [(2, 12, 12), (2, 9, 14), (2, 12, 12), (2, 9, 14), (2, 12, 12)]
    probs = [rng.random(shape) ** 2 for shape in shapes]
    truth = [rng.random(shape) > 0.7 for shape in shapes]
    truth[1][0] = False  # an empty channel
    grid = ([0.2, 0.5, 0.8], [0, 2, 4])
    whole = search(probs, truth, *grid, connectivity=4)
    for chunk_pixels in (1, 300):  # one image per chunk; two of 12 x 12 (2 x 288 pixels) apart
        chunked = search(probs, truth, *grid, connectivity=4, chunk_pixels=chunk_pixels)
        assert chunked.table.equals(whole.table)
    for row in whole.table.itertuples():
        per_image = [
            score_table(
                postprocess(p, row.threshold, row.min_size, connectivity=4)[None].astype(float),
                t[None],
                "multilabel",
            )
            for p, t in zip(probs, truth, strict=True)
        ]
        want = np.mean(np.concatenate([table.ravel() for table in per_image]))
        assert row.score == pytest.approx(want, abs=1e-12)


def test_masks_kept_as_levels_are_searched_as_their_floats():
    rng = np.random.default_rng(3)
    levels = [quantise(rng.random((1, 10, 10)) ** 2) for _ in range(4)]
    truth = [rng.random((1, 10, 10)) > 0.7 for _ in range(4)]
    floats = [dequantise(level) for level in levels]
    grid = ([0.2, 0.5], [0, 3])
    lazy = search(Probabilities(levels), truth, *grid, chunk_pixels=150)
    assert lazy.table.equals(search(floats, truth, *grid).table)
