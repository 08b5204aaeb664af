"""The segmentation network: a segmentation-models-pytorch decoder on a timm encoder.

``segmentation.architecture`` picks smp's Unet, UnetPlusPlus, FPN, DeepLabV3Plus or Segformer;
the encoder is ``model.backbone`` as smp's universal timm encoder (``tu-<backbone>``, depth 5), with
``image.channels`` inputs and one output channel per mask channel (binary 1, multilabel and
multiclass one per class). Outputs are logits (N, K, H, W).

smp's encoders halve the resolution five times, so its models need sides divisible by 32.
:class:`PaddedSegmenter` pads any input up to the next multiple and crops the logits back, so
a whole image of any size (101 x 101) predicts. The padding is centred and reflects the image,
as the training crops are padded (:mod:`~medalist.modalities.segmentation.data`): the network
sees the same kind of border in training and prediction. An input too small to reflect (a pad
as large as the side) repeats its edge pixels instead.

Pretrained encoder weights are resolved as the image modality resolves them
(``model.pretrained_path``, a local safetensors file; else the cached file of ``model.backbone``
when ``model.pretrained``) and handed to timm as a state dict, so timm's own loading applies
(the classifier left out, the stem adapted to ``image.channels``); a file is never downloaded
here and never unpickled.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

import timm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file

from medalist.config import Config
from medalist.config.segmentation import ENCODER_STRIDE
from medalist.errors import CheckpointError, ConfigError
from medalist.modalities import image
from medalist.pretrained.resolve import check_timm_name, local_file

log = logging.getLogger(__name__)

# segmentation.architecture -> smp's class name
ARCHITECTURES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "deeplabv3plus": "DeepLabV3Plus",
    "segformer": "Segformer",
}
DILATED = {"deeplabv3plus": 16}  # architectures that dilate the encoder: their output stride
# The reductions of the encoder's features smp's universal encoder accepts (depth 5).
HIERARCHIES = ([2, 4, 8, 16, 32], [4, 8, 16, 32])


def _smp() -> ModuleType:
    """segmentation-models-pytorch, imported on first use (an extra of medalist)."""
    try:
        import segmentation_models_pytorch
    except ImportError:
        raise ConfigError(
            "segmentation.architecture: segmentation-models-pytorch is not installed; "
            "pip install 'medalist[segmentation]'"
        ) from None
    return segmentation_models_pytorch


class PaddedSegmenter(torch.nn.Module):
    """A segmentation network that takes images of any size: pad to a multiple, predict, crop.

    Args:
        model: maps (N, C, H, W) with H and W multiples of ``multiple`` to (N, K, H, W).
        multiple: the side multiple the model needs (the encoder's stride).
        mode: how the border is padded, ``reflect`` or ``constant`` (zeros).
    """

    def __init__(
        self, model: torch.nn.Module, multiple: int = ENCODER_STRIDE, mode: str = "reflect"
    ):
        super().__init__()
        self.model = model
        self.multiple = multiple
        self.mode = mode

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom): centred, up to the next multiple of each side."""
        extra_h, extra_w = -height % self.multiple, -width % self.multiple
        return extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        left, right, top, bottom = self.padding(height, width)
        if not (left or right or top or bottom):
            return self.model(images)
        mode = self.mode
        if mode == "reflect" and (max(left, right) >= width or max(top, bottom) >= height):
            mode = "replicate"  # reflection needs a side longer than its pad
        padded = F.pad(images, (left, right, top, bottom), mode=mode)
        return self.model(padded)[..., top : top + height, left : left + width]


def check_encoder(cfg: Config) -> None:
    """Refuse, naming the key, an encoder smp cannot use at every input size: one without
    features at 1/2..1/32 or 1/4..1/32 (a plain ViT), one built for a fixed input size (Swin,
    MaxViT, CoAtNet), and, for a dilated architecture, one timm cannot dilate.

    The encoder is built on the meta device: nothing is allocated or initialised.
    """
    backbone = cfg.model.backbone
    architecture, _ = check_timm_name(backbone)
    try:
        reductions = _reductions(backbone)
    except RuntimeError as exc:  # timm: "features_only not implemented for ..."
        raise ConfigError(
            f"model.backbone: timm gives no feature maps of {backbone} ({exc})"
        ) from None
    if reductions not in HIERARCHIES:
        raise ConfigError(
            f"model.backbone: {backbone} gives features at 1/{reductions} of the input; smp's "
            "decoders need a hierarchy at 1/[2, 4, 8, 16, 32] or 1/[4, 8, 16, 32] (a CNN, "
            "ConvNeXt; not a plain ViT)"
        )
    pretrained = timm.models.get_pretrained_cfg(architecture)
    if pretrained is not None and pretrained.fixed_input_size:
        raise ConfigError(
            f"model.backbone: {backbone} takes a fixed input size "
            f"{tuple(pretrained.input_size[1:])}; segmentation predicts whole images and tiles "
            "of other sizes: choose an encoder without one (a ResNet, EfficientNet, ConvNeXt)"
        )
    stride = DILATED.get(cfg.segmentation.architecture)
    if stride is not None:
        try:
            _reductions(backbone, output_stride=stride)
        except (TypeError, ValueError, AssertionError, RuntimeError):
            raise ConfigError(
                f"segmentation.architecture: {cfg.segmentation.architecture} dilates the encoder "
                f"to output stride {stride}, which timm's {architecture} does not support; "
                "choose unet, fpn or segformer, or another model.backbone"
            ) from None


def _reductions(backbone: str, **kwargs) -> list[int]:
    with torch.device("meta"):
        features = timm.create_model(backbone, pretrained=False, features_only=True, **kwargs)
    return list(features.feature_info.reduction())


def build_model(cfg: Config, task=None) -> PaddedSegmenter:
    """The configured smp model (logits), padded for any input size, from its pretrained encoder
    weights when configured (``task`` is unused: the mask task is ``segmentation.task``).

    Raises:
        ConfigError: an unknown or unusable encoder (:func:`check_encoder`), smp missing.
        CheckpointError: a pretrained file that does not hold the encoder's weights.
    """
    smp = _smp()
    seg = cfg.segmentation
    check_encoder(cfg)
    kwargs = {
        "encoder_name": f"tu-{cfg.model.backbone}",
        "encoder_weights": None,
        "in_channels": cfg.image.channels,
        "classes": seg.mask_channels,
    }
    if cfg.model.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.model.drop_path_rate
    start = starting_state(cfg)
    if start is not None:
        name, state = start
        # timm builds the whole backbone, loads the state dict (classifier left out, stem
        # adapted to in_chans), then keeps the feature stages.
        kwargs.update(
            encoder_name=f"tu-{name}",
            encoder_weights=True,
            pretrained_cfg_overlay={"state_dict": state},
        )
    cls = getattr(smp, ARCHITECTURES[seg.architecture])
    try:
        net = cls(**kwargs)
    except RuntimeError as exc:
        if start is None:
            raise
        raise CheckpointError(
            f"{_start_key(cfg)}: the weights do not load into {cfg.model.backbone} ({exc})"
        ) from exc
    if start is not None:
        _forget_state(net)
    return PaddedSegmenter(net)


def _forget_state(net: torch.nn.Module) -> None:
    """timm keeps its pretrained config, here holding the state dict, on the model: drop that
    second copy of the encoder's weights."""
    for module in net.modules():
        for attr in ("pretrained_cfg", "default_cfg"):
            config = getattr(module, attr, None)
            if isinstance(config, dict) and config.get("state_dict") is not None:
                config["state_dict"] = None


def _start_key(cfg: Config) -> str:
    return "model.pretrained_path" if cfg.model.pretrained_path else "model.backbone"


def starting_state(cfg: Config) -> tuple[str, dict[str, torch.Tensor]] | None:
    """The timm name and the state dict the encoder starts from, or None for a random start.

    ``model.pretrained_path`` (it wins), else the cached pretrained file of ``model.backbone``
    when ``model.pretrained``; a missing cached file gives a random start with a warning, as in
    the image modality (inference replaces every weight with the fine-tuned ones).
    """
    if cfg.model.pretrained_path:
        weights = local_file(cfg.model.pretrained_path)
        name = cfg.model.backbone
    else:
        weights = image.cached_pretrained(cfg)
        if weights is None:
            return None
        name = weights.name
    path = Path(weights.files[0])
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    _check_state(state, name, path, _start_key(cfg))
    log.info("%s: encoder %s from %s", _start_key(cfg), name, path)
    return name, state


def _check_state(state: dict, name: str, path: Path, key: str) -> None:
    """Most of the backbone's tensors must be in the file under timm's names (a classifier of
    another size aside); a checkpoint of another model, or of a whole smp model, is refused."""
    with torch.device("meta"):
        own = timm.create_model(name, pretrained=False).state_dict()
    matched = [k for k in own if k in state]
    if len(matched) < 0.5 * len(own):
        raise CheckpointError(
            f"{key}: {path}: only {len(matched)} of the {len(own)} tensors of timm's "
            f"{name} are in it (e.g. {list(own)[:3]}; the file has {list(state)[:3]}); is it "
            "a checkpoint of another model?"
        )
