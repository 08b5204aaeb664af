"""mixup and cutmix, through timm's ``Mixup`` (batch mode).

- mixup: Zhang et al., "mixup: beyond empirical risk minimization" (ICLR 2018); alpha 0.1-0.4.
- cutmix: Yun et al., "CutMix: regularization strategy to train strong classifiers with
  localizable features" (ICCV 2019); alpha 0.5-1.

Images are mixed with the batch flipped; targets become the same convex combination of the two
rows' probabilities: hard labels smoothed first (``tricks.loss.label_smoothing``, once:
:func:`medalist.tricks.losses.soft_targets`), soft ones as they are, regression values as they
are. Every multiclass target still sums to one. Images only (4-D inputs).
"""

from __future__ import annotations

import torch
from timm.data import Mixup

from medalist.config.tricks import MixConfig
from medalist.errors import ConfigError
from medalist.training.hooks import Hook
from medalist.tricks.losses import soft_targets


def mix_targets(task, target: torch.Tensor, lam: float, smoothing: float) -> torch.Tensor:
    """Targets of a batch mixed with the flipped batch in proportion ``lam``.

    The result is a float target the loss takes as final: hard labels were smoothed here, so
    smoothing is affine and the mix of smoothed labels is the smoothed mix (timm's
    ``mixup_target``).
    """
    soft = soft_targets(task, target, smoothing)
    return soft * lam + soft.flip(0) * (1 - lam)


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
