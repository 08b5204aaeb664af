"""Schedule tricks: snapshot ensembles over cosine restarts, and a switch from AdamW to SGD.

- Snapshot ensembles: Huang et al., "Snapshot ensembles: train 1, get M for free" (ICLR 2017),
  on the cosine-with-restarts schedule of Loshchilov and Hutter, "SGDR" (ICLR 2017): with
  ``restarts: r`` the schedule has r + 1 cycles and the weights at the end of each cycle are
  saved as ``fold{k}/snapshot{c}.safetensors`` (2-5 cycles).
- AdamW to SGD: Keskar and Socher, "Improving generalization performance by switching from Adam
  to SGD" (2017): from epoch ``sgd_epoch`` the optimizer is SGD with momentum 0.9 at ``sgd_lr``
  (default 10x the AdamW lr), following the same schedule.
"""

from __future__ import annotations

import logging
import math

import torch

from medalist.config import Config
from medalist.hooks import Hook, TrainState
from medalist.weights import save_weights

log = logging.getLogger(__name__)


class ScheduleTricks(Hook):
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.cycles = cfg.tricks.schedule.restarts + 1
        self.cycle_ends: dict[int, int] = {}
        self.switched = False

    def on_fit_start(self, state: TrainState) -> None:
        self._state = state
        # Cycles split the steps after warmup evenly; a snapshot is taken at each cycle's end,
        # where the learning rate reaches its minimum.
        total = (
            math.ceil(len(state.train_loader) / self.cfg.train.grad_accum) * self.cfg.train.epochs
        )
        warmup = self.cfg.train.warmup_ratio
        ends = (
            round(total * (warmup + (1 - warmup) * (c + 1) / self.cycles))
            for c in range(self.cycles)
        )
        self.cycle_ends = (
            {step: cycle for cycle, step in enumerate(ends)} if self.cycles > 1 else {}
        )

    def after_step(self, state: TrainState) -> None:
        cycle = self.cycle_ends.get(state.step)
        folder = state.extra.get("fold_dir")
        if cycle is not None and folder is not None and state.accelerator.is_main_process:
            model = state.accelerator.unwrap_model(state.model)
            save_weights(model, folder / f"snapshot{cycle}.safetensors", {"cycle": cycle})
            log.info("snapshot of cycle %d saved", cycle)

    def on_epoch_end(self, state: TrainState) -> None:
        switch = self.cfg.tricks.schedule.sgd_epoch
        if switch is not None and state.epoch + 1 == switch:
            self._switch_to_sgd(state)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"switched": torch.tensor(self.switched)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        # A resumed run past the switch needs SGD before its optimizer state is loaded.
        if state and bool(state["switched"]) and not self.switched:
            self._switch_to_sgd(self._state)

    def _switch_to_sgd(self, state: TrainState) -> None:
        self.switched = True
        lr = self.cfg.tricks.schedule.sgd_lr or 10 * self.cfg.train.lr
        wrapped = state.optimizer  # accelerate's wrapper; its .optimizer is the torch optimizer
        scheduler = getattr(state.scheduler, "scheduler", state.scheduler)
        # Each group keeps its ratio to the base rate (layer-wise decay, head rate).
        scales = [base / self.cfg.train.lr for base in scheduler.base_lrs]
        groups = [
            {"params": g["params"], "weight_decay": g["weight_decay"], "lr": lr * scale}
            for g, scale in zip(wrapped.optimizer.param_groups, scales, strict=True)
        ]
        sgd = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
        wrapped.optimizer = sgd
        scheduler.optimizer = sgd
        scheduler.base_lrs = [g["lr"] for g in sgd.param_groups]
        for group, base, rule in zip(
            sgd.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * rule(scheduler.last_epoch)
        log.info("optimizer switched from AdamW to SGD (lr %.2e) at epoch %d", lr, state.epoch + 1)
