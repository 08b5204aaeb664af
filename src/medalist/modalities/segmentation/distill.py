"""Distillation of masks: a teacher's soft masks of a fold's training images, mixed with the
true masks pixel by pixel.

``medalist distill`` (:mod:`medalist.prediction.distill`) has the teacher's fold-k model, which
trained on exactly fold k's training images, predict those images as ``infer`` predicts (its
weight files, its ``infer.tta`` views), softens each pixel at temperature T,

    sigmoid(logit(p) / T) = p^(1/T) / (p^(1/T) + (1 - p)^(1/T)),

and writes them as ``outputs/distill/<teacher>/fold<k>.masks.safetensors`` (the mask store, ids
in order; a full-fit student: ``full.masks.safetensors``), each file's sha256 in
``teacher.json``. ``train`` with ``distill.teacher`` checks the file against the record and
trains fold k on ``alpha * soft + (1 - alpha) * true`` per pixel (:class:`MixedMasks`).

Sigmoid masks only (``segmentation.task`` binary or multilabel). Of their losses, bce and focal
take targets in [0, 1] with their minimum at p = target; dice and tversky are ratios of sums of
``p * target``, defined for soft targets as for soft predictions. The Lovasz hinge is not: it
sorts the pixels' errors by the sign of a 0/1 label, so ``lovasz`` is refused, as are multiclass
masks, whose losses take class indices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medalist.config import Config
from medalist.errors import ConfigError, DataError
from medalist.io import sha256_file
from medalist.layout import distill_dir, fold_name, train_path
from medalist.modalities.segmentation import store
from medalist.modalities.segmentation.losses import parse_loss
from medalist.training.distill import HINT, read_record, soften


def check_student(cfg: Config) -> None:
    """Refuse, before any work, a student that cannot learn from soft masks.

    Raises:
        ConfigError: multiclass masks (naming ``distill.teacher``), or a ``lovasz`` term in
            ``segmentation.loss``.
    """
    seg = cfg.segmentation
    if seg.task == "multiclass":
        raise ConfigError(
            "distill.teacher: multiclass masks train on class indices (ce, and dice, focal and "
            "lovasz in their multiclass form), not on a teacher's soft masks; distillation "
            "needs sigmoid masks (segmentation.task: binary or multilabel)"
        )
    if "lovasz" in parse_loss(seg.loss_spec):
        raise ConfigError(
            f"segmentation.loss: '{seg.loss_spec}' has lovasz, whose hinge is defined on 0/1 "
            "masks, not on the teacher's soft masks (distill.teacher); use bce, dice, focal or "
            "tversky for the distilled student"
        )


def check_teacher(cfg: Config, teacher: Config) -> None:
    """Refuse a teacher whose masks are not the student's: another mask task or other classes."""
    mine, theirs = cfg.segmentation, teacher.segmentation
    if (theirs.task, list(theirs.classes)) != (mine.task, list(mine.classes)):
        raise ConfigError(
            f"distill.teacher: '{cfg.distill.teacher}' predicts {theirs.task} masks of classes "
            f"{list(theirs.classes)}, the student {mine.task} masks of {list(mine.classes)}; "
            "a teacher of the same masks is needed"
        )


def masks_file(cfg: Config, fold: int) -> Path:
    """``outputs/distill/<teacher>/fold<k>.masks.safetensors`` (``full``: the full fit's)."""
    return distill_dir(cfg) / f"{fold_name(fold)}.masks.safetensors"


def teacher_images(teacher: Config, modality, images: pd.DataFrame, views: list[str]):
    """The training images ``images`` as the teacher predicts them: whole, as in ``infer``."""
    source = str(train_path(teacher))
    return modality.build_dataset(
        teacher, images, None, split="train", train=False, source=source, views=views
    )


def write_soft_masks(cfg: Config, fold: int, ids: list, masks: list[np.ndarray]) -> dict:
    """The teacher's masks of fold ``fold``'s training images ``ids`` at ``distill.temperature``,
    written to :func:`masks_file`; returns the file's record (sha256, number of images)."""
    temperature = cfg.distill.temperature
    soft = [soften("multilabel", mask, temperature) for mask in masks]  # each pixel alike
    path = store.write_masks(masks_file(cfg, fold), ids, soft)
    return {"sha256": sha256_file(path), "rows": len(ids)}


class MixedMasks:
    """Each training image's target, ``alpha * soft + (1 - alpha) * true``, mixed when asked.

    Indexed by position as the dataset indexes its targets; the soft masks stay uint8 levels
    (the store's) until an image is asked for, the true masks are read then.
    """

    def __init__(self, soft: list[np.ndarray], true, alpha: float, path: Path):
        if len(soft) != len(true):
            raise ValueError(f"{len(soft)} soft masks for {len(true)} images")
        self.soft = soft
        self.true = true
        self.alpha = np.float32(alpha)
        self.path = path

    def __len__(self) -> int:
        return len(self.soft)

    def __getitem__(self, index: int) -> np.ndarray:
        soft = store.dequantise(self.soft[index])
        true = np.asarray(self.true[index], dtype=np.float32)
        if soft.shape != true.shape:
            raise DataError(
                f"{self.path}: image {index}'s soft mask is {soft.shape}, its true mask "
                f"{true.shape}; {HINT}"
            )
        return self.alpha * soft + (1 - self.alpha) * true


def mixed_masks(cfg: Config, fold: int, ids: pd.Series, true) -> MixedMasks:
    """Fold ``fold``'s training targets: the teacher's soft masks of the images ``ids`` (in
    their order) mixed with their true masks ``true``.

    Raises:
        DataError: no record or file for the fold, a file changed since ``medalist distill``
            wrote it, or made for other folds, teacher, temperature or images.
    """
    record = read_record(cfg)
    name = fold_name(fold)
    path = masks_file(cfg, fold)
    entry = record["files"].get(name)
    if entry is None or not path.is_file():
        raise DataError(f"{distill_dir(cfg)}: no soft masks for {name}; {HINT}")
    if sha256_file(path) != entry["sha256"]:
        raise DataError(f"{path}: changed since `medalist distill` wrote it; {HINT}")
    stored_ids, levels = store.read_quantised(path)
    position = {str(image): row for row, image in enumerate(stored_ids)}
    wanted = ids.astype(str).tolist()
    if len(stored_ids) != len(wanted) or set(position) != set(wanted):
        raise DataError(f"{path}: its ids are not fold {fold}'s training images; {HINT}")
    soft = [levels[position[image]] for image in wanted]
    return MixedMasks(soft, true, cfg.distill.alpha, path)
