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

from medalist.config.tricks import EMAConfig
from medalist.training.hooks import Hook, TrainState
from medalist.training.weights import bare_model

log = logging.getLogger(__name__)


class EMA(Hook):
    """Track ``state.model``'s weights; evaluate, predict and save with the average."""

    def __init__(self, cfg: EMAConfig):
        self.cfg = cfg
        self.ema: ModelEmaV3 | None = None

    def on_fit_start(self, state: TrainState) -> None:
        model = bare_model(state.model)
        self.ema = ModelEmaV3(
            model,
            decay=self.cfg.decay,
            update_after_step=self.cfg.start_step,
            use_warmup=self.cfg.warmup,
            dtype=torch.float32,
            foreach=True,
        )
        state.extra["ema_module"] = self.ema.module  # SWA averages this when both are on
        self._pairs = _update_lists(self.ema.module, model)
        self._same_dtype = all(
            e.dtype == m.dtype for e, m in zip(self._pairs[0], self._pairs[1], strict=True)
        )
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
        # ModelEmaV3.update builds both state dicts on every call (about 1 ms per 300 tensors);
        # the tensors are collected once in on_fit_start, the update itself is the same.
        ema_float, model_float, ema_other, model_other = self._pairs
        weight = 1.0 - self.ema.get_decay(state.step)
        with torch.no_grad():
            if ema_float and self._same_dtype:
                torch._foreach_lerp_(ema_float, model_float, weight=weight)
            elif ema_float:  # e.g. a bf16 model: add_ promotes in the kernel, as timm does
                torch._foreach_mul_(ema_float, 1.0 - weight)
                torch._foreach_add_(ema_float, model_float, alpha=weight)
            if ema_other:
                torch._foreach_copy_(ema_other, model_other)

    def eval_model(self, state: TrainState) -> torch.nn.Module:
        return self.ema.module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.ema.module.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            self.ema.module.load_state_dict(state)


def _update_lists(ema: torch.nn.Module, model: torch.nn.Module):
    """The tensors of one EMA update: (ema floats, model floats, ema others, model others).

    The model's own parameters and buffers (``keep_vars``), so the lists stay valid while they
    are updated in place (optimizer steps, batch-norm statistics, ``load_state_dict``); the loop
    does not move the model after ``on_fit_start``.
    """
    pairs: tuple[list, list, list, list] = ([], [], [], [])
    ema_state, model_state = ema.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    for key, ema_v in ema_state.items():
        model_v = model_state[key]
        first = 0 if ema_v.is_floating_point() else 2
        pairs[first].append(ema_v)
        pairs[first + 1].append(model_v)
    return pairs
