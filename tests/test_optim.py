"""Optimizer groups: weight decay placement, layer-wise LR decay and the head's own rate."""

import itertools

import pytest
import timm
import torch

from medalist.config import resolve_config
from medalist.errors import ConfigError
from medalist.training.optim import build_optimizer, build_scheduler


def model():
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=3, in_chans=1)


def test_plain_groups_decay_only_matrices():
    optimizer = build_optimizer(model(), resolve_config(overrides=["train.weight_decay=0.05"]))
    for group in optimizer.param_groups:
        assert all((p.ndim > 1) == (group["weight_decay"] == 0.05) for p in group["params"])
        assert group["lr"] == pytest.approx(1e-3)
    total = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert total == sum(p.numel() for p in model().parameters())


def test_layer_decay_and_head_lr_read_back():
    cfg = resolve_config(overrides=["train.lr=1e-3", "train.layer_decay=0.5", "train.head_lr=5e-3"])
    net = model()
    optimizer = build_optimizer(net, cfg)
    head = {id(p) for p in net.get_classifier().parameters()}
    rates = sorted({round(g["lr"], 12) for g in optimizer.param_groups})
    for group in optimizer.param_groups:
        in_head = {id(p) in head for p in group["params"]}
        assert len(in_head) == 1  # a group is all head or all body
        if in_head == {True}:
            assert group["lr"] == pytest.approx(5e-3)
    body = [r for r in rates if r != pytest.approx(5e-3)]
    # Consecutive layers differ by the decay factor; the top body layer is below the base rate.
    assert all(b / a == pytest.approx(2.0) for a, b in itertools.pairwise(body))
    assert max(body) <= 1e-3 and len(body) >= 4


def test_schedule_multiplies_every_group():
    cfg = resolve_config(
        overrides=["train.layer_decay=0.5", "train.warmup_ratio=0.5", "train.epochs=1"]
    )
    optimizer = build_optimizer(model(), cfg)
    initial = [g["lr"] for g in optimizer.param_groups]
    scheduler = build_scheduler(optimizer, cfg, batches_per_epoch=10)
    optimizer.step()
    scheduler.step()
    for group, start in zip(optimizer.param_groups, initial, strict=True):
        assert group["lr"] == pytest.approx(start * scheduler.lr_lambdas[0](1))


def test_head_lr_without_head_refused():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="train.head_lr"):
        build_optimizer(net, resolve_config(overrides=["train.head_lr=0.1"]))


@pytest.mark.parametrize(
    "overrides",
    [[], ["train.layer_decay=0.8"], ["train.layer_decay=0.8", "train.head_lr=5e-3"]],
    ids=["plain", "layer_decay", "layer_decay+head_lr"],
)
def test_vit_no_weight_decay_list_is_honoured(overrides):
    torch.manual_seed(0)
    net = timm.create_model("test_vit", num_classes=3)
    exempt = {"pos_embed", "cls_token"}
    assert exempt <= net.no_weight_decay()  # what timm's ViT asks for
    cfg = resolve_config(overrides=["train.weight_decay=0.05", *overrides])
    optimizer = build_optimizer(net, cfg)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(net.named_parameters())
    assert len(decay_of) == len(named)  # every parameter in exactly one group
    for name, param in named.items():
        # pos_embed and cls_token are 3-D: only the model's list keeps them from decaying.
        wanted = 0.0 if name in exempt or param.ndim <= 1 else 0.05
        assert decay_of[id(param)] == wanted, name
    assert named["pos_embed"].ndim == 3 and named["cls_token"].ndim == 3
