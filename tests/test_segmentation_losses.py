"""Segmentation losses: hand-computed values, fp32 under autocast, finite gradients, config errors."""

import math

import pytest
import torch

from medalist.errors import ConfigError
from medalist.modalities.segmentation.losses import FITS, MODES, build_loss, parse_loss

smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")


def logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return (p / (1 - p)).log().float()


def binary_case(probs):
    """One 2 x 2 image: probabilities ``probs`` (row-major), true mask [[1, 1], [0, 0]]."""
    return logit(probs).view(1, 1, 2, 2), torch.tensor([[[1, 1], [0, 0]]])


def test_binary_losses_equal_their_formulas():
    logits, target = binary_case([0.8, 0.6, 0.2, 0.4])
    p_true = torch.tensor([0.8, 0.6, 0.8, 0.6])
    expected = {
        "bce": -p_true.log().mean(),
        "dice": 1 - 2 * 1.4 / (2.0 + 2.0),  # intersection 0.8 + 0.6, sum p 2.0, sum t 2
        "focal": ((1 - p_true) ** 2 * -p_true.log()).mean(),  # gamma 2
    }
    for name, value in expected.items():
        got = build_loss(name, "binary")(logits, target)
        assert got.item() == pytest.approx(float(value), abs=1e-6), name


def test_tversky_weights_false_positives_by_alpha_and_false_negatives_by_beta():
    logits, target = binary_case([0.9, 0.5, 0.3, 0.1])
    tp, fp, fn = 1.4, 0.4, 0.6
    for alpha, beta in ((0.3, 0.7), (0.5, 0.5), (0.8, 0.2)):
        loss = build_loss("tversky", "binary", tversky_alpha=alpha, tversky_beta=beta)
        assert loss(logits, target).item() == pytest.approx(
            1 - tp / (tp + alpha * fp + beta * fn), abs=1e-6
        )
    # alpha = beta = 0.5 is Dice
    dice = build_loss("dice", "binary")(logits, target)
    half = build_loss("tversky", "binary", tversky_alpha=0.5, tversky_beta=0.5)(logits, target)
    assert half.item() == pytest.approx(dice.item(), abs=1e-7)


def test_lovasz_hinge_on_two_pixels():
    # errors 1 - logit * sign: 0.5 (true pixel), 1.5 (false one); sorted: the false pixel first,
    # Jaccard steps 0.5 and 0.5: 1.5 * 0.5 + 0.5 * 0.5 = 1.
    logits, target = torch.tensor([[[[0.5, 0.5]]]]), torch.tensor([[[1, 0]]])
    assert build_loss("lovasz", "binary")(logits, target).item() == pytest.approx(1.0)


def test_multiclass_ce_and_dice():
    zeros = torch.zeros(2, 4, 3, 3)
    classes = torch.randint(0, 4, (2, 3, 3))
    assert build_loss("ce", "multiclass")(zeros, classes).item() == pytest.approx(math.log(4))
    # Two pixels, two classes: p(class 1) = 0.8 then 0.2, true classes 1 then 0: each class has
    # intersection 0.8, sum p 1.0, sum t 1 -> Dice 0.8, loss 0.2.
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 1, 0] = torch.tensor([math.log(4), -math.log(4)])
    target = torch.tensor([[[1, 0]]])
    assert build_loss("dice", "multiclass")(logits, target).item() == pytest.approx(0.2, abs=1e-6)


def test_weighted_sum_and_parts():
    logits, target = binary_case([0.8, 0.6, 0.2, 0.4])
    loss = build_loss("0.5*bce + 2*dice", "binary")
    parts = loss.parts(logits, target)
    assert set(parts) == {"bce", "dice"}
    assert loss(logits, target).item() == pytest.approx(
        0.5 * parts["bce"].item() + 2 * parts["dice"].item()
    )
    assert parse_loss({"bce": 1, "lovasz": 0.25}) == {"bce": 1.0, "lovasz": 0.25}


def random_case(mode, size=8, channels=3, dtype=torch.float32):
    torch.manual_seed(0)
    c = 1 if mode == "binary" else channels
    logits = torch.randn(2, c, size, size, dtype=dtype) * 3
    if mode == "multiclass":
        target = torch.randint(0, c, (2, size, size))
    else:
        target = (torch.rand(2, c, size, size) > 0.6).float()
    return logits, target


@pytest.mark.parametrize("mode", MODES)
def test_every_loss_runs_in_fp32_under_bf16_autocast(mode):
    logits, target = random_case(mode, dtype=torch.bfloat16)  # as a model under autocast emits
    for name in (n for n, modes in FITS.items() if mode in modes):
        loss = build_loss(name, mode)
        reference = loss(logits.float(), target)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = loss(logits, target)
        assert got.dtype == torch.float32, name
        assert torch.equal(got, reference), name


def test_dice_stays_finite_where_fp16_overflows():
    # 65536 true pixels: the sum passes fp16's largest value, 65504.
    logits = torch.full((1, 1, 256, 256), 3.0, dtype=torch.float16)
    target = torch.ones(1, 1, 256, 256, dtype=torch.float16)
    assert not torch.isfinite(smp_losses.DiceLoss("binary")(logits, target))  # what fp32 prevents
    got = build_loss("bce+dice", "binary")(logits, target)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(build_loss("bce+dice", "binary")(logits.float(), target))


@pytest.mark.parametrize("mode", MODES)
def test_gradients_are_finite_also_on_empty_masks(mode):
    for empty in (False, True):
        logits, target = random_case(mode)
        if empty:
            target = torch.zeros_like(target)
        for name in (n for n, modes in FITS.items() if mode in modes):
            leaf = logits.clone().requires_grad_(True)
            build_loss(name, mode)(leaf, target).backward()
            assert torch.isfinite(leaf.grad).all(), (name, empty)


@pytest.mark.parametrize(
    ("spec", "mode", "says"),
    [
        ("bce+dcie", "binary", "unknown loss 'dcie'"),
        ("bce", "multiclass", "'bce' does not fit multiclass"),
        ("ce+dice", "binary", "'ce' does not fit binary"),
        ("ce", "multilabel", "use 'bce'"),
        ("dice+dice", "binary", "named twice"),
        ("-1*dice", "binary", "must be > 0"),
        ("x*dice", "binary", "is not 'weight*name'"),
        ({"dice": "a"}, "binary", "must be a number"),
        ("dice", "instance", "unknown mask mode"),
    ],
)
def test_bad_specs_name_the_key(spec, mode, says):
    with pytest.raises(ConfigError, match="segmentation.loss") as error:
        build_loss(spec, mode)
    assert says in str(error.value)


def test_masks_that_do_not_fit_the_logits_are_refused():
    with pytest.raises(ValueError, match="class indices"):
        build_loss("ce", "multiclass")(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="must match the logits"):
        build_loss("bce", "binary")(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="must match the logits"):
        build_loss("dice", "multilabel")(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 5))
