"""The ``segmentation`` modality: image files named in a table, their masks, an smp model.

It implements :class:`medalist.modalities.protocol.Modality` with the image modality's reader,
weights and checks, and the segmentation package's own parts: the mask checks
(:mod:`~.inputs`), the datasets of an image and its mask (:mod:`~.data`), the smp model
(:mod:`~.model`) and the views undone on the mask (:mod:`~.views`). Its task is its own
(:mod:`~.task`): masks as targets, Dice and IoU, and the mask files the stages write
(:mod:`~.predictions`).
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from medalist.config import Config
from medalist.modalities import image
from medalist.modalities.segmentation import model

# The protocol's functions that are the segmentation package's own, as they are: every row's
# image and mask checked (inputs), training crops or whole images batched by size (data), the
# symmetries of the square undone on the mask (views).
from medalist.modalities.segmentation.data import build_dataset
from medalist.modalities.segmentation.inputs import check_inputs
from medalist.modalities.segmentation.views import expand_views

__all__ = [
    "backbone_names",
    "build_dataset",
    "build_model",
    "check_inputs",
    "combine",
    "expand_views",
    "fold_learner",
    "packaged_folder",
    "stacked_experiments",
    "starting_weights",
]


def combine(datasets: list[Dataset]) -> Dataset:
    """Labelled and pseudo-labelled rows as one training set."""
    return image.combine(datasets)


def fold_learner(cfg: Config, task) -> None:
    """None: folds train in medalist's loop."""
    return None


def build_model(cfg: Config, task):
    """The smp model on the timm encoder, padded for any image size."""
    return model.build_model(cfg, task)


def backbone_names(cfg: Config) -> list[tuple[str, str]]:
    """The encoder's pretrained weights, named as the image modality names them."""
    return image.backbone_names(cfg)


def starting_weights(cfg: Config) -> list[Path]:
    """The encoder's starting weights file, as for the image modality."""
    return image.starting_weights(cfg)


def stacked_experiments(cfg: Config) -> list[str]:
    """None: the inputs are the rows' own."""
    return []


def packaged_folder(cfg: Config) -> None:
    """Nothing besides the trained weights: they hold the whole model."""
    return None
