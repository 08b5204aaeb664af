"""Tiled prediction: tiles cover the image, a per-pixel model comes back unchanged, batching is free."""

import itertools

import pytest
import torch
from torch import nn

from medalist.modalities.segmentation import tiling
from medalist.modalities.segmentation.tiling import (
    WINDOWS,
    coverage,
    predict_tiled,
    tile_boxes,
    tile_starts,
    window,
)


def per_pixel_model(channels=3, outputs=2):
    """A 1 x 1 convolution and a sigmoid: each output pixel depends on its input pixel only."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, outputs, 1), nn.Sigmoid()).eval()


def test_tile_starts_examples():
    assert tile_starts(10, 4, 1) == [0, 3, 6]
    assert tile_starts(8, 4, 0) == [0, 4]
    assert tile_starts(11, 4, 2) == [0, 2, 4, 6, 7]  # the last one flush with the border
    assert tile_starts(4, 4, 3) == [0]
    assert tile_starts(3, 4, 1) == [0]  # smaller than a tile: padded, one tile


@pytest.mark.parametrize(("length", "tile"), [(1, 4), (4, 4), (5, 4), (23, 8), (64, 16), (65, 16)])
def test_tiles_cover_every_pixel_and_stay_inside(length, tile):
    for overlap in range(tile):
        starts = tile_starts(length, tile, overlap)
        covered = set()
        for start in starts:
            covered.update(range(start, start + tile))
        assert starts[0] == 0 and starts[-1] == max(0, length - tile)
        assert covered >= set(range(length)) and max(covered) < max(length, tile)
        assert all(b - a <= tile - overlap for a, b in itertools.pairwise(starts))


def test_windows_are_positive_and_at_most_one():
    for kind, tile in itertools.product(WINDOWS, (1, 2, 7, 64)):
        weights = window(tile, kind)
        assert weights.shape == (tile, tile) and (weights > 0).all() and (weights <= 1).all()
        assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.T)
    assert window(8, "hann")[0, 0] < window(8, "hann")[3, 4]  # small at the border


@pytest.mark.parametrize(("height", "width"), [(37, 53), (5, 9), (32, 48), (16, 40)])
def test_every_pixel_has_weight(height, width):
    for overlap, kind in itertools.product((0, 5, 15), WINDOWS):
        assert (coverage(height, width, 16, overlap, kind) > 0).all()


@pytest.mark.parametrize(
    ("height", "width", "tile", "overlap"),
    [
        (37, 53, 16, 5),
        (5, 9, 16, 4),
        (32, 48, 16, 0),
        (19, 21, 8, 7),
        (16, 16, 16, 8),
        (20, 7, 6, 2),
    ],
)
def test_a_per_pixel_model_comes_back_unchanged(height, width, tile, overlap):
    model = per_pixel_model()
    image = torch.randn(3, height, width)
    expected = model(image[None])[0]
    for kind in WINDOWS:
        got = predict_tiled(model, image, tile, overlap, batch_size=4, kind=kind)
        assert got.shape == (2, height, width)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_batched_tiles_equal_tiles_one_by_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    model.eval()
    image = torch.randn(3, 45, 38)
    calls = []

    def predict(tiles):
        calls.append(len(tiles))
        return model(tiles)

    one_by_one = predict_tiled(predict, image, 16, 6, batch_size=1)
    n_tiles = len(tile_boxes(45, 38, 16, 6))
    assert calls == [1] * n_tiles
    for batch_size in (3, n_tiles, 100):
        calls.clear()
        batched = predict_tiled(predict, image, 16, 6, batch_size=batch_size)
        assert max(calls) <= batch_size and sum(calls) == n_tiles
        torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-6)


def test_a_cpu_pass_holds_at_most_its_share_of_values(monkeypatch):
    monkeypatch.setattr(tiling, "CPU_FORWARD_VALUES", 4 * 3 * 16 * 16)  # four 3 x 16 x 16 tiles
    model, calls = per_pixel_model(), []

    def predict(tiles):
        calls.append(len(tiles))
        return model(tiles)

    image = torch.randn(3, 40, 40)  # 3 x 3 tiles of 16 px overlapping by 4
    got = predict_tiled(predict, image, 16, 4, batch_size=8)
    assert calls == [4, 4, 1]
    torch.testing.assert_close(got, model(image[None])[0], rtol=1e-5, atol=1e-6)


def test_bad_arguments_are_refused():
    model, image = per_pixel_model(), torch.randn(3, 20, 20)
    with pytest.raises(ValueError, match="overlap < tile"):
        predict_tiled(model, image, 8, 8)
    with pytest.raises(ValueError, match="one image"):
        predict_tiled(model, image[None], 8, 2)
    with pytest.raises(ValueError, match="predict must map"):
        predict_tiled(lambda tiles: tiles[:, :, ::2], image, 8, 2)
    with pytest.raises(ValueError, match="window"):
        window(8, "gauss")
