"""mixup and cutmix, through timm's ``Mixup`` (batch mode).

- mixup: Zhang et al., "mixup: beyond empirical risk minimization" (ICLR 2018); alpha 0.1-0.4.
- cutmix: Yun et al., "CutMix: regularization strategy to train strong classifiers with
  localizable features" (ICCV 2019); alpha 0.5-1.

Images are mixed with the batch flipped; targets become the same convex combination: soft class
probabilities (with the configured label smoothing), mixed 0/1 labels, or mixed values for
regression, so that every soft class target sums to one. Images only (4-D inputs).
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target

from medalist.errors import ConfigError
from medalist.hooks import Hook
from medalist.tricks.config import MixConfig


def mix_targets(task, target: torch.Tensor, lam: float, smoothing: float) -> torch.Tensor:
    """Targets of a batch mixed with the flipped batch in proportion ``lam``."""
    if task.type == "multiclass":
        if target.is_floating_point():  # already soft (pseudo labels): mix as they are
            return target * lam + target.flip(0) * (1 - lam)
        return mixup_target(target, task.num_outputs, lam, smoothing)
    if task.type == "binary":
        dense = target.float().view(-1, 1)
        return mixup_target(dense, 1, lam, smoothing, multi_label=True).view(-1)
    if task.type == "multilabel":
        return mixup_target(target.float(), task.num_outputs, lam, smoothing, multi_label=True)
    return target * lam + target.flip(0) * (1 - lam)


class Mix(Hook):
    """Mix each training batch with itself reversed."""

    def __init__(self, cfg: MixConfig, task, smoothing: float = 0.0):
        if cfg.mixup_alpha <= 0 and cfg.cutmix_alpha <= 0:
            raise ConfigError("tricks.mix: set mixup_alpha or cutmix_alpha above 0")
        self.cfg = cfg
        self.smoothing = smoothing
        self.mixup = Mixup(
            mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha,
            prob=cfg.prob,
            switch_prob=cfg.switch_prob,
            mode="batch",
            num_classes=max(task.num_outputs, 1) if task else 1,
        )

    def before_batch(self, state, batch):
        if self.cfg.stop_epoch is not None and state.epoch >= self.cfg.stop_epoch:
            return batch
        inputs = batch["input"]
        if not torch.is_tensor(inputs) or inputs.ndim != 4:
            raise ConfigError("tricks.mix: mixup and cutmix need image batches (N, C, H, W)")
        inputs = inputs.clone()  # never change the loader's tensors in place
        lam = self.mixup._mix_batch(inputs)
        batch = dict(batch, input=inputs)
        batch["target"] = mix_targets(state.task, batch["target"], lam, self.smoothing)
        batch["mix_lam"] = lam
        return batch
