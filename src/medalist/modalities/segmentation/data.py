"""Segmentation samples: an image and its mask through the same albumentations pipeline.

Training: ``image.train_transforms`` on the whole image and its mask (geometric transforms move
both, colour transforms touch the image only), then a random square crop of
``segmentation.crop_size`` (null: ``image.size``), images smaller than the crop first padded up
to it by reflection (the mask reflected alike). The crop comes last, so every training sample
has the crop's size whatever the transforms do to the size. Evaluation and test: the whole
image through ``image.eval_transforms``, never cropped or resized, so the model predicts the
mask at the image's own size. Both end with the image modality's normalisation.

Masks enter albumentations as the mask targets it moves with the image: a multiclass mask
(H, W) of class indices as ``mask``, binary and multilabel masks (C, H, W) as ``masks`` (each
channel transformed alike, nearest-neighbour). Augmentation is a function of (seed, epoch, row),
through the image modality's :class:`~medalist.modalities.image.Reseeder`.

Samples: ``{"index", "input", "target", ["weight"]}``: ``input`` float (C, H, W); ``target``
int64 (H, W) class indices for multiclass, float (C, H, W) in [0, 1] for binary and
multilabel; no target for test rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from albumentations.pytorch import ToTensorV2

from medalist.config import Config
from medalist.errors import DataError
from medalist.modalities import image
from medalist.modalities.segmentation.inputs import mask_layout
from medalist.modalities.segmentation.masks import MaskTargets, image_size


def crop_size(cfg: Config) -> int:
    """The side of the training crops: ``segmentation.crop_size``, else ``image.size``."""
    return cfg.segmentation.crop_size or cfg.image.size


def build_pipeline(cfg: Config, train: bool) -> A.Compose:
    """The configured transforms, the training crop (train only), normalisation, a CHW tensor."""
    steps = image.configured_transforms(cfg, train)
    if train:
        side = crop_size(cfg)
        steps += [
            A.PadIfNeeded(side, side, border_mode=cv2.BORDER_REFLECT_101),
            A.RandomCrop(side, side),
        ]
    steps += [image.normalize(cfg), ToTensorV2()]
    return A.Compose(steps)


def _tensor(mask) -> torch.Tensor:
    """A transformed mask (a tensor, an array, or a list of per-channel ones) as a tensor."""
    if isinstance(mask, torch.Tensor):
        return mask
    if isinstance(mask, (list, tuple)):
        return torch.stack([_tensor(m) for m in mask])
    return torch.from_numpy(np.ascontiguousarray(mask))


class SegmentationDataset(image.EpochSeeded):
    """Rows as ``{"index", "input", "target"}`` samples of an image and its mask.

    Args:
        paths: one image file per row.
        targets: each row's mask by position (a :class:`MaskTargets`, or arrays): (H, W) class
            indices (multiclass) or (C, H, W) values in [0, 1]; None for test rows.
        pipeline: the albumentations pipeline (:func:`build_pipeline`).
        channels: 1 or 3.
        task: ``binary``, ``multiclass`` or ``multilabel`` (``segmentation.task``).
        seed: base seed of the augmentation, combined with the epoch and the row.
        weights: a loss weight per row, or None.
        source: the table's name in errors.
    """

    def __init__(
        self,
        paths: Sequence,
        targets,
        pipeline: A.Compose,
        channels: int,
        *,
        task: str,
        seed: int = 0,
        weights=None,
        source: str = "rows",
    ):
        self.paths = list(paths)
        if targets is not None and len(targets) != len(self.paths):
            raise ValueError(f"{len(targets)} masks for {len(self.paths)} images")
        self.targets = targets
        self.weights = None if weights is None else torch.tensor(np.asarray(weights))
        self.pipeline = pipeline
        self.reseed = image.Reseeder(pipeline)
        self.channels = channels
        self.task = task
        self.seed = seed
        self.source = source
        super().__init__()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        pixels = image.read_image(self.paths[index], self.channels)
        # The same per-sample seed as the image modality: independent of workers and resumption.
        self.reseed(hash((self.seed, self.epoch, index)) % (2**32))
        if self.targets is None:
            return {"index": index, "input": self.pipeline(image=pixels)["image"]}
        mask = np.asarray(self.targets[index])
        if not mask.flags.writeable:  # a decoded file's buffer: torch wants its own
            mask = mask.copy()
        if mask.shape[-2:] != pixels.shape[:2]:
            raise DataError(
                f"{self.source}: row {index}: {self.paths[index]} decodes to "
                f"{pixels.shape[0]} x {pixels.shape[1]} pixels, its mask is {mask.shape[-2]} x "
                f"{mask.shape[-1]} (an EXIF orientation tag rotates the image?)"
            )
        if self.task == "multiclass":
            out = self.pipeline(image=pixels, mask=mask)
            target = _tensor(out["mask"]).long()
        else:
            out = self.pipeline(image=pixels, masks=mask)
            target = _tensor(out["masks"]).float()
        sample = {"index": index, "input": out["image"], "target": target}
        if self.weights is not None:
            sample["weight"] = self.weights[index]
        return sample


class WholeImages(SegmentationDataset):
    """Whole images (evaluation, prediction), batched with images of their own size.

    Images of one size go in the same batches (in row order, at most ``batch_size`` each), so a
    set of images of several sizes is evaluated without resizing or padding any of them; the
    sizes come from the files' headers.
    """

    def batch_sampler(self, batch_size: int, *, shuffle: bool = False, seed: int = 0):
        """Batches of row indices, each of one image size (``shuffle`` is ignored: the order
        of evaluation does not matter, and row order is the reproducible one)."""
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, path in enumerate(self.paths):
            size = image_size(path, f"{self.source}: row {index}")
            by_size.setdefault(size, []).append(index)
        return [
            rows[start : start + batch_size]
            for rows in by_size.values()
            for start in range(0, len(rows), batch_size)
        ]


def build_dataset(
    cfg: Config,
    df: pd.DataFrame,
    targets=None,
    *,
    split: str,
    train: bool,
    source: str,
    weights=None,
    views=None,
) -> SegmentationDataset:
    """The rows as a dataset (``train``: augmented crops; else whole images batched by size,
    :class:`WholeImages`).

    ``targets``: each row's mask when given (soft pseudo masks); None: the masks that
    ``segmentation.*`` names for training rows, none for test rows. ``views`` (TTA) are applied to
    whole batches, not here.
    """
    paths = image.image_paths(cfg, df, split, source)
    if targets is None and split == "train":
        targets = MaskTargets(mask_layout(cfg), df, paths, source)
    cls = SegmentationDataset if train else WholeImages
    return cls(
        paths,
        targets,
        build_pipeline(cfg, train),
        cfg.image.channels,
        task=cfg.segmentation.task,
        seed=cfg.train.seed,
        weights=weights,
        source=source,
    )
