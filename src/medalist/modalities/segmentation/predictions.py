"""What the stages write from masks: OOF and test mask files, the post-processing chosen on OOF,
the RLE submission.

A table task's predictions are rows the stages write themselves; a segmentation task's are
masks, which :class:`MaskPredictions` (the task's ``own_predictions``) writes instead, at the same
points of the same stages:

- ``train``, each fold: its validation images predicted from the fold's prediction weights (the
  ones ``infer`` uses: the kept epoch's, EMA's, SWA's or the mean of its snapshots), whole or in
  tiles (``segmentation.tile``), into ``fold{k}/oof.masks.safetensors``; the fold's scores are
  those masks' (:meth:`MaskPredictions.fold_oof`).
- ``train``, at the end: every fold's masks joined in train order (``oof.masks.safetensors``),
  the CV (Dice/IoU per image at threshold 0.5, their mean; ``cv_test_like`` on the flagged rows),
  and the threshold and minimum component size searched on OOF (``postprocess.json``; its score
  is ``cv_postprocessed``) (:meth:`MaskPredictions.join_oof`).
- ``infer``: each fold's test masks with the TTA views undone (``fold{k}/test.masks.safetensors``)
  and their mean (``test.masks.safetensors``) (:meth:`MaskPredictions.infer`); with
  ``infer.tta_oof`` the OOF images again with the views, their CV and post-processing
  (``oof_tta.masks.safetensors``, ``tta.json``) (:meth:`MaskPredictions.tta_oof`).
- ``submission``: the mean test masks post-processed as ``postprocess.json`` says (or
  ``tta.json``, searched on TTA OOF masks, while it is the last ``infer``'s), written as RLE
  onto the sample submission's rows and validated (ids, image sizes, RLE order)
  (:meth:`MaskPredictions.submission`); ``medalist validate`` checks a file the same way.
- ``ensemble``: the members' masks blended (:mod:`~medalist.modalities.segmentation.blend`).
- ``package`` and the offline bundle: the masks predicted as ``infer`` does, checked against the
  local test masks, blended with the ensemble's picks, submitted as above.

Mask files are the uint8 store of :mod:`~medalist.modalities.segmentation.store` (probabilities
quantised to 1/255, ids in order). Masks are predicted on the main process alone, whole images in
batches of one size (:func:`predict_masks`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medalist.config import Config
from medalist.data import read_table, read_test
from medalist.errors import DataError
from medalist.honest.test_like import test_like_scores
from medalist.io import sha256_file, write_json, write_parquet
from medalist.layout import (
    experiment_dir,
    fold_dir,
    fold_name,
    prediction_weights,
    pseudo_dir,
    sample_path,
    test_path,
)
from medalist.modalities import image
from medalist.modalities.segmentation import blend, distill, postprocess, seeds, store
from medalist.modalities.segmentation import report as mask_report
from medalist.modalities.segmentation import sanity as mask_sanity
from medalist.modalities.segmentation.masks import image_size
from medalist.modalities.segmentation.submission import (
    build_rle_submission,
    detect_layout,
    read_text_csv,
    validate_rle_submission_file,
    write_rle_submission,
)
from medalist.modalities.segmentation.tiling import predict_tiled
from medalist.modalities.segmentation.tta_oof import remove_tta_oof, run_tta_oof, tta_choice
from medalist.modalities.segmentation.views import predict_views
from medalist.prediction.infer import each_weight_file
from medalist.prediction.pseudo import different_ids, teacher_file
from medalist.training.runtime import make_loader

log = logging.getLogger(__name__)

OOF_MASKS, TEST_MASKS = store.OOF_MASKS, store.TEST_MASKS
POSTPROCESS = postprocess.CHOICE_FILE


@torch.no_grad()
def predict_masks(cfg: Config, task, model, dataset, views: list[str], device) -> list[np.ndarray]:
    """Each image's probability mask (C, H, W) at its own size, in the dataset's order: the
    views undone and averaged per tile (``segmentation.tile.size``) or on the whole image.

    Whole images go through the model ``infer.batch_size`` at a time, each batch of one image
    size (the dataset's ``batch_sampler``), read by ``train.num_workers`` loader workers; tiled
    images one by one, their tiles ``segmentation.tile.batch_size`` at a time.
    """
    tile = cfg.segmentation.tile
    model.eval()

    def probabilities(images: torch.Tensor) -> torch.Tensor:
        return task.activate(model(images))

    def viewed(images: torch.Tensor) -> torch.Tensor:
        return predict_views(probabilities, images, views)

    loader = make_loader(dataset, cfg.infer.batch_size, shuffle=False, cfg=cfg)
    masks: list[np.ndarray | None] = [None] * len(dataset)
    for batch in loader:
        images = batch["input"].to(device)
        if tile.size:
            probs = [
                predict_tiled(
                    viewed,
                    image,
                    tile.size,
                    tile.overlap,
                    batch_size=tile.batch_size,
                    kind=tile.window,
                )
                for image in images
            ]
        else:
            probs = viewed(images)
        for row, mask in zip(batch["index"].tolist(), probs, strict=True):
            masks[row] = mask.float().cpu().numpy()
    return masks


def predict_with_files(
    cfg, task, modality, accelerator, paths, dataset, views, on_file=None
) -> list[np.ndarray]:
    """The mean of the masks each weight file in ``paths`` predicts (one file, or a snapshot
    ensemble's), as the model runs in ``infer``
    (:func:`medalist.prediction.infer.prediction_model`), on this process alone.

    ``on_file(path, load_seconds, predict_seconds)`` runs after each file (the bundle's timing).
    """

    def predicted(model):
        return predict_masks(cfg, task, model, dataset, views, accelerator.device)

    # The main process alone predicts masks: the model is not shared across processes.
    per_file = each_weight_file(
        cfg, task, modality, accelerator, paths, predicted, on_file, shared=False
    )
    return mean_masks(per_file)


def mean_masks(per_model: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Each image's mean over several models' masks (weight files, folds), in float32: ``train``,
    ``infer`` and the offline bundle all average through here, so the same masks give the same
    bits everywhere."""
    total = [mask.copy() for mask in per_model[0]]
    for masks in per_model[1:]:
        for row, mask in enumerate(masks):
            total[row] += mask
    return [t / np.float32(len(per_model)) for t in total]


def as_objects(masks) -> np.ndarray:
    """Per-image arrays (of any shapes) as a 1-D numpy object array."""
    out = np.empty(len(masks), dtype=object)
    for i, mask in enumerate(masks):
        out[i] = mask
    return out


class MaskPredictions:
    """The mask files of a :class:`~medalist.modalities.segmentation.task.MaskTask`; see the
    module docstring."""

    test_file = TEST_MASKS  # what infer writes in the experiment's folder (the pipeline's check)

    def __init__(self, task):
        self.task = task

    def fold_oof(self, cfg, modality, accelerator, fold, ids, valid_set, valid_targets, paths):
        """Predict fold ``fold``'s validation images with its weight files ``paths``, write
        ``fold{k}/oof.masks.safetensors``; returns the fold's scores."""
        masks = predict_with_files(
            cfg, self.task, modality, accelerator, paths, valid_set, ["identity"]
        )
        store.write_masks(fold_dir(cfg, fold) / OOF_MASKS, list(ids), masks)
        return self.task.score(valid_targets, masks)

    def join_oof(self, cfg, train, targets, folds, selected) -> dict:
        """Every fold's OOF masks in train order (``oof.masks.safetensors``), the CV, the
        fold mean and spread, ``cv_test_like`` and the post-processing searched on OOF."""
        out = experiment_dir(cfg)
        id_column = cfg.competition.id_column
        position = {str(i): row for row, i in enumerate(train[id_column].astype(str))}
        rows, levels = [], []
        for fold in [f for f in selected if f >= 0]:
            ids, fold_levels = store.read_quantised(fold_dir(cfg, fold) / OOF_MASKS)
            rows += [position[str(i)] for i in ids]
            levels += fold_levels
        if not rows:
            return {}
        if len(set(rows)) != len(rows):
            raise DataError(f"{out}: an id appears in two folds' OOF masks")
        order = np.argsort(rows, kind="stable")
        rows = np.asarray(rows)[order]
        masks = store.Probabilities([levels[i] for i in order])  # floats one image at a time
        return self.score_oof(cfg, train, targets, folds, rows, masks)

    def score_oof(
        self, cfg, train, targets, folds, rows: np.ndarray, masks: store.Probabilities
    ) -> dict:
        """The OOF masks of train rows ``rows`` (ascending) written in train order
        (``oof.masks.safetensors``) and scored: the CV, ``cv_test_like``, ``complete`` and the
        post-processing searched on them (``postprocess.json``, ``cv_postprocessed``)."""
        id_column = cfg.competition.id_column
        ids = train[id_column].iloc[rows].tolist()
        store.write_masks(experiment_dir(cfg) / OOF_MASKS, ids, masks)
        metrics: dict = {"cv": self.task.score(targets[rows], masks)}
        metrics.update(test_like_scores(self.task, folds, targets, rows, masks))
        metrics["complete"] = len(rows) == len(train)
        choice = self.search(cfg, targets[rows], masks)
        if choice is not None:
            metrics["cv_postprocessed"] = {self.task.main_metric.name: choice["score"]}
        return metrics

    # Seeds (medalist.honest.seeds): the seed-averaged model's masks.

    def average_seeds_oof(self, cfg, folders: list[Path], targets, folds) -> dict:
        """The mean of the seeds' OOF masks (``folders``), scored per fold and as
        :meth:`score_oof` scores one experiment's (:mod:`~.seeds`)."""
        return seeds.average_oof(self, cfg, folders, targets, folds)

    def average_seeds_test(self, cfg, folders: list[Path]) -> pd.DataFrame:
        """The mean of the seeds' test masks, ``test.masks.safetensors`` (and of their TTA OOF
        masks with ``infer.tta_oof``); returns the test ids."""
        return seeds.average_test(self, cfg, folders)

    def search(self, cfg, truth, probs, write: bool = True) -> dict | None:
        """The threshold and minimum component size of the best main metric on OOF (the
        configured ones when set), written to ``postprocess.json`` (``write``); None for
        multiclass masks (argmax: nothing to choose).

        ``truth`` and ``probs`` are each image's true mask and probabilities (C, H, W), any
        sequences read image by image (:class:`~.task.RowMasks`, :class:`~.store.Probabilities`).
        """
        seg, task = cfg.segmentation, self.task
        if task.mode == "multiclass":
            return None
        thresholds = [seg.threshold] if seg.threshold is not None else seg.thresholds
        min_sizes = [seg.min_size] if seg.min_size is not None else seg.min_sizes
        choice = postprocess.search(
            probs,
            truth,
            thresholds,
            min_sizes,
            metric=task.main_metric.name,
            empty=seg.empty,
            connectivity=seg.connectivity,
        )
        record = {
            "threshold": choice.threshold,
            "min_size": choice.min_size,
            "metric": task.main_metric.name,
            "score": choice.score,
            "connectivity": seg.connectivity,
            "searched": {"thresholds": list(thresholds), "min_sizes": list(min_sizes)},
        }
        if not write:
            return record
        write_json(experiment_dir(cfg) / POSTPROCESS, record)
        log.info(
            "post-processing on OOF: threshold %.2f, min size %d px: %s %.5g",
            choice.threshold,
            choice.min_size,
            task.main_metric.name,
            choice.score,
        )
        return record

    def infer(self, cfg, modality, accelerator, folds, views) -> None:
        """Each fold's test masks (``fold{k}/test.masks.safetensors``) and their mean
        (``test.masks.safetensors``), predicted on the main process."""
        if not accelerator.is_main_process:
            return
        remove_tta_oof(cfg)  # an earlier infer's TTA OOF choice never outlives its test masks
        test = read_test(cfg)
        source = str(test_path(cfg))
        dataset = modality.build_dataset(
            cfg, test, None, split="test", train=False, source=source, views=views
        )
        ids = test[cfg.competition.id_column].tolist()
        per_fold = []
        for fold in folds:
            masks = predict_with_files(
                cfg, self.task, modality, accelerator, prediction_weights(cfg, fold), dataset, views
            )
            store.write_masks(fold_dir(cfg, fold) / TEST_MASKS, ids, masks)
            per_fold.append(masks)
        store.write_masks(experiment_dir(cfg) / TEST_MASKS, ids, mean_masks(per_fold))

    def tta_oof(self, cfg, modality, accelerator, train, folds_table, folds, views) -> dict:
        """Each fold's validation images predicted again with the views
        (``oof_tta.masks.safetensors``) and ``tta.json``: CV without and with TTA, and the
        post-processing searched on the TTA OOF masks, which the submission then applies
        (:mod:`~.tta_oof`)."""
        return run_tta_oof(self, cfg, modality, accelerator, train, folds_table, folds, views)

    def submission(self, cfg, path: Path, masks_path: Path | None = None) -> Path:
        """The mean test masks, post-processed as chosen on OOF, as a validated RLE file."""
        seg, task = cfg.segmentation, self.task
        masks_path = masks_path or experiment_dir(cfg) / TEST_MASKS
        if not masks_path.is_file():
            raise DataError(f"test masks not found: {masks_path}; run infer first")
        ids, probs = store.read_masks(masks_path)
        hard = [self.binarize(cfg, p) for p in probs]
        sample = read_text_csv(sample_path(cfg), "sample submission")
        layout = detect_layout(sample, task.classes)
        order = seg.rle_order
        sub = build_rle_submission(sample, layout, ids, hard, order=order, classes=task.classes)
        shapes = self.test_shapes(cfg)
        return write_rle_submission(
            sub, sample, path, layout, shapes=shapes, order=order, classes=task.classes
        )

    # The offline bundle (medalist.offline.predict): masks where tables would be.

    def predict_files(self, cfg, modality, accelerator, paths, dataset, views, on_file=None):
        """One fold's test masks from its weight files, as ``infer`` predicts them."""
        return predict_with_files(
            cfg, self.task, modality, accelerator, paths, dataset, views, on_file
        )

    def fold_mean(self, per_fold: list[list[np.ndarray]]) -> np.ndarray:
        """The folds' mean masks, as ``infer`` averages them (a numpy object array)."""
        return as_objects(mean_masks(per_fold))

    def blend(self, members: list[tuple[int, list[np.ndarray]]]) -> np.ndarray:
        """An ensemble's masks from (pick count, member's masks) pairs, as the ensemble stage
        blends the members' stored masks (:func:`~.blend.blend`): each quantised as the store
        holds it first."""
        levels = [[store.quantise(mask) for mask in masks] for _, masks in members]
        picks = np.array([count for count, _ in members])
        return as_objects(blend.blend(levels, picks))

    def write_predictions(self, path: Path, ids, values) -> Path:
        """Masks where a table's ``test.parquet`` would go (the submission stage reads them)."""
        return store.write_masks(path, list(ids), list(values))

    def check_against_local(self, folder: Path, name: str, ids, values) -> None:
        """The bundle's masks of the sample images must be the test masks of the experiment's
        ``folder`` (within the store's quantisation)."""
        local = folder / TEST_MASKS
        if not local.is_file():
            log.info("%s: no %s to compare the bundle's masks with", name, local)
            return
        stored_ids, stored = store.read_masks(local)
        position = {str(i): k for k, i in enumerate(stored_ids)}
        missing = [str(i) for i in ids if str(i) not in position]
        if missing:
            raise DataError(f"{local} does not hold the test ids {missing[:5]}; run infer again")
        worst = max(
            float(np.abs(stored[position[str(i)]] - v).max())
            if stored[position[str(i)]].shape == v.shape
            else float("inf")
            for i, v in zip(ids, values, strict=True)
        )
        if worst > store.ERROR_BOUND + store.TOLERANCE:
            raise DataError(
                f"{name}: the bundle predicts other masks than {local} (largest difference "
                f"{worst:g}); run `medalist infer` again for {name} with the settings to ship "
                "(it records its views in infer.json) and package after it"
            )

    # Pseudo labels (medalist.prediction.pseudo): soft or hard masks of the test images.

    def pseudo_labels(self, cfg, teachers, name: str, folds_sha256: str, stem: Path, write: bool):
        """One label file of a pseudo round from the teachers' test masks ``name`` (a fold's, or
        the fold average for ``source: ensemble``): their mean, each image's confidence (the mean
        over its pixels of the top probability, max(p, 1 - p) for sigmoid masks), the images
        above ``pseudo.threshold``, most confident first, at most ``pseudo.max_fraction`` of
        them; ``mode: hard`` masks at 0.5 (one-hot argmax for multiclass). Written (``write``:
        the main process) as ``<stem>.masks.safetensors`` and ``<stem>.parquet`` (id,
        ``pseudo_weight``, ``confidence``); returns their record for ``teachers.json``."""
        ids, per_teacher = None, []
        for teacher in teachers:
            masks_file, _ = teacher_file(cfg, teacher, name, folds_sha256)
            teacher_ids, masks = store.read_masks(masks_file)
            if ids is not None and [str(i) for i in teacher_ids] != [str(i) for i in ids]:
                raise different_ids(teachers, name)
            ids = teacher_ids
            per_teacher.append(masks)
        mean = mean_masks(per_teacher)
        confidence = np.array([float(self.confidence(m)) for m in mean])
        rows = self.select(cfg.pseudo, confidence)
        labels = [mean[i] if cfg.pseudo.mode == "soft" else self.hard(mean[i]) for i in rows]
        table = pd.DataFrame(
            {
                cfg.competition.id_column: [ids[i] for i in rows],
                "pseudo_weight": cfg.pseudo.weight,
                "confidence": confidence[rows],
            }
        )
        record = {"sha256": None, "masks_sha256": None, "rows": len(rows), "of": len(ids)}
        if write:
            masks_path = store.write_masks(
                stem.with_name(f"{stem.name}.masks.safetensors"), [ids[i] for i in rows], labels
            )
            record["masks_sha256"] = sha256_file(masks_path)
            record["sha256"] = sha256_file(write_parquet(stem.with_suffix(".parquet"), table))
        log.info(
            "pseudo round %d: %s: %d of %d test images",
            cfg.pseudo.round,
            stem.name,
            len(rows),
            len(ids),
        )
        return record

    def confidence(self, probs: np.ndarray) -> float:
        """How sure the masks are: the mean over pixels of the top class's probability
        (multiclass), or of max(p, 1 - p) (each sigmoid channel)."""
        if self.task.mode == "multiclass":
            return float(probs.max(0).mean())
        return float(np.maximum(probs, 1 - probs).mean())

    def select(self, settings, confidence: np.ndarray) -> np.ndarray:
        """The images kept: above ``threshold``, most confident first, ``max_fraction`` at
        most; in test order."""
        keep = np.ones(len(confidence), dtype=bool)
        if settings.threshold is not None:
            keep = confidence >= float(settings.threshold)
        order = [i for i in np.argsort(-confidence, kind="stable") if keep[i]]
        cap = int(np.floor(settings.max_fraction * len(confidence)))
        return np.sort(np.asarray(order[:cap], dtype=int))

    def hard(self, probs: np.ndarray) -> np.ndarray:
        """A hard mask: one-hot argmax (multiclass), else 0/1 at 0.5."""
        if self.task.mode == "multiclass":
            return (np.arange(len(probs))[:, None, None] == probs.argmax(0)).astype(np.float32)
        return (probs >= 0.5).astype(np.float32)

    def pseudo_masks(self, cfg, fold: int, ids: list) -> list[np.ndarray]:
        """The masks of round ``train.pseudo_round`` that fold ``fold``'s student trains on, in
        the order of ``ids`` (the round's table, already checked): the file checked against
        ``teachers.json``; multiclass masks as class indices (what the loss takes)."""
        folder = pseudo_dir(cfg, cfg.train.pseudo_round)
        record = json.loads((folder / "teachers.json").read_text())
        name = fold_name(fold)
        path = folder / f"{name}.masks.safetensors"
        entry = record["files"].get(name) or {}
        if not path.is_file() or sha256_file(path) != entry.get("masks_sha256"):
            raise DataError(
                f"{path}: missing, or changed since `medalist pseudo` wrote it; run it again"
            )
        stored_ids, masks = store.read_masks(path)
        position = {str(i): k for k, i in enumerate(stored_ids)}
        missing = [i for i in ids if str(i) not in position]
        if missing:
            raise DataError(f"{path}: no mask for pseudo-labelled ids {missing[:5]}")
        out = [masks[position[str(i)]] for i in ids]
        if self.task.mode == "multiclass":
            out = [m.argmax(0).astype(np.int64) for m in out]
        return out

    # Distillation (medalist.prediction.distill): a teacher's soft masks, mixed with the true.

    def check_distill(self, cfg) -> None:
        """Refuse a student that cannot learn from soft masks (:func:`~.distill.check_student`)."""
        distill.check_student(cfg)

    def distill_fold(self, cfg, teacher, modality, accelerator, fold, images, views) -> dict:
        """The soft masks of the training images ``images`` that the teacher's (``teacher``, its
        config; this task, its task) fold-``fold`` model predicts, written by the main process
        (:func:`~.distill.write_soft_masks`); returns the file's record."""
        distill.check_teacher(cfg, teacher)
        if not accelerator.is_main_process:
            return {"sha256": None, "rows": len(images)}
        dataset = distill.teacher_images(teacher, modality, images, views)
        paths = prediction_weights(teacher, fold)
        masks = predict_with_files(teacher, self.task, modality, accelerator, paths, dataset, views)
        ids = images[cfg.competition.id_column].tolist()
        return distill.write_soft_masks(cfg, fold, ids, masks)

    def distilled_masks(self, cfg, fold: int, ids, targets):
        """Fold ``fold``'s training targets ``targets`` (the images ``ids``) mixed with the
        teacher's soft masks (:func:`~.distill.mixed_masks`)."""
        return distill.mixed_masks(cfg, fold, ids, targets)

    def ensemble(self, cfg, ens_cfg) -> dict:
        """``medalist ensemble`` of segmentation experiments (:mod:`~.blend`)."""
        return blend.run_ensemble(self, cfg, ens_cfg)

    def validate_file(self, cfg, path) -> None:
        """Refuse a submission file (``medalist validate``) unless it has the sample's rows
        and every RLE fits its test image in ``segmentation.rle_order``."""
        sample = read_text_csv(sample_path(cfg), "sample submission")
        validate_rle_submission_file(
            path,
            sample_path(cfg),
            detect_layout(sample, self.task.classes),
            shapes=self.test_shapes(cfg),
            order=cfg.segmentation.rle_order,
            classes=self.task.classes,
        )

    def binarize(self, cfg, probs: np.ndarray) -> np.ndarray:
        """One image's probabilities as the binary masks its RLE encodes: one-hot argmax for
        multiclass, else the threshold and minimum size of ``postprocess.json``."""
        multiclass = self.task.mode == "multiclass"
        chosen = None if multiclass else self.chosen(cfg)
        return postprocess.final_masks(probs, multiclass, chosen).astype(np.uint8)

    def chosen(self, cfg) -> dict:
        """The threshold and minimum size: ``segmentation.threshold`` and ``min_size`` when both
        are set, else those searched on the TTA OOF masks of the last ``infer`` (``tta.json``,
        :func:`~.tta_oof.tta_choice`), else those ``train`` chose on OOF (``postprocess.json``)."""
        seg = cfg.segmentation
        if seg.threshold is not None and seg.min_size is not None:
            return {
                "threshold": seg.threshold,
                "min_size": seg.min_size,
                "connectivity": seg.connectivity,
            }
        searched_with_views = tta_choice(experiment_dir(cfg))
        if searched_with_views is not None:
            return searched_with_views
        path = experiment_dir(cfg) / POSTPROCESS
        if not path.is_file():
            raise DataError(
                f"{path} not found: train chooses the threshold and minimum size on OOF masks "
                "(a full fit alone has none: set segmentation.threshold and segmentation.min_size)"
            )
        return json.loads(path.read_text())

    def test_shapes(self, cfg) -> dict[str, tuple[int, int]]:
        """Each test image's (height, width) by id, from the file headers."""
        test = read_table(test_path(cfg), [cfg.competition.id_column])
        paths = image.image_paths(cfg, test, "test", str(test_path(cfg)))
        ids = test[cfg.competition.id_column].astype(str).tolist()
        return {
            i: image_size(p, f"{test_path(cfg)}: image {i}")
            for i, p in zip(ids, paths, strict=True)
        }

    # The leak alarm (medalist.honest.sanity): masks as labels (.sanity).

    def sanity_kinds(self, cfg, train, source: str) -> np.ndarray:
        """Each row's image size as a number: masks are exchanged only between images of one
        size."""
        return mask_sanity.size_kinds(cfg, train, source)

    def sanity_sha256(self, masks) -> str:
        """The sha256 of the shuffled masks, in order."""
        return mask_sanity.labels_sha256(masks)

    def sanity_oof(self, folder: Path) -> tuple[list, store.Probabilities]:
        """The shuffled-label run's ids and OOF masks."""
        return mask_sanity.read_oof(folder)

    def sanity_scores(self, observed, nulls, predictions) -> dict[str, tuple]:
        """Each metric's (observed score, null scores, constant prior's score)."""
        return mask_sanity.scores(self.task, observed, nulls, predictions)

    # The report (medalist.reporting.report): what it shows of masks (:mod:`~.report`).

    def report_scores(self, folder: Path) -> dict:
        """The scores an experiment (``metrics.json``) or an ensemble (``cv.json``) recorded."""
        return mask_report.recorded_scores(folder)

    def report_correlations(self, folders: dict[str, Path]) -> pd.DataFrame:
        """Pearson's r of the subjects' (name: folder) OOF pixel probabilities."""
        return mask_report.correlations(folders)

    def report_diagnostics(self, inputs, name: str, folder: Path) -> list[str]:
        """The HTML sections of one subject's OOF masks: Dice per image, empty masks, the
        worst images."""
        return mask_report.diagnostics(self.task, inputs, name, folder)

    # The offline bundle's seed-averaged experiment (medalist.offline.predict.average_seeds).

    def seed_mean(self, per_seed: list[np.ndarray]) -> np.ndarray:
        """The seeds' mean masks from each seed's fold mean, as ``infer`` makes the averaged
        model's (:func:`~.seeds.seed_mean`): each seed's masks quantised as its stored test masks
        hold them, then averaged as :func:`~.store.average_masks` averages those files."""
        stored = [[store.dequantise(store.quantise(mask)) for mask in masks] for masks in per_seed]
        return as_objects(store.weighted_mean([(1.0, masks) for masks in stored]))
