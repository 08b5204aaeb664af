"""Mask TTA: every view is undone exactly, on square and non-square images."""

import pytest
import torch
from torch import nn

from medalist.errors import ConfigError
from medalist.modalities.segmentation.tiling import predict_tiled
from medalist.modalities.segmentation.views import (
    INVERSE,
    apply_view,
    expand_views,
    predict_views,
    undo_view,
)


def per_pixel_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 1), nn.Sigmoid()).eval()


def test_d4_expands_to_the_eight_symmetries():
    views = expand_views(["d4"])
    assert len(views) == 8 and set(views) == set(INVERSE)
    x = torch.arange(9.0).view(1, 1, 3, 3)
    assert len({tuple(apply_view(name, x).flatten().tolist()) for name in views}) == 8
    assert expand_views(None) == ["identity"]
    assert expand_views(["hflip", "rot90"]) == ["hflip", "rot90"]


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (2, 3, 4, 7)])
def test_undo_inverts_every_view(shape):
    x = torch.randn(shape)
    for name in INVERSE:
        assert torch.equal(undo_view(name, apply_view(name, x)), x), name


def test_rot90_is_undone_by_rot270_not_by_itself():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    rotated = apply_view("rot90", x)
    assert rotated.shape == (1, 1, 3, 2)
    assert not torch.equal(apply_view("rot90", rotated), x)
    assert torch.equal(undo_view("rot90", rotated), x)


@pytest.mark.parametrize("size", [(6, 6), (5, 8)])
def test_a_per_pixel_model_gives_the_same_mask_through_every_view(size):
    model, images = per_pixel_model(), torch.randn(2, 3, *size)
    plain = model(images)
    for name in expand_views(["d4"]):
        got = predict_views(model, images, [name])
        assert got.shape == plain.shape, name
        torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(predict_views(model, images, expand_views(["d4"])), plain)


def test_views_are_averaged_after_undoing():
    # A model that is not equivariant: it marks the left column. Undone, hflip's mark is the
    # right column; the mean of identity and hflip marks both at 1/2.
    def left_column(images):
        out = torch.zeros(images.shape[0], 1, *images.shape[-2:])
        out[..., 0] = 1.0
        return out

    got = predict_views(left_column, torch.zeros(1, 3, 4, 5), ["identity", "hflip"])
    expected = torch.zeros(1, 1, 4, 5)
    expected[..., 0] = expected[..., -1] = 0.5
    assert torch.equal(got, expected)


def test_views_of_the_same_shape_share_one_pass():
    model, calls = per_pixel_model(), []

    def predict(images):
        calls.append(tuple(images.shape))
        return model(images)

    predict_views(predict, torch.randn(2, 3, 4, 6), expand_views(["d4"]))
    assert sorted(calls) == [(8, 3, 4, 6), (8, 3, 6, 4)]  # one pass per orientation


def test_tta_inside_tiled_prediction():
    model, image = per_pixel_model(), torch.randn(3, 21, 30)
    views = expand_views(["d4"])
    got = predict_tiled(lambda tiles: predict_views(model, tiles, views), image, 8, 3)
    torch.testing.assert_close(got, model(image[None])[0], rtol=1e-5, atol=1e-6)


def test_unknown_view_names_the_key():
    with pytest.raises(ConfigError, match=r"infer\.tta: 'zoom_110' is not a segmentation view"):
        expand_views(["hflip", "zoom_110"])
    with pytest.raises(ConfigError, match="infer.tta"):
        expand_views(["flip"])
