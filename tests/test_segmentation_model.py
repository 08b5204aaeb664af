"""The segmentation network: every architecture on a timm test encoder predicts images of any
size at their own size, trains with the segmentation loss, starts from cached or local encoder
weights, and refuses encoders it cannot use."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from medalist.config import resolve_config
from medalist.errors import CheckpointError, ConfigError
from medalist.modalities.segmentation.losses import build_loss
from medalist.modalities.segmentation.model import (
    ARCHITECTURES,
    PaddedSegmenter,
    build_model,
    check_encoder,
)
from support.hub_cache import TIMM_NAME, seed_timm, timm_state

ENCODER = "model.encoder.model."  # the timm backbone's tensors inside the padded smp model


def cfg(*extra: str):
    return resolve_config(
        None, ["competition.target_columns=[y]", "model.backbone=test_resnet", *extra]
    )


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_architecture_predicts_whole_images_of_any_size(architecture):
    torch.manual_seed(0)
    model = build_model(cfg(f"segmentation.architecture={architecture}")).eval()
    with torch.no_grad():
        for height, width in [(101, 101), (64, 96)]:
            out = model(torch.randn(1, 3, height, width))
            assert out.shape == (1, 1, height, width) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("task", "classes", "channels"),
    [("multiclass", "[bg, a, b]", 3), ("multilabel", "[a, b]", 2), ("binary", "[m]", 1)],
)
def test_one_output_channel_per_mask_channel_and_grey_inputs(task, classes, channels):
    pattern = "{class}/{stem}.png" if task == "multilabel" else "{stem}.png"
    config = cfg(
        f"segmentation.task={task}",
        f"segmentation.classes={classes}",
        f"segmentation.mask_pattern={pattern}",
        "image.channels=1",
    )
    with torch.no_grad():
        assert build_model(config).eval()(torch.randn(1, 1, 50, 70)).shape == (1, channels, 50, 70)


class PerPixel(torch.nn.Module):
    """A 1x1 convolution that refuses sides that are not multiples of 32, as smp's models do."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.seen = []

    def forward(self, images):
        self.seen.append(tuple(images.shape[-2:]))
        assert images.shape[-2] % 32 == 0 and images.shape[-1] % 32 == 0
        return self.conv(images)


@pytest.mark.parametrize("size", [(101, 101), (64, 96), (5, 33), (32, 32)])
def test_padding_is_cropped_back_exactly(size):
    inner = PerPixel()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = PaddedSegmenter(inner)(images)
        torch.testing.assert_close(out, inner.conv(images))
    assert inner.seen == [tuple(-(-side // 32) * 32 for side in size)]
    # centred: 101 -> 128 puts 13 rows above and 14 below
    assert PaddedSegmenter(inner).padding(101, 96) == (0, 0, 13, 14)


def disc_image(height=64, width=64):
    """A grey image (1, 1, H, W) with a brighter disc, and the disc's mask (1, 1, H, W)."""
    torch.manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    mask = (((rows - height // 2) ** 2 + (cols - width // 3) ** 2) < 60).float()[None, None]
    return torch.randn(1, 1, height, width) + 2 * mask, mask


def test_one_step_with_the_segmentation_loss_gives_finite_gradients_everywhere():
    model = build_model(cfg("image.channels=1")).train()
    image, mask = disc_image(48, 80)
    loss = build_loss("bce+dice", "binary")(model(image), mask)
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(ENCODER))


def test_a_dozen_steps_overfit_one_image():
    torch.manual_seed(0)
    model = build_model(cfg("image.channels=1", "segmentation.architecture=segformer")).train()
    image, mask = disc_image()
    loss_fn = build_loss("bce+dice", "binary")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss = loss_fn(model(image), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0], losses


def test_the_cached_pretrained_encoder_loads_bitwise_and_adapts_to_grey(cache):
    seed_timm(cache)
    seeded = timm_state()
    model = build_model(cfg(f"model.backbone={TIMM_NAME}", "model.pretrained=true"))
    state = model.state_dict()
    kept = [getattr(m, "pretrained_cfg", None) or {} for m in model.modules()]
    assert all(c.get("state_dict") is None for c in kept)  # no second copy of the weights
    body = [k for k in seeded if not k.startswith("fc.")]
    assert all(torch.equal(state[ENCODER + k], seeded[k]) for k in body)
    assert not any(k.startswith(ENCODER + "fc.") for k in state)  # no classifier
    # No tag: timm's default one, the same file; one channel: timm sums the stem over RGB.
    grey = build_model(cfg("model.pretrained=true", "image.channels=1")).state_dict()
    stem = "conv1.0.weight"
    torch.testing.assert_close(grey[ENCODER + stem], seeded[stem].sum(dim=1, keepdim=True))


def test_a_missing_cached_file_is_a_random_start_with_a_warning(cache, caplog):
    caplog.set_level(logging.WARNING)
    torch.manual_seed(5)  # not the seed of the file's weights
    state = build_model(cfg("model.pretrained=true")).state_dict()
    assert "not in the cache: random init" in caplog.text
    assert not torch.equal(state[ENCODER + "conv1.0.weight"], timm_state()["conv1.0.weight"])


def test_a_local_pretrained_path_wins_and_another_models_file_is_refused(cache, tmp_path):
    local = tmp_path / "mine.safetensors"
    save_file(timm_state(seed=3), str(local))
    state = build_model(cfg(f"model.pretrained_path={local}", "model.pretrained=true")).state_dict()
    assert torch.equal(state[ENCODER + "conv1.0.weight"], timm_state(seed=3)["conv1.0.weight"])
    # A whole segmentation model's file (prefixed names) is not the backbone's.
    other = tmp_path / "smp.safetensors"
    save_file({f"encoder.{k}": v for k, v in timm_state().items()}, str(other))
    with pytest.raises(CheckpointError, match="model.pretrained_path: .*only 0 of the"):
        build_model(cfg(f"model.pretrained_path={other}"))
    with pytest.raises(ConfigError, match="model.pretrained_path: file not found"):
        build_model(cfg(f"model.pretrained_path={tmp_path / 'none.safetensors'}"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["model.backbone=test_vit"], r"model.backbone: test_vit gives features at 1/\[16"),
        (["model.backbone=test_maxvit"], "model.backbone: test_maxvit takes a fixed input size"),
        (["model.backbone=no_such_net"], "model.backbone: timm has no model 'no_such_net'"),
        (
            ["model.backbone=test_mambaout", "segmentation.architecture=deeplabv3plus"],
            "segmentation.architecture: deeplabv3plus dilates the encoder",
        ),
    ],
)
def test_encoders_smp_cannot_use_are_refused_naming_the_key(extra, message):
    with pytest.raises(ConfigError, match=message):
        check_encoder(cfg(*extra))
    with pytest.raises(ConfigError, match=message):
        build_model(cfg(*extra))
