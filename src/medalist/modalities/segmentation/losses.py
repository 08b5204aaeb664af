"""Segmentation losses by name, combined with weights, always computed in fp32.

``segmentation.loss`` names one loss or a weighted sum: ``"bce+dice"``, ``"0.5*ce+lovasz"``, or
the mapping ``{bce: 1.0, dice: 0.5}``. The names, and the mask modes each fits:

- ``bce``: binary cross entropy on each pixel's sigmoid (binary, multilabel; soft masks too).
- ``ce``: cross entropy on each pixel's softmax (multiclass).
- ``dice``: 1 - soft Dice per channel (Milletari et al., "V-Net", 3DV 2016); a channel without
  any true pixel in the batch adds nothing, so pair it with bce/ce to learn empty masks.
- ``lovasz``: the Lovasz hinge (binary, multilabel) or Lovasz-softmax (multiclass) (Berman et
  al., "The Lovasz-softmax loss", CVPR 2018), a surrogate of IoU; usually a fine-tuning loss.
- ``focal``: focal loss per pixel (Lin et al., ICCV 2017), gamma 1-3.
- ``tversky``: 1 - Tversky index (Salehi et al., "Tversky loss function for image segmentation",
  MLMI 2017): false positives weighted by alpha, false negatives by beta (0.3 / 0.7 favours
  recall); alpha = beta = 0.5 is Dice.

Dice, Lovasz, focal and Tversky are segmentation-models-pytorch's; bce and ce are torch's. Masks:
``binary`` logits (N, 1, H, W) with targets (N, H, W) or (N, 1, H, W) in [0, 1]; ``multilabel``
logits and targets (N, C, H, W); ``multiclass`` logits (N, C, H, W) with class indices (N, H, W).

Every term runs in fp32 with autocast off: under fp16 a Dice sum over a 256 x 256 mask already
passes fp16's largest value (65504) and the loss becomes NaN; bf16 keeps the range but only about
three digits of each sum.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType

import torch
import torch.nn.functional as F

from medalist.config.segmentation import LOSS_FITS, SIGMOID_TASKS, TASKS, loss_weights
from medalist.errors import ConfigError, config_errors

MODES = TASKS  # the mask tasks: binary, multiclass, multilabel
SIGMOID_MODES = SIGMOID_TASKS
FITS = LOSS_FITS  # name -> the mask modes it fits (the config checks the same table)
KEY = "segmentation.loss"

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _smp_losses() -> ModuleType:
    """segmentation-models-pytorch's losses, imported on first use (an extra of medalist)."""
    try:
        from segmentation_models_pytorch import losses
    except ImportError:
        raise ConfigError(
            f"{KEY}: segmentation-models-pytorch is not installed; "
            "pip install 'medalist[segmentation]'"
        ) from None
    return losses


def parse_loss(spec: str | Mapping[str, float], key: str = KEY) -> dict[str, float]:
    """``"0.5*bce+dice"`` or ``{bce: 0.5, dice: 1}`` -> ``{"bce": 0.5, "dice": 1.0}``, checked.

    Raises:
        ConfigError: an unknown name (listing the known ones), a name given twice, a weight that
            is not a positive number, or nothing at all.
    """
    with config_errors():
        return loss_weights(spec, None, key)


def _build(name: str, mode: str, focal_gamma: float, tversky: tuple[float, float]) -> LossFn:
    if name == "bce":
        return F.binary_cross_entropy_with_logits
    if name == "ce":
        return F.cross_entropy
    smp = _smp_losses()
    if name == "dice":
        return smp.DiceLoss(mode, from_logits=True)
    if name == "lovasz":
        return smp.LovaszLoss(mode, per_image=False)
    if name == "focal":
        return smp.FocalLoss(mode, gamma=focal_gamma)
    alpha, beta = tversky
    return smp.TverskyLoss(mode, from_logits=True, alpha=alpha, beta=beta)


class SegmentationLoss:
    """The weighted sum of named losses over a batch of masks, computed in fp32.

    Returns a scalar per batch (Dice, Lovasz and Tversky are ratios over the whole batch, not
    means of per-image values). :meth:`parts` gives each term's value before weighting.
    """

    def __init__(self, weights: Mapping[str, float], mode: str, terms: Mapping[str, LossFn]):
        self.mode = mode
        self.weights = dict(weights)
        self.terms = dict(terms)

    def parts(self, logits: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each term's unweighted fp32 value, by name."""
        with torch.autocast(logits.device.type, enabled=False):
            logits, target = self._prepare(logits.float(), target)
            return {name: fn(logits, target) for name, fn in self.terms.items()}

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        parts = self.parts(logits, target)
        return sum(self.weights[name] * value for name, value in parts.items())

    def _prepare(self, logits: torch.Tensor, target: torch.Tensor):
        """Targets in the shape and dtype each mode's losses take (see the module docstring)."""
        if self.mode == "multiclass":
            if target.is_floating_point() or target.shape != logits.shape[:1] + logits.shape[2:]:
                raise ValueError(
                    f"multiclass masks are class indices of shape (N, H, W) for logits "
                    f"{tuple(logits.shape)}, got {target.dtype} {tuple(target.shape)}"
                )
            return logits, target.long()
        if self.mode == "binary" and target.ndim == 3:
            target = target.unsqueeze(1)
        if target.shape != logits.shape or (self.mode == "binary" and logits.shape[1] != 1):
            raise ValueError(
                f"{self.mode} masks must match the logits (N, {'1' if self.mode == 'binary' else 'C'}"
                f", H, W): logits {tuple(logits.shape)}, masks {tuple(target.shape)}"
            )
        return logits, target.float()


def build_loss(
    spec: str | Mapping[str, float],
    mode: str,
    *,
    focal_gamma: float = 2.0,
    tversky_alpha: float = 0.3,
    tversky_beta: float = 0.7,
    key: str = KEY,
) -> SegmentationLoss:
    """The loss ``spec`` names for masks of ``mode`` (binary, multiclass or multilabel).

    Raises:
        ConfigError: an unknown mode or loss name, a bad weight, or a loss that does not fit the
            mode (bce on multiclass masks, ce on sigmoid ones), naming ``key``.
    """
    if mode not in MODES:
        raise ConfigError(f"{key}: unknown mask mode '{mode}'; known: {list(MODES)}")
    with config_errors():
        weights = loss_weights(spec, mode, key)
    terms = {
        name: _build(name, mode, focal_gamma, (tversky_alpha, tversky_beta)) for name in weights
    }
    return SegmentationLoss(weights, mode, terms)
