"""EMA: an exponential moving average of the weights, evaluated and saved instead of them.

Polyak and Juditsky, "Acceleration of stochastic approximation by averaging" (1992); the form
used in deep learning follows Tarvainen and Valpola, "Mean teachers are better role models"
(NeurIPS 2017). ``decay`` 0.99 for a few hundred steps per fold, 0.999 for thousands, 0.9999
for long runs; ``warmup`` ramps the decay up so the first steps do not freeze the average at
random initial weights.

The average lives in fp32 whatever the training precision, covers parameters and buffers (batch
norm statistics), and is updated in one batched ``foreach`` lerp by timm's ``ModelEmaV3``, only
after real optimizer steps: not on accumulation micro-steps, not on steps the fp16 scaler skipped
(the loop calls ``after_step`` only then).
"""

from __future__ import annotations

import logging

import torch
from timm.utils import ModelEmaV3

from medalist.hooks import Hook, TrainState
from medalist.tricks.config import EMAConfig

log = logging.getLogger(__name__)


class EMA(Hook):
    """Track ``state.model``'s weights; evaluate, predict and save with the average."""

    def __init__(self, cfg: EMAConfig):
        self.cfg = cfg
        self.ema: ModelEmaV3 | None = None

    def on_fit_start(self, state: TrainState) -> None:
        model = state.accelerator.unwrap_model(state.model)
        self.ema = ModelEmaV3(
            model,
            decay=self.cfg.decay,
            update_after_step=self.cfg.start_step,
            use_warmup=self.cfg.warmup,
            dtype=torch.float32,
            foreach=True,
        )
        state.extra["ema_module"] = self.ema.module  # SWA averages this when both are on
        self._warn_if_too_slow(state)

    def _warn_if_too_slow(self, state: TrainState) -> None:
        if state.train_loader is None or self.cfg.warmup:
            return
        accumulation = state.accelerator.gradient_accumulation_steps
        total = len(state.train_loader) * state.num_epochs // accumulation
        horizon = 1 / (1 - self.cfg.decay)
        if total < horizon:
            log.warning(
                "tricks.ema: decay %.4g averages over ~%d steps but the fold trains ~%d; the "
                "average stays near the initial weights. Lower the decay or set warmup: true",
                self.cfg.decay,
                horizon,
                total,
            )

    def after_step(self, state: TrainState) -> None:
        self.ema.update(state.accelerator.unwrap_model(state.model), step=state.step)

    def eval_model(self, state: TrainState) -> torch.nn.Module:
        return self.ema.module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.ema.module.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.ema.module.load_state_dict(state)
