"""The NaN guard: an optimizer step whose loss or gradient is not finite changes nothing.

Such a step is skipped whole (no optimizer, scheduler or hook update), so the run continues as if
it had never seen those batches; ``max_bad_steps`` bad steps in a row stop it with
:class:`~medalist.errors.TrainingDivergedError`. The fold loop and ``pretrain-mlm`` both step
through :meth:`StepGuard.step` (inside :func:`medalist.training.loop.train_one_epoch`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from medalist.config import Config
from medalist.errors import TrainingDivergedError
from medalist.training.hooks import TrainState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepGuard:
    """How a run clips its gradients and how many bad steps in a row it tolerates.

    Attributes:
        name: what trains, for messages ("fold 0", "pretrain-mlm").
        max_grad_norm: the gradient clipping norm; None: the norm is only measured.
        max_bad_steps: bad optimizer steps in a row that stop the run.
        mixed_precision: accelerate's precision; under fp16 the grad scaler owns overflows.
        section: the config section whose learning rate the error advises lowering.
    """

    name: str
    max_grad_norm: float | None
    max_bad_steps: int
    mixed_precision: str = "no"
    section: str = "train"

    @classmethod
    def of(cls, cfg: Config, name: str) -> StepGuard:
        """The guard the ``train`` section configures."""
        train = cfg.train
        return cls(name, train.max_grad_norm, train.max_bad_steps, train.mixed_precision)

    def step(self, state: TrainState, bad_loss: torch.Tensor) -> bool:
        """Clip the gradients, then step the optimizer and the scheduler unless the step is bad.

        Args:
            state: the run; its model holds the accumulated gradients.
            bad_loss: a boolean device tensor, True when a micro-batch of this step had a
                non-finite loss; cleared here for the next step.

        Returns:
            Whether the loss and the gradient norm were finite.
        """
        finite = _step_is_finite(state, self, bad_loss)
        bad_loss.zero_()
        if finite or self.mixed_precision == "fp16":
            state.optimizer.step()  # under fp16 the scaler skips a step it finds non-finite
        if finite:
            state.scheduler.step()
        return finite

    def count_bad(self, state: TrainState) -> None:
        """Count a skipped step; raise TrainingDivergedError at ``max_bad_steps`` in a row."""
        state.bad_steps += 1
        log.warning(
            "%s epoch %s: non-finite loss or gradient; step skipped (%d in a row)",
            self.name,
            state.epoch,
            state.bad_steps,
        )
        if state.bad_steps < self.max_bad_steps:
            return
        precision = self.mixed_precision
        raise TrainingDivergedError(
            f"{state.bad_steps} optimizer steps in a row had a non-finite loss or gradient "
            f"(train.max_bad_steps={self.max_bad_steps}); lower {self.section}.lr or check the "
            "data"
            + (f", or try train.mixed_precision=no (now {precision})" if precision != "no" else "")
        )


def _step_is_finite(state: TrainState, guard: StepGuard, bad_loss: torch.Tensor) -> bool:
    """Clip (or just measure) the gradient norm; False when the loss or the norm is not finite.

    The loop's one host sync per optimizer step, and a needed one: the host decides whether the
    step runs. Under fp16 the grad scaler owns overflow handling (it skips the step and lowers the
    scale), so only a non-finite loss counts as bad there.
    """
    accelerator, params = state.accelerator, state.model.parameters()
    if guard.max_grad_norm:
        norm = accelerator.clip_grad_norm_(params, guard.max_grad_norm)
    else:
        accelerator.unscale_gradients()
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if guard.mixed_precision == "fp16":
        return not bool(bad_loss)
    return bool(torch.isfinite(norm) & ~bad_loss)
