"""The events of the training loop, and the base class of everything that attaches to them.

A trick is a small :class:`Hook` subclass that overrides the events it needs. The loop calls
every hook at every event through :class:`Hooks` and never names a trick. The events, in order:

- ``on_fit_start(state)``: once per fold, after the model, optimizer and loaders are prepared.
- ``before_batch(state, batch) -> batch``: may rewrite the batch (mixup, cutmix).
- ``per_sample_loss(state, batch, outputs, losses) -> losses``: per-sample losses, shape (batch,)
  (OHEM keeps the hardest).
- ``compute_loss(state, batch, outputs, loss) -> loss``: the reduced loss (R-Drop, flooding).
- ``after_backward(state, batch)``: gradients exist, the optimizer has not stepped (AWP, FGM,
  PGD). An adversarial pass computes the loss again with :meth:`TrainState.forward_loss`, so the
  two loss events run once more per pass, at the perturbed weights: they must not assume they
  run once per micro-batch.
- ``after_step(state)``: after a real optimizer step (not an accumulation micro-step) (EMA).
- ``eval_model(state) -> module | None``: the weights to evaluate and save instead (EMA, SWA),
  as ``fold{k}/<weights_name>.safetensors``; the fold predicts with them (or with snapshots of
  them, in a snapshot ensemble).
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
    hooks: Hook | None = None  # whose loss events shape the training loss (set by the loop)

    def next_epoch(self) -> None:
        """Move the counters on to the next epoch (its first batch, no loss summed yet)."""
        self.epoch += 1
        self.batch_in_epoch, self.loss_count = 0, 0
        self.loss_sum = torch.zeros((), device=self.accelerator.device)

    def sample_loss(self, outputs: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per-sample loss of a batch, times its per-sample ``weight`` when it has one."""
        losses = (self.criterion or self.task.loss)(outputs, batch["target"])
        return losses * batch["weight"] if "weight" in batch else losses

    def forward_loss(self, batch: dict) -> torch.Tensor:
        """The training loss of a batch at the current weights.

        A forward pass, the per-sample losses, then the ``per_sample_loss`` and ``compute_loss``
        events of :attr:`hooks` (OHEM, R-Drop, flooding, ...). The loop's step and the
        adversarial passes (AWP, FGM, PGD) both call this, so a perturbed pass optimises the
        same loss as the step it belongs to.
        """
        outputs = self.model(batch["input"])
        losses = self.sample_loss(outputs, batch)
        if self.hooks is None:
            return losses.mean()
        losses = self.hooks.per_sample_loss(self, batch, outputs, losses)
        return self.hooks.compute_loss(self, batch, outputs, losses.mean())


class Hook:
    """Base class: every event does nothing.

    Attributes:
        weights_name: the name of the weights :meth:`eval_model` returns, and of their file
            (``ema`` gives ``ema.safetensors``); None: the class name in lower case.
    """

    weights_name: str | None = None

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

    def evaluated(self, state: TrainState) -> tuple[str, torch.nn.Module] | None:
        """:meth:`eval_model` with its name (see ``weights_name``), or None."""
        module = self.eval_model(state)
        if module is None:
            return None
        return self.weights_name or type(self).__name__.lower(), module

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
        found = self.evaluated(state)
        return None if found is None else found[1]

    def evaluated(self, state):
        """The last hook's evaluated weights (SWA's after EMA's), with their name."""
        chosen = None
        for hook in self.hooks:
            chosen = hook.evaluated(state) or chosen
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
