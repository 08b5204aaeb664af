"""The events of the training loop, and the base class of everything that attaches to them.

A trick is a small :class:`Hook` subclass that overrides the events it needs. The loop calls
every hook at every event through :class:`Hooks` and never names a trick. The events, in order:

- ``on_fit_start(state)``: once per fold, after the model, optimizer and loaders are prepared.
- ``before_batch(state, batch) -> batch``: may rewrite the batch (mixup, cutmix).
- ``per_sample_loss(state, batch, outputs, losses) -> losses``: per-sample losses, shape (batch,)
  (OHEM keeps the hardest).
- ``compute_loss(state, batch, outputs, loss) -> loss``: the reduced loss (R-Drop, flooding).
- ``after_backward(state, batch)``: gradients exist, the optimizer has not stepped (AWP, FGM).
- ``after_step(state)``: after a real optimizer step (not an accumulation micro-step) (EMA).
- ``eval_model(state) -> module | None``: the weights to evaluate and save instead (EMA, SWA).
- ``on_epoch_end(state)``: after the epoch's training, before its evaluation (SWA).
- ``on_fit_end(state)``: once per fold, after the last epoch.

A hook with state of its own (EMA weights, the SWA average) returns it from ``state_dict`` so a
resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class TrainState:
    """What a hook may read (and, where an event says so, change) during a fold's training."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    task: Any
    fold: int
    epoch: int = 0
    step: int = 0  # optimizer steps taken in this fold
    num_epochs: int = 1
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    train_loader: Any = None
    extra: dict = field(default_factory=dict)
    batch_in_epoch: int = 0  # micro-batches of this epoch already trained on
    loss_sum: Any = 0.0  # running sum and count of this epoch's training losses
    loss_count: int = 0
    bad_steps: int = 0  # consecutive skipped (non-finite) steps

    def sample_loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per-sample loss of a batch, times its per-sample ``weight`` when it has one."""
        losses = (self.criterion or self.task.loss)(outputs, batch["target"])
        return losses * batch["weight"] if "weight" in batch else losses

    def forward_loss(self, batch: dict) -> torch.Tensor:
        """A plain forward pass and the mean loss, without hooks (for AWP, FGM and PGD)."""
        return self.sample_loss(self.model(batch["input"]), batch).mean()


class Hook:
    """Base class: every event does nothing."""

    def on_fit_start(self, state: TrainState) -> None:
        pass

    def before_batch(self, state: TrainState, batch: dict) -> dict:
        return batch

    def per_sample_loss(self, state: TrainState, batch: dict, outputs, losses: torch.Tensor):
        return losses

    def compute_loss(self, state: TrainState, batch: dict, outputs, loss: torch.Tensor):
        return loss

    def after_backward(self, state: TrainState, batch: dict) -> None:
        pass

    def after_step(self, state: TrainState) -> None:
        pass

    def eval_model(self, state: TrainState) -> torch.nn.Module | None:
        return None

    def on_epoch_end(self, state: TrainState) -> None:
        pass

    def on_fit_end(self, state: TrainState) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors to put in a resumable checkpoint (EMA weights, SWA average)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Hooks(Hook):
    """Calls a list of hooks in order at each event."""

    def __init__(self, hooks: list[Hook] | None = None):
        self.hooks = list(hooks or [])

    def on_fit_start(self, state):
        for hook in self.hooks:
            hook.on_fit_start(state)

    def before_batch(self, state, batch):
        for hook in self.hooks:
            batch = hook.before_batch(state, batch)
        return batch

    def per_sample_loss(self, state, batch, outputs, losses):
        for hook in self.hooks:
            losses = hook.per_sample_loss(state, batch, outputs, losses)
        return losses

    def compute_loss(self, state, batch, outputs, loss):
        for hook in self.hooks:
            loss = hook.compute_loss(state, batch, outputs, loss)
        return loss

    def after_backward(self, state, batch):
        for hook in self.hooks:
            hook.after_backward(state, batch)

    def after_step(self, state):
        for hook in self.hooks:
            hook.after_step(state)

    def eval_model(self, state):
        chosen = None
        for hook in self.hooks:
            chosen = hook.eval_model(state) or chosen
        return chosen

    def on_epoch_end(self, state):
        for hook in self.hooks:
            hook.on_epoch_end(state)

    def on_fit_end(self, state):
        for hook in self.hooks:
            hook.on_fit_end(state)


@dataclass
class Tricks:
    """What the tricks of a run give the loop: hooks, a criterion and an optional sampler.

    Attributes:
        hooks: the hooks of the enabled tricks.
        criterion: ``(logits, target) -> per-sample loss`` (the task's loss with loss tricks).
        sample_weights: per-row sampling weights of the training set (a balanced sampler).
    """

    hooks: Hooks
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    sample_weights: Any = None

    def make_sampler(self, seed: int):
        if self.sample_weights is None:
            return None
        generator = torch.Generator().manual_seed(seed)
        weights = torch.as_tensor(self.sample_weights, dtype=torch.double)
        return torch.utils.data.WeightedRandomSampler(weights, len(weights), generator=generator)
