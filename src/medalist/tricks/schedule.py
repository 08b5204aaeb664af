"""Schedule tricks: snapshot ensembles over cosine restarts, and a switch from AdamW to SGD.

- Snapshot ensembles: Huang et al., "Snapshot ensembles: train 1, get M for free" (ICLR 2017),
  on the cosine-with-restarts schedule of Loshchilov and Hutter, "SGDR" (ICLR 2017): with
  ``restarts: r`` the schedule has r + 1 cycles (2-5) and, with ``snapshot_ensemble`` on (the
  default), the weights evaluated at the end of each cycle (the EMA's or SWA's when those are
  on, else the model's) are saved as ``fold{k}/snapshot{c}.safetensors``. The fold's OOF and
  test predictions are then the mean of the snapshots' predictions.
- AdamW to SGD: Keskar and Socher, "Improving generalization performance by switching from Adam
  to SGD" (2017): from epoch ``sgd_epoch`` the optimizer is SGD with momentum 0.9 at ``sgd_lr``
  (default 10x the AdamW lr), following the same schedule.
"""

from __future__ import annotations

import logging
import math

import torch

from medalist.config import Config
from medalist.errors import ConfigError
from medalist.training.hooks import Hook, TrainState
from medalist.training.weights import bare_model, save_weights

log = logging.getLogger(__name__)


def snapshot_names(cfg: Config) -> list[str]:
    """The files of a fold's snapshot ensemble, one per cycle; none when it is off."""
    schedule = cfg.tricks.schedule
    if not (schedule.restarts and schedule.snapshot_ensemble):
        return []
    return [f"snapshot{cycle}.safetensors" for cycle in range(schedule.restarts + 1)]


class ScheduleTricks(Hook):
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.cycles = cfg.tricks.schedule.restarts + 1
        self.snapshots = snapshot_names(cfg)
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
        ends = [
            round(total * (warmup + (1 - warmup) * (c + 1) / self.cycles))
            for c in range(self.cycles)
        ]
        if self.snapshots and (len(set(ends)) < self.cycles or ends[0] < 1):
            raise ConfigError(
                f"tricks.schedule.restarts: {self.cycles} cycles need {self.cycles} distinct "
                f"cycle ends, and the fold has only {total} optimizer steps; lower the restarts"
            )
        self.cycle_ends = {step: cycle for cycle, step in enumerate(ends)} if self.snapshots else {}

    def after_step(self, state: TrainState) -> None:
        cycle = self.cycle_ends.get(state.step)
        if cycle is not None:
            self._save_snapshot(state, cycle)

    def on_fit_end(self, state: TrainState) -> None:
        # Skipped (non-finite) steps leave the fold short of the last cycle ends: the weights
        # it ends with close those cycles, so the ensemble always has its r + 1 members.
        for step, cycle in self.cycle_ends.items():
            if step > state.step:
                log.warning(
                    "cycle %d ends at step %d, not %d (skipped steps)", cycle, state.step, step
                )
                self._save_snapshot(state, cycle)

    def _save_snapshot(self, state: TrainState, cycle: int) -> None:
        """The weights evaluated now (a hook's, as the loop evaluates them, else the model's)."""
        folder = state.extra.get("fold_dir")
        if folder is None or not state.accelerator.is_main_process:
            return
        found = state.hooks.evaluated(state) if state.hooks is not None else None
        name, module = found or ("model", bare_model(state.model))
        meta = {
            "fold": state.fold,
            "cycle": cycle,
            "step": state.step,
            "weights": name,
            "oof": True,
        }
        save_weights(module, folder / self.snapshots[cycle], meta)
        log.info("fold %s: snapshot of cycle %d (%s weights) saved", state.fold, cycle, name)

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
