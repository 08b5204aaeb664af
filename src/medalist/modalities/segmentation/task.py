"""The segmentation task: masks as targets, the smp loss, Dice and IoU per image.

The train, infer and submission stages ask a task for its targets, loss, activation and scores
and never name a modality. A segmentation task answers in masks:

- targets: each train row's mask, read when asked (:class:`RowMasks`, indexed by rows as the
  stages index label arrays);
- the loss: ``segmentation.loss`` in fp32 (:func:`~.losses.build_loss`), one value per batch;
- the activation: sigmoid per channel (binary, multilabel) or softmax over the classes;
- predictions: one probability mask (C, H, W) per image, as a numpy object array so that the
  stages' row selections (``predictions[flagged]``) work on them as on table rows;
- the metrics: ``dice`` and ``iou`` per (image, channel) with ``segmentation.empty``, their mean
  the score (as :mod:`~.scoring` computes them), at threshold 0.5 (argmax for multiclass);
- validation inside the loop (:meth:`MaskTask.evaluate`): pixel counts per image accumulated
  batch by batch, never every logit in memory.

What the stages write from masks (OOF and test mask files, the post-processing chosen on OOF,
the RLE submission) is :attr:`MaskTask.own_predictions`
(:class:`~medalist.modalities.segmentation.predictions.MaskPredictions`).

``task.*`` describes the train.csv column(s) the folds stratify on (``competition.target_columns``,
e.g. an empty-mask flag); the mask task itself is ``segmentation.task``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from medalist.config import Config
from medalist.errors import ConfigError
from medalist.metrics import Metric
from medalist.modalities import image
from medalist.modalities.segmentation.inputs import mask_layout
from medalist.modalities.segmentation.losses import build_loss
from medalist.modalities.segmentation.masks import MaskTargets
from medalist.modalities.segmentation.predictions import MaskPredictions
from medalist.modalities.segmentation.scoring import (
    METRICS,
    binary_counts,
    class_counts,
    from_counts,
    mask_metric,
    mean_score,
)

THRESHOLD = 0.5  # a pixel is in a sigmoid mask from this probability, before post-processing


class RowMasks:
    """Rows' masks by position, selected by rows as the stages select label arrays.

    ``masks[i]`` is row i's mask (read when asked); ``masks[rows]`` (an integer or boolean
    array, a list or a slice) is another :class:`RowMasks` of those rows, reading nothing.
    """

    def __init__(self, targets: MaskTargets, rows: np.ndarray | None = None):
        self.targets = targets
        self.rows = np.arange(len(targets)) if rows is None else np.asarray(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.targets[int(self.rows[key])]
        return RowMasks(self.targets, self.rows[np.asarray(key) if isinstance(key, list) else key])


class MaskTask:
    """The segmentation task of a config (``segmentation.*``); see the module docstring.

    Attributes:
        type: ``segmentation`` (the stages' table-only paths check it).
        mode: the mask task, ``binary``, ``multiclass`` or ``multilabel``.
        classes: the class names, in channel order.
        target_columns: the fold file's stratification column(s).
        metrics: ``dice`` and ``iou`` (``task.metrics`` may reorder or keep one).
    """

    type = "segmentation"
    pred_columns: list[str] = []  # predictions are masks, not table columns

    def __init__(self, cfg: Config):
        seg = cfg.segmentation
        self.cfg = cfg
        self.mode = seg.task
        self.classes = [str(c) for c in seg.classes]
        self.target_columns = list(cfg.competition.target_columns)
        self.empty = seg.empty
        names = cfg.task.metrics or list(METRICS)
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ConfigError(
                f"task.metrics: {unknown} do not score masks; segmentation scores {list(METRICS)}"
            )
        self.metrics = [mask_metric(n, self.mode, self.empty) for n in names]
        self.criterion = build_loss(
            seg.loss_spec,
            seg.task,
            focal_gamma=seg.focal_gamma,
            tversky_alpha=seg.tversky_alpha,
            tversky_beta=seg.tversky_beta,
        )

    @property
    def num_outputs(self) -> int:
        return self.cfg.segmentation.mask_channels

    @property
    def main_metric(self) -> Metric:
        return self.metrics[0]

    @property
    def own_predictions(self):
        """What writes, joins, scores and submits this task's predictions (masks, not rows)."""
        return MaskPredictions(self)

    def encode_targets(self, df: pd.DataFrame, source: str = "train.csv") -> RowMasks:
        """Every row's mask, read when asked (checked before by the modality's ``check_inputs``)."""
        paths = image.image_paths(self.cfg, df, "train", source)
        return RowMasks(MaskTargets(mask_layout(self.cfg), df, paths, source))

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch's loss (a scalar: Dice and Lovasz are ratios over the batch), in fp32."""
        return self.criterion(logits, target)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (N, C, H, W) to probabilities: softmax over the classes, else sigmoid."""
        logits = logits.float()
        return logits.softmax(1) if self.mode == "multiclass" else logits.sigmoid()

    def counts(self, probs: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        """(intersection, predicted, true) pixel counts per channel of one image's
        probabilities (C, H, W) and true mask."""
        if self.mode == "multiclass":
            return tuple(c[0] for c in class_counts(probs.argmax(0)[None], mask[None], len(probs)))
        true = mask if mask.ndim == 3 else mask[None]
        return tuple(c[0] for c in binary_counts(probs[None] >= THRESHOLD, true[None] >= 0.5))

    def score(self, targets, predictions) -> dict[str, float]:
        """Each metric's mean over the images of ``predictions`` (probability masks, in the
        order of ``targets``, a :class:`RowMasks` or arrays)."""
        per_image = [
            self.counts(np.asarray(p), np.asarray(targets[i])) for i, p in enumerate(predictions)
        ]
        return self.scores_from_counts(per_image)

    def scores_from_counts(self, per_image: list[tuple[np.ndarray, ...]]) -> dict[str, float]:
        """Each metric's mean from per-image (intersection, predicted, true) channel counts."""
        if not per_image:
            return {m.name: float("nan") for m in self.metrics}
        stacked = [np.stack([c[k] for c in per_image]) for k in range(3)]
        return {
            m.name: mean_score(from_counts(*stacked, metric=m.name, empty=self.empty))
            for m in self.metrics
        }

    @torch.no_grad()
    def evaluate(self, model, loader, targets, accelerator) -> tuple[dict, None]:
        """The validation loss and scores, from pixel counts accumulated batch by batch (the
        loop's evaluation; no logits are kept: the fold's OOF masks are predicted afterwards
        from its saved weights)."""
        model.eval()
        loss_sum, seen = 0.0, 0
        counts: list[tuple[int, torch.Tensor]] = []
        for batch in loader:
            logits = model(batch["input"]).float()
            target = batch["target"]
            loss_sum += self.loss(logits, target).item() * len(target)
            seen += len(target)
            stacked = self._batch_counts(self.activate(logits), target)  # (B, 3, C)
            # Batches of images of one size differ in length across processes: padded to the
            # longest (index -1) for the gather, the padding dropped after.
            index = accelerator.pad_across_processes(batch["index"], dim=0, pad_index=-1)
            stacked = accelerator.pad_across_processes(stacked, dim=0)
            index, stacked = accelerator.gather((index, stacked))
            real = (index >= 0).cpu()
            counts.extend(zip(index.cpu()[real].tolist(), stacked.cpu()[real], strict=True))
        totals = torch.tensor([loss_sum, seen], dtype=torch.float64, device=accelerator.device)
        loss_sum, seen = accelerator.reduce(totals, "sum").tolist()
        # Each image once: the shard that gives every process as many batches repeats images.
        per_image = dict(sorted(counts, key=lambda pair: pair[0]))
        scores = self.scores_from_counts([tuple(c.numpy()) for c in per_image.values()])
        return {"valid_loss": float(loss_sum / max(seen, 1)), **scores}, None

    def _batch_counts(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, 3, C) pixel counts (intersection, predicted, true) of a batch, on its device."""
        if self.mode == "multiclass":
            classes = probs.shape[1]
            predicted = torch.nn.functional.one_hot(probs.argmax(1), classes).movedim(-1, 1)
            true = torch.nn.functional.one_hot(target.long(), classes).movedim(-1, 1)
        else:
            predicted = probs >= THRESHOLD
            true = (target if target.ndim == 4 else target[:, None]) >= 0.5
        predicted, true = predicted.bool(), true.bool()
        sums = [(predicted & true), predicted, true]
        return torch.stack([s.flatten(2).sum(-1) for s in sums], dim=1)


def build_task(cfg: Config, train: pd.DataFrame) -> MaskTask:
    """The segmentation task of ``cfg`` (``train`` is unused: the classes are configured)."""
    return MaskTask(cfg)
