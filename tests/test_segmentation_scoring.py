"""Dice and IoU per image and channel: hand-computed values, the empty-mask conventions."""

import math

import numpy as np
import pytest

from medalist.modalities.segmentation.scoring import class_counts, mean_score, score_table


def four_binary_images():
    """(probs, masks) of four 2 x 2 images, one channel each:

    0. true [[1, 1], [0, 0]], predicted [[1, 0], [1, 0]]: I 1, P 2, T 2 -> Dice 1/2, IoU 1/3
    1. true empty, predicted empty: the convention decides
    2. true empty, one pixel predicted: 0
    3. one true pixel, nothing predicted: 0
    """
    probs = np.array(
        [
            [[0.9, 0.4], [0.6, 0.1]],
            [[0.2, 0.2], [0.2, 0.2]],
            [[0.7, 0.0], [0.0, 0.0]],
            [[0.3, 0.0], [0.0, 0.0]],
        ]
    )
    masks = np.array(
        [[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]], [[1, 0], [0, 0]]], dtype=np.uint8
    )
    return probs, masks


@pytest.mark.parametrize(
    ("metric", "empty", "table", "mean"),
    [
        ("dice", "one", [0.5, 1, 0, 0], 1.5 / 4),
        ("dice", "skip", [0.5, np.nan, 0, 0], 0.5 / 3),
        ("iou", "one", [1 / 3, 1, 0, 0], (1 / 3 + 1) / 4),
        ("iou", "skip", [1 / 3, np.nan, 0, 0], 1 / 9),
    ],
)
def test_binary_scores_and_the_empty_conventions(metric, empty, table, mean):
    probs, masks = four_binary_images()
    got = score_table(probs, masks, "binary", metric=metric, empty=empty)
    assert got.shape == (4, 1)
    np.testing.assert_allclose(got[:, 0], table)
    assert mean_score(got) == pytest.approx(mean)


def test_the_threshold_is_inclusive_and_moves_the_masks():
    probs, masks = four_binary_images()
    # At 0.3 image 3's pixel counts (Dice 1) and image 0 gains nothing new (0.4 > 0.3 too):
    # image 0 predicted [[1, 1], [1, 0]] -> I 2, P 3, T 2 -> 4 / 5.
    got = score_table(probs, masks, "binary", threshold=0.3)[:, 0]
    np.testing.assert_allclose(got, [0.8, 1, 0, 1])


def test_multilabel_scores_each_channel():
    probs, masks = four_binary_images()
    two = np.stack([probs[0], probs[1]])[None]  # one image, channels = images 0 and 1
    truth = np.stack([masks[0], masks[1]])[None]
    np.testing.assert_allclose(score_table(two, truth, "multilabel"), [[0.5, 1.0]])
    np.testing.assert_allclose(score_table(two, truth, "multilabel", empty="skip"), [[0.5, np.nan]])


def test_multiclass_scores_each_class_from_the_argmax():
    truth = np.array([[[0, 1], [2, 2]], [[0, 0], [0, 0]]])
    predicted = np.array([[[0, 1], [1, 2]], [[0, 0], [0, 0]]])
    probs = np.eye(3)[predicted].transpose(0, 3, 1, 2) * 0.5 + 0.1  # argmax = predicted
    # image 0: class 0 exact; class 1 I 1, P 2, T 1 -> 2/3; class 2 I 1, P 1, T 2 -> 2/3
    # image 1: class 0 exact; classes 1 and 2 absent from both
    np.testing.assert_allclose(
        score_table(probs, truth, "multiclass"), [[1, 2 / 3, 2 / 3], [1, 1, 1]]
    )
    skipped = score_table(probs, truth, "multiclass", empty="skip")
    np.testing.assert_allclose(skipped, [[1, 2 / 3, 2 / 3], [1, np.nan, np.nan]])
    assert mean_score(skipped) == pytest.approx((1 + 4 / 3 + 1) / 4)


def test_class_counts_equal_a_loop_over_classes():
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 4, (5, 6, 7)), rng.integers(0, 4, (5, 6, 7))
    inter, pred, true = class_counts(predicted, truth, 4)
    for image in range(5):
        for c in range(4):
            p, t = predicted[image] == c, truth[image] == c
            assert (inter[image, c], pred[image, c], true[image, c]) == (
                (p & t).sum(),
                p.sum(),
                t.sum(),
            )


def test_every_pair_skipped_means_nan():
    probs, masks = four_binary_images()
    table = score_table(probs[1:2], masks[1:2], "binary", empty="skip")
    assert math.isnan(mean_score(table))


def test_bad_inputs_are_refused():
    probs, masks = four_binary_images()
    with pytest.raises(ValueError, match="floats"):
        score_table((probs * 255).astype(np.uint8), masks, "binary")
    with pytest.raises(ValueError, match="alike"):
        score_table(probs, masks[:, :1], "binary")
    with pytest.raises(ValueError, match="empty must be"):
        score_table(probs, masks, "binary", empty="zero")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        score_table(np.ones((1, 3, 2, 2)), np.full((1, 2, 2), 3), "multiclass")
