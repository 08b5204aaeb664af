"""The ``segmentation`` section: where the masks are, the smp model and its loss, training crops,
tiled inference, and the post-processing chosen on OOF.

Masks are read at the image's own size. Images are never resized. Training samples are random
crops of ``crop_size`` (null: ``image.size``), and smaller images are padded up to it. Evaluation
and test samples are whole images, which the model pads to a multiple of the encoder's stride
and crops back.

The mask keys are the fields of
:class:`~medalist.modalities.segmentation.masks.MaskLayout`
(:func:`medalist.modalities.segmentation.inputs.mask_layout` builds it) and the loss is what
:func:`~medalist.modalities.segmentation.losses.build_loss` builds: their checks live here
(:func:`check_classes`, :func:`check_pattern`, :func:`check_rle_columns`, :func:`loss_weights`,
raising ``ValueError`` as pydantic's validators do) and those modules call them, raising
``ConfigError``. Reading a config imports neither torch nor pandas, so the names the modules
accept are listed here too; the tests keep the lists equal.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medalist.config.section import Section

KEY = "segmentation"
TASKS = ("binary", "multiclass", "multilabel")
PATTERN_FIELDS = ("stem", "name", "class")
# How many classes each task takes: (at least, at most; None: any number).
CLASS_COUNTS = {"binary": (1, 1), "multiclass": (2, 256), "multilabel": (1, None)}
ARCHITECTURES = ("unet", "unetplusplus", "fpn", "deeplabv3plus", "segformer")
# Loss name -> the mask tasks it fits (medalist.modalities.segmentation.losses.FITS).
SIGMOID_TASKS = ("binary", "multilabel")
LOSS_FITS = {
    "bce": SIGMOID_TASKS,
    "ce": ("multiclass",),
    "dice": TASKS,
    "lovasz": TASKS,
    "focal": TASKS,
    "tversky": TASKS,
}
# Every smp encoder medalist builds has depth 5: its deepest features are 1/32 of the input.
ENCODER_STRIDE = 32


class TileConfig(Section):
    """Tiled prediction of whole images (validation and test), with blended overlaps."""

    size: int | None = Field(
        None,
        description="Tile side in pixels, a multiple of 32 (usually the training crop); null: "
        "each whole image in one pass.",
    )
    overlap: int = Field(
        64, ge=0, description="Pixels shared by neighbouring tiles (less than size)."
    )
    window: Literal["hann", "flat"] = Field(
        "hann",
        description="Blending weights of a tile: hann (high in the middle, low at the border) or "
        "flat (a plain mean).",
    )
    batch_size: int = Field(8, ge=1, description="Tiles per forward pass.")

    @model_validator(mode="after")
    def _check(self) -> TileConfig:
        if self.size is None:
            return self
        if self.size < ENCODER_STRIDE or self.size % ENCODER_STRIDE:
            raise ValueError(
                f"{KEY}.tile.size: {self.size} is not a multiple of {ENCODER_STRIDE} (the "
                "encoder's stride); e.g. "
                f"{max(ENCODER_STRIDE, round(self.size / ENCODER_STRIDE) * ENCODER_STRIDE)}"
            )
        if self.overlap >= self.size:
            raise ValueError(
                f"{KEY}.tile.overlap: {self.overlap} px is not less than the tile "
                f"({self.size} px); e.g. {self.size // 4}"
            )
        return self


class SegmentationConfig(Section):
    """Segmentation masks, the smp model, its loss, training crops, tiles and post-processing."""

    task: Literal["binary", "multiclass", "multilabel"] = Field(
        "binary",
        description="binary: one mask channel; multiclass: one class per pixel (softmax); "
        "multilabel: one binary channel per class (sigmoid), channels may overlap.",
    )
    classes: list[str | int] = Field(
        default_factory=lambda: ["mask"],
        description="Class names: binary one; multiclass every class, its position its index in "
        "the mask files (0 usually the background); multilabel one per channel.",
    )
    masks: Literal["files", "rle"] = Field(
        "files",
        description="files: mask images under mask_dir; rle: run-length-encoded columns of "
        "train.csv (rle_columns).",
    )
    mask_dir: str = Field(
        "train_masks", description="Folder of the mask files, relative to data_dir (files)."
    )
    mask_pattern: str = Field(
        "{stem}.png",
        description="A mask's file name under mask_dir from its image's: {stem} (no extension), "
        "{name} (with), {class} for one file per class ('{class}/{stem}.png', "
        "'{stem}_{class}.png'; multilabel) (files).",
    )
    rle_columns: list[str] = Field(
        default_factory=list,
        description="train.csv's RLE columns, one per channel: binary 1, multilabel one per "
        "class, multiclass one per class after class 0 (the pixels no run covers) (rle).",
    )
    rle_order: Literal["column", "row"] = Field(
        "column",
        description="RLE pixel order: column (top to bottom, then left to right; most Kaggle "
        "competitions) or row; checked on load (rle).",
    )
    architecture: Literal["unet", "unetplusplus", "fpn", "deeplabv3plus", "segformer"] = Field(
        "unet",
        description="segmentation-models-pytorch decoder on the timm encoder model.backbone "
        "(smp's tu-<backbone>; pretrained as model.pretrained and model.pretrained_path say): "
        "unet, unetplusplus, fpn, deeplabv3plus (a dilated encoder, output stride 16), segformer. "
        "The encoder must give features at 1/2..1/32 or 1/4..1/32 (CNNs, ConvNeXt; not a plain "
        "ViT) and take any input size.",
    )
    loss: str | dict[str, float] | None = Field(
        None,
        description="Names with weights, 'bce+dice', '0.5*ce+lovasz' or {bce: 1, dice: 0.5}: bce "
        "(binary, multilabel), ce (multiclass), dice, lovasz, focal, tversky; in fp32. Null: "
        "bce+dice, or ce+dice for multiclass.",
    )
    focal_gamma: float = Field(2.0, ge=0, description="focal: the focusing gamma (1-3).")
    tversky_alpha: float = Field(0.3, ge=0, le=1, description="tversky: weight of false positives.")
    tversky_beta: float = Field(
        0.7, ge=0, le=1, description="tversky: weight of false negatives (> alpha: recall)."
    )
    crop_size: int | None = Field(
        None,
        ge=8,
        description="Side of the random square crop of each training image, taken after "
        "image.train_transforms (smaller images are padded up to it by reflection); a multiple "
        "of 32 wastes no padding in the model. Null: image.size. Images are never resized.",
    )
    tile: TileConfig = Field(default_factory=lambda: TileConfig(), description="Tiles.")
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Probability at which a pixel is in the mask (binary, multilabel); null: the "
        "best of thresholds on OOF.",
    )
    min_size: int | None = Field(
        None,
        ge=0,
        description="Connected components of fewer pixels are removed (binary, multilabel); "
        "null: the best of min_sizes on OOF.",
    )
    thresholds: list[float] = Field(
        default_factory=lambda: [round(0.1 + 0.05 * i, 2) for i in range(17)],
        description="Thresholds tried on OOF when threshold is null, in [0, 1].",
    )
    min_sizes: list[int] = Field(
        default_factory=lambda: [0, 10, 20, 50, 100, 200, 500, 1000],
        description="Minimum component sizes tried on OOF when min_size is null (0 keeps all).",
    )
    empty: Literal["one", "skip"] = Field(
        "one",
        description="Score of an empty prediction on an empty mask: one (as Kaggle scores it) or "
        "skip (left out of the mean).",
    )
    connectivity: Literal[4, 8] = Field(
        8, description="Pixels of a component touch by an edge (4) or also by a corner (8)."
    )

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_shape(cls, value):
        if value is None or isinstance(value, str):
            return value
        loss_weights(value, None)  # a name or a mapping of numbers, before pydantic casts them
        return value

    @model_validator(mode="after")
    def _check(self) -> SegmentationConfig:
        self._check_classes()
        if self.masks == "files":
            self._check_pattern()
        else:
            self._check_rle_columns()
        loss_weights(self.loss_spec, self.task)
        if self.tversky_alpha + self.tversky_beta == 0:
            raise ValueError(f"{KEY}.tversky_alpha: alpha and beta are both 0; e.g. 0.3 and 0.7")
        if self.task == "multiclass":
            for key in ("threshold", "min_size"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{KEY}.{key}: a multiclass mask is the argmax of its classes, with no "
                        "threshold or component size to apply; leave it null"
                    )
        if not self.thresholds or any(not 0 <= t <= 1 for t in self.thresholds):
            raise ValueError(
                f"{KEY}.thresholds: at least one threshold, each in [0, 1]; got {self.thresholds}"
            )
        if not self.min_sizes or any(m < 0 for m in self.min_sizes):
            raise ValueError(f"{KEY}.min_sizes: at least one size, each >= 0; got {self.min_sizes}")
        return self

    def _check_classes(self) -> None:
        check_classes(self.task, self.classes)

    def _check_pattern(self) -> None:
        check_pattern(self.mask_pattern, self.task, self.classes)

    def _check_rle_columns(self) -> None:
        check_rle_columns(self.rle_columns, self.task, self.classes)

    @property
    def mask_channels(self) -> int:
        """The model's output channels: 1 (binary), else one per class."""
        return 1 if self.task == "binary" else len(self.classes)

    @property
    def loss_spec(self) -> str | dict[str, float]:
        """``loss``, or its default for the task."""
        if self.loss is not None:
            return self.loss
        return "ce+dice" if self.task == "multiclass" else "bce+dice"

    def layout_fields(self, data_dir: str | os.PathLike) -> dict:
        """The keyword arguments of ``MaskLayout`` (``mask_dir`` under ``data_dir`` unless
        absolute)."""
        return {
            "task": self.task,
            "classes": tuple(str(c) for c in self.classes),
            "masks": self.masks,
            "mask_dir": Path(data_dir) / self.mask_dir,
            "mask_pattern": self.mask_pattern,
            "rle_columns": tuple(self.rle_columns),
            "rle_order": self.rle_order,
        }


def check_classes(task: str, classes) -> None:
    """As many class names as ``task`` has, none repeated (ValueError naming the key)."""
    names = [str(c) for c in classes]
    low, high = CLASS_COUNTS[task]
    if not low <= len(names) <= (high or len(names)):
        wanted = "one class" if (low, high) == (1, 1) else f"{low} to {high or 'any'} classes"
        raise ValueError(f"{KEY}.classes: a {task} task has {wanted}, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"{KEY}.classes: repeated names in {names}")


def check_pattern(pattern: str, task: str, classes) -> None:
    """``mask_pattern`` names an image and only known fields, and ``{class}`` exactly where the
    task reads one file per class (ValueError naming the key)."""
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None}
    except ValueError as exc:
        raise ValueError(f"{KEY}.mask_pattern: '{pattern}': {exc}") from None
    unknown = sorted(fields - set(PATTERN_FIELDS))
    if unknown:
        raise ValueError(
            f"{KEY}.mask_pattern: '{pattern}' names "
            + ", ".join("{" + f + "}" for f in unknown)
            + "; it may use "
            + ", ".join("{" + f + "}" for f in PATTERN_FIELDS)
        )
    if not fields & {"stem", "name"}:
        raise ValueError(f"{KEY}.mask_pattern: '{pattern}' names no image ({{stem}} or {{name}})")
    if task == "multilabel" and "class" not in fields and len(classes) > 1:
        raise ValueError(
            f"{KEY}.mask_pattern: a multilabel task reads one file per class; put {{class}} in "
            f"'{pattern}' (a folder per class: '{{class}}/{{stem}}.png')"
        )
    if task == "multiclass" and "class" in fields:
        raise ValueError(
            f"{KEY}.mask_pattern: a multiclass mask is one file of class indices per image; "
            f"'{pattern}' names {{class}}"
        )


def check_rle_columns(columns, task: str, classes) -> None:
    """One RLE column per class (binary: one; multiclass: one per class but the first, the
    background), ValueError naming the key."""
    want = {"binary": 1, "multilabel": len(classes)}.get(task, len(classes) - 1)
    if len(columns) != want:
        raise ValueError(
            f"{KEY}.rle_columns: a {task} task with classes {[str(c) for c in classes]} reads "
            f"{want} RLE column(s), got {list(columns)}"
        )


def loss_weights(spec, task: str | None, key: str = f"{KEY}.loss") -> dict[str, float]:
    """``"0.5*bce+dice"`` or ``{bce: 0.5, dice: 1}`` -> ``{"bce": 0.5, "dice": 1.0}``, each name
    known, named once and fitting ``task`` (None: any), each weight a positive number
    (ValueError naming ``key``)."""
    if isinstance(spec, str):
        pairs = [_term(term.strip(), key) for term in spec.split("+")]
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        raise ValueError(
            f"{key}: a name such as 'bce+dice' or a mapping name -> weight, got {spec!r}"
        )
    weights: dict[str, float] = {}
    for name, weight in pairs:
        if name not in LOSS_FITS:
            raise ValueError(f"{key}: unknown loss '{name}'; known: {list(LOSS_FITS)}")
        if name in weights:
            raise ValueError(f"{key}: '{name}' is named twice")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"{key}: the weight of '{name}' must be a number, got {weight!r}")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"{key}: the weight of '{name}' must be > 0, got {weight}")
        if task is not None and task not in LOSS_FITS[name]:
            other = "ce" if name == "bce" else "bce"
            raise ValueError(
                f"{key}: '{name}' does not fit {task} masks (it needs "
                f"{' or '.join(LOSS_FITS[name])}); use '{other}' instead"
            )
        weights[name] = float(weight)
    if not weights:
        raise ValueError(f"{key}: no loss named; e.g. 'bce+dice'")
    return weights


def _term(term: str, key: str) -> tuple[str, float]:
    """``"0.5*dice"`` -> ``("dice", 0.5)``; ``"dice"`` -> ``("dice", 1.0)``."""
    weight, star, name = term.rpartition("*")
    if not star:
        return name.strip(), 1.0
    try:
        return name.strip(), float(weight)
    except ValueError:
        raise ValueError(f"{key}: '{term}' is not 'weight*name' (e.g. '0.5*dice')") from None
