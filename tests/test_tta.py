"""TTA: identity equals a single pass, flip-invariant models ignore flips, merge maths, batching."""

import json

import pytest
import torch
from torch import nn

from medalist.cli import main
from medalist.errors import ConfigError
from medalist.prediction.tta import D4, batched_views, expand_views, merge, view


class PoolHead(nn.Module):
    """Global average pooling then a linear layer: invariant to flips and rotations."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x).mean((-2, -1)))


def test_identity_equals_single_pass():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LazyLinear(3))
    x = torch.randn(5, 1, 8, 8)
    single = model(x).softmax(-1)
    assert torch.equal(merge("multiclass", batched_views(model, x, ["identity"]), "mean"), single)


def test_flip_invariant_model_ignores_flips():
    model, x = PoolHead(), torch.randn(4, 1, 9, 7)
    plain = model(x).softmax(-1)
    for views in (["hflip"], ["identity", "vflip"], D4):
        got = merge("multiclass", batched_views(model, x, expand_views(views)), "mean")
        assert torch.allclose(got, plain, atol=1e-6)


def test_d4_views_are_the_eight_distinct_symmetries():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    seen = {tuple(view(name, x).flatten().tolist()) for name in expand_views(["d4"])}
    assert len(seen) == 8


def test_batched_views_equal_separate_passes():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8, 3)
    ).eval()
    x = torch.randn(3, 1, 8, 8)
    names = ["identity", "hflip", "rot90", "scale_12", "zoom_120"]
    together = batched_views(model, x, names)
    for i, name in enumerate(names):
        assert torch.allclose(together[i], model(view(name, x)), atol=1e-6)


def test_zoom_keeps_the_size_and_magnifies_about_the_centre():
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(2, 3, 1, 1)
    assert torch.equal(view("zoom_100", x), x)
    for name in ("zoom_50", "zoom_90", "zoom_110", "zoom_200"):
        assert view(name, x).shape == x.shape
    # A constant image stays constant: shrinking pads with the border, not with zeros.
    flat = torch.full((1, 1, 6, 6), -1.5)
    assert torch.allclose(view("zoom_60", flat), flat)
    # Magnified twice: the centre 4 x 4 fills the image, each pixel over a 2 x 2 block (a
    # linear ramp is sampled exactly by bilinear interpolation, so the values are known).
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    row = view("zoom_200", ramp)[0, 0, 3]
    assert torch.allclose(row, torch.arange(8.0) / 2 + 1.75)
    # Shrunk to half: the image's 8 columns land on the middle 4, the edges extended.
    row = view("zoom_50", ramp)[0, 0, 3]
    assert torch.allclose(row[2:6], torch.tensor([0.5, 2.5, 4.5, 6.5]))
    assert torch.allclose(row[:2], torch.zeros(2)) and torch.allclose(
        row[6:], torch.full((2,), 7.0)
    )


def test_merge_maths():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])  # two views, one row, two classes
    assert torch.allclose(merge("multiclass", logits, "mean"), torch.tensor([[0.5, 0.5]]))
    expected = logits.log_softmax(-1).mean(0).softmax(-1)
    assert torch.allclose(merge("multiclass", logits, "geometric"), expected)
    top = logits.softmax(-1).amax(0)
    assert torch.allclose(merge("multiclass", logits, "max"), top / top.sum())
    huge = torch.tensor([[[1000.0, -1000.0]], [[-1000.0, 1000.0]]])
    for how in ("mean", "geometric", "max"):
        assert torch.isfinite(merge("multiclass", huge, how)).all()
        assert torch.isfinite(merge("binary", huge[..., :1], how)).all()
    assert torch.allclose(
        merge("binary", torch.tensor([[[1.0]], [[-1.0]]]), "geometric"), torch.tensor([[0.5]])
    )
    assert torch.equal(
        merge("regression", torch.tensor([[[1.0]], [[3.0]]]), "max"), torch.tensor([[2.0]])
    )


def test_unknown_view_or_merge_refused():
    with pytest.raises(ConfigError, match="unknown view 'mirror'"):
        expand_views(["hflip", "mirror"])
    for bad in ("zoom_0", "zoom_", "zoom_x", "scale_-3"):
        with pytest.raises(ConfigError, match=f"unknown view '{bad}'"):
            expand_views([bad])
    with pytest.raises(ConfigError, match="infer.tta_merge"):
        merge("multiclass", torch.zeros(1, 1, 2), "median")


def test_tta_in_the_infer_stage_with_oof(tiny_project):
    args = ["-c", "configs/tiny.yaml", "train.epochs=1", "train.folds=[0]"]
    assert main(["folds", *args]) == 0
    assert main(["train", *args]) == 0
    assert (
        main(
            [
                "infer",
                *args,
                "infer.tta=[d4, scale_20, zoom_90]",
                "infer.tta_merge=geometric",
                "infer.tta_oof=true",
            ]
        )
        == 0
    )
    report = json.loads((tiny_project / "outputs/tiny/tta.json").read_text())
    assert len(report["views"]) == 10 and set(report["cv"]) == set(report["cv_tta"])
    assert (tiny_project / "outputs/tiny/oof_tta.parquet").is_file()
    assert main(["infer", *args, "infer.tta=[sideways]"]) == 2
