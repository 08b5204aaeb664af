"""Probability masks quantised to uint8 in one safetensors file per fold, read back and averaged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from medalist.errors import DataError
from medalist.modalities.segmentation.store import (
    ERROR_BOUND,
    FORMAT,
    Probabilities,
    average_masks,
    dequantise,
    quantise,
    read_masks,
    read_probabilities,
    read_quantised,
    write_masks,
)

FLOAT32_SLACK = 1e-6  # float32 arithmetic on top of the quantisation bound


def probability_masks(seed=0, shapes=((2, 5, 7), (2, 3, 4), (1, 6, 6))):
    rng = np.random.default_rng(seed)
    return [rng.random(shape, dtype=np.float32) for shape in shapes]


def test_the_quantisation_error_is_at_most_half_a_level():
    probs = np.linspace(0, 1, 200_001, dtype=np.float32)
    back = dequantise(quantise(probs))
    assert back.dtype == np.float32
    assert np.abs(back.astype(np.float64) - probs).max() <= ERROR_BOUND + FLOAT32_SLACK
    assert abs(ERROR_BOUND - 0.5 / 255) < 1e-15
    levels = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(quantise(dequantise(levels)), levels)  # levels are exact
    assert quantise(np.float32([0.0, 1.0, 0.5 / 255 - 1e-4, 1.5 / 255 + 1e-4])).tolist() == [
        0,
        255,
        0,
        2,
    ]


def test_masks_of_several_sizes_round_trip_in_one_file_with_their_id_order(tmp_path):
    masks = probability_masks()
    ids = ["img_9", "img_1", "img_5"]
    path = write_masks(tmp_path / "oof_fold0.safetensors", ids, masks)
    got_ids, got = read_masks(path)
    assert got_ids == ids
    assert [m.shape for m in got] == [m.shape for m in masks]
    for back, probs in zip(got, masks, strict=True):
        assert back.dtype == np.float32
        assert np.abs(back - probs).max() <= ERROR_BOUND + FLOAT32_SLACK
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_the_file_is_plain_safetensors_with_the_ids_and_shapes_in_its_metadata(tmp_path):
    masks = probability_masks()
    ids = np.array([30, 10, 20])  # numpy ids are stored as plain integers
    path = write_masks(tmp_path / "test.safetensors", ids, masks)
    tensors = load_file(path)
    assert list(tensors) == ["masks"] and tensors["masks"].dtype == np.uint8
    assert tensors["masks"].size == sum(m.size for m in masks)  # one byte a value
    with safe_open(str(path), framework="np") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == FORMAT
    assert json.loads(metadata["ids"]) == [30, 10, 20]
    assert json.loads(metadata["shapes"]) == [[2, 5, 7], [2, 3, 4], [1, 6, 6]]
    assert read_quantised(path)[0] == [30, 10, 20]


def test_an_empty_fold_round_trips(tmp_path):
    path = write_masks(tmp_path / "empty.safetensors", [], [])
    assert read_masks(path) == ([], [])


@pytest.mark.parametrize(
    ("ids", "masks", "message"),
    [
        (["a", "b"], [np.zeros((1, 2, 2))], "1 masks for 2 ids"),
        (["a", "a"], [np.zeros((1, 2, 2))] * 2, "id 'a' appears twice"),
        (["a"], [np.zeros((2, 2))], r"id 'a' has shape \(2, 2\); probability masks are"),
        (["a"], [np.full((1, 2, 2), np.nan)], "id 'a' holds NaN or infinite values"),
        (["a"], [np.full((1, 2, 2), 1.5)], r"values in \[1.5, 1.5\]; probabilities are in"),
        (["a"], [np.full((1, 2, 2), -0.1)], "apply the sigmoid or softmax first"),
        ([1.5], [np.zeros((1, 2, 2))], "mask ids are text or integers"),
    ],
)
def test_bad_masks_are_refused_and_the_previous_file_survives(tmp_path, ids, masks, message):
    path = write_masks(tmp_path / "oof.safetensors", ["old"], [np.ones((1, 2, 2))])
    with pytest.raises(DataError, match=message):
        write_masks(path, ids, masks)
    assert read_masks(path)[0] == ["old"]


def test_float_rounding_just_outside_0_1_is_clipped(tmp_path):
    probs = np.float32([[[1 + 1e-7, -1e-7]]])
    path = write_masks(tmp_path / "m.safetensors", ["a"], [probs])
    assert read_quantised(path)[1][0].tolist() == [[[255, 0]]]


def test_a_missing_foreign_or_truncated_file_is_named(tmp_path):
    with pytest.raises(DataError, match="mask file not found: .*nothing.safetensors"):
        read_masks(tmp_path / "nothing.safetensors")
    foreign = tmp_path / "weights.safetensors"
    save_file({"masks": np.zeros(4, np.uint8)}, foreign, metadata={"format": "pt"})
    with pytest.raises(DataError, match="weights.safetensors: not a medalist mask file"):
        read_masks(foreign)
    path = write_masks(tmp_path / "m.safetensors", ["a", "b"], probability_masks()[:2])
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(DataError, match="m.safetensors: not a readable safetensors mask file"):
        read_masks(path)
    altered = tmp_path / "altered.safetensors"
    metadata = {"format": FORMAT, "ids": '["a"]', "shapes": "[[1, 2, 2]]", "levels": "255"}
    save_file({"masks": np.zeros(5, np.uint8)}, altered, metadata=metadata)
    with pytest.raises(DataError, match="holds 5 uint8 values, its metadata 4 uint8"):
        read_masks(altered)


def test_averaging_aligns_ids_and_weights_the_files(tmp_path):
    first, second = probability_masks(1), probability_masks(2)
    ids = ["a", "b", "c"]
    one = write_masks(tmp_path / "exp1.safetensors", ids, first)
    order = [2, 0, 1]  # the second experiment wrote its images in another order
    two = write_masks(
        tmp_path / "exp2.safetensors", [ids[i] for i in order], [second[i] for i in order]
    )
    got_ids, mean = average_masks([one, two])
    assert got_ids == ids
    for m, a, b in zip(mean, first, second, strict=True):
        assert m.dtype == np.float32
        assert np.abs(m - (a + b) / 2).max() <= ERROR_BOUND + FLOAT32_SLACK
    _, weighted = average_masks([one, two], weights=[3, 1])
    for m, a, b in zip(weighted, first, second, strict=True):
        assert np.abs(m - (3 * a + b) / 4).max() <= ERROR_BOUND + FLOAT32_SLACK


def test_averaging_refuses_files_of_other_ids_or_shapes(tmp_path):
    masks = probability_masks()
    one = write_masks(tmp_path / "exp1.safetensors", ["a", "b", "c"], masks)
    other_ids = write_masks(tmp_path / "exp2.safetensors", ["a", "b", "d"], masks)
    with pytest.raises(
        DataError, match=r"exp2.safetensors: its ids differ .*missing \['c'\], extra \['d'\]"
    ):
        average_masks([one, other_ids])
    reshaped = [masks[0], masks[1][:, :2], masks[2]]
    other_shape = write_masks(tmp_path / "exp3.safetensors", ["a", "b", "c"], reshaped)
    with pytest.raises(
        DataError, match=r"exp3.safetensors: the mask of id 'b' has shape \(2, 2, 4\)"
    ):
        average_masks([one, other_shape])
    with pytest.raises(DataError, match="no mask files to average"):
        average_masks([])
    with pytest.raises(DataError, match="one non-negative weight per file"):
        average_masks([one, one], weights=[1, -1])


def test_probabilities_kept_as_levels_read_as_read_masks_and_write_back_unchanged(tmp_path):
    write_masks(tmp_path / "a.safetensors", ["x", "y", "z"], probability_masks())
    ids, floats = read_masks(tmp_path / "a.safetensors")
    same_ids, lazy = read_probabilities(tmp_path / "a.safetensors")
    assert same_ids == ids and len(lazy) == 3
    assert all(np.array_equal(lazy[i], floats[i]) for i in range(3))
    assert all(np.array_equal(a, b) for a, b in zip(lazy, floats, strict=True))  # iteration
    assert lazy[0].dtype == np.float32 and lazy.levels[0].dtype == np.uint8
    # Index arrays, boolean arrays and slices pick images, still as levels.
    picked = lazy[np.array([2, 0])]
    assert isinstance(picked, Probabilities) and np.array_equal(picked[0], floats[2])
    assert np.array_equal(lazy[np.array([False, True, False])][0], floats[1])
    assert np.array_equal(lazy[1:][1], floats[2])
    with pytest.raises(IndexError):
        lazy[3]
    # Written again from the levels' floats, the file holds the same levels.
    write_masks(tmp_path / "b.safetensors", ids, lazy)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(
            read_quantised(tmp_path / "a.safetensors")[1],
            read_quantised(tmp_path / "b.safetensors")[1],
            strict=True,
        )
    )
