"""Loss tricks: label smoothing, focal loss, class weights (in the criterion), OHEM and flooding.

- Label smoothing: Szegedy et al., "Rethinking the Inception architecture" (CVPR 2016);
  0.05-0.2. Hard labels are smoothed exactly once, by :func:`soft_targets`, wherever they become
  probabilities: here, in mixup (:mod:`medalist.tricks.mix`) or in a pseudo round's training set.
- Focal loss: Lin et al., "Focal loss for dense object detection" (ICCV 2017); gamma 1-3,
  gamma 0 is cross entropy exactly.
- Class weights: per-class factors, or 'balanced' = n / (classes x count) from the training fold.
- OHEM: Shrivastava et al., "Training region-based object detectors with online hard example
  mining" (CVPR 2016): only the hardest ``ohem_ratio`` of a batch (0.5-0.8) is back-propagated.
- Flooding: Ishida et al., "Do we need zero training loss after achieving zero training error?"
  (ICML 2020): loss becomes ``|loss - b| + b``; b about the validation loss you expect.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medalist.config.tricks import LossConfig
from medalist.errors import ConfigError
from medalist.tasks import Task
from medalist.training.hooks import Hook


def soft_targets(task: Task, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The probabilities a classification loss aims at, with hard labels smoothed once.

    A target's dtype says what it is. Integers are hard labels: class indices (binary,
    multiclass) or 0/1 per label (multilabel); they become ``onehot * (1 - eps) + eps / classes``
    (multiclass) or ``y * (1 - eps) + eps / 2`` (each sigmoid output). Floats are targets already
    final (soft pseudo labels, mixed or smoothed ones) and are returned as they are, as are
    regression values.

    Args:
        task: the task (its type and number of outputs).
        target: shape (batch,) for binary and multiclass indices, (batch, outputs) otherwise.
        smoothing: ``tricks.loss.label_smoothing``.
    """
    if target.is_floating_point() or task.type == "regression":
        return target
    if task.type == "multiclass":
        classes = task.num_outputs
        return F.one_hot(target, classes).float() * (1 - smoothing) + smoothing / classes
    return target.float() * (1 - smoothing) + 0.5 * smoothing


class Criterion:
    """Per-sample loss of a task with smoothing, focal modulation and class weights.

    Classification targets are hard labels (integers, smoothed here) or final probabilities
    (floats: soft pseudo labels, mixed targets, a pseudo round's smoothed labels), never smoothed
    again; see :func:`soft_targets`. Regression targets are values. With every option off it is
    the task's own loss, exactly.
    """

    def __init__(self, task: Task, cfg: LossConfig, class_weights: torch.Tensor | None = None):
        self.task = task
        self.smoothing = cfg.label_smoothing
        self.gamma = cfg.focal_gamma
        self.class_weights = class_weights
        if task.type == "regression" and (
            self.smoothing or self.gamma or class_weights is not None
        ):
            raise ConfigError(
                "tricks.loss: label smoothing, focal loss and class weights need a "
                "classification task"
            )

    @property
    def plain(self) -> bool:
        return not self.smoothing and not self.gamma and self.class_weights is None

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.plain or self.task.type == "regression":
            return self.task.loss(logits, target)  # takes soft targets too
        logits = logits.float()
        if self.task.type == "multiclass":
            return self._multiclass(logits, target)
        return self._sigmoid(logits, target)

    def _multiclass(self, logits, target):
        target = soft_targets(self.task, target, self.smoothing)
        log_p = logits.log_softmax(-1)
        per_class = -target * log_p
        if self.gamma:
            per_class = per_class * (1 - log_p.exp()).pow(self.gamma)
        if self.class_weights is not None:
            per_class = per_class * self.class_weights.to(per_class.device)
        return per_class.sum(-1)

    def _sigmoid(self, logits, target):
        if self.task.type == "binary":
            logits = logits[:, 0]
        target = soft_targets(self.task, target, self.smoothing)
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        if self.gamma:
            p = logits.sigmoid()
            p_true = p * target + (1 - p) * (1 - target)
            loss = loss * (1 - p_true).pow(self.gamma)
        if self.class_weights is not None:
            weights = self.class_weights.to(loss.device)
            # Binary: weight of the positive vs negative class; multilabel: per label.
            loss = loss * (
                weights[1] * target + weights[0] * (1 - target) if loss.ndim == 1 else weights
            )
        return loss if loss.ndim == 1 else loss.mean(1)


def class_weights(cfg: LossConfig, task: Task, targets: np.ndarray) -> torch.Tensor | None:
    """The configured class weights, or 'balanced' from the training fold's class counts."""
    if cfg.class_weights is None:
        return None
    n_weights = len(task.classes) if task.type in ("binary", "multiclass") else task.num_outputs
    if cfg.class_weights == "balanced":
        if task.type == "multilabel":
            positives = targets.mean(0).clip(1e-6, 1 - 1e-6)
            return torch.tensor(0.5 / positives, dtype=torch.float32)
        counts = np.bincount(targets, minlength=n_weights).clip(min=1)
        return torch.tensor(len(targets) / (n_weights * counts), dtype=torch.float32)
    if len(cfg.class_weights) != n_weights:
        raise ConfigError(
            f"tricks.loss.class_weights: {n_weights} values needed, got {len(cfg.class_weights)}"
        )
    return torch.tensor(cfg.class_weights, dtype=torch.float32)


class OHEM(Hook):
    """Keep the hardest fraction of each batch's per-sample losses."""

    def __init__(self, ratio: float):
        self.ratio = ratio

    def per_sample_loss(self, state, batch, outputs, losses):
        keep = max(1, math.ceil(self.ratio * losses.numel()))
        return losses.topk(keep, sorted=False).values


class Flooding(Hook):
    """Keep the training loss floating around ``level`` instead of reaching zero."""

    def __init__(self, level: float):
        self.level = level

    def compute_loss(self, state, batch, outputs, loss):
        return (loss - self.level).abs() + self.level
