"""Saving a run as it trains and resuming it where it stopped, bit for bit.

The fold trainer and ``pretrain-mlm`` both go through :class:`RunCheckpoints`: it saves the
weights, the optimizer, the scheduler, the grad scaler, the hooks' state, the random states and
the loop's counters (:mod:`medalist.training.checkpoint` writes and reads the files), and restores
them into a freshly prepared run. :func:`epoch_batches` then gives the resumed run the rest of the
interrupted epoch in the original order, so it ends where an uninterrupted run ends (bitwise on
the CPU). Checkpoints are taken only on optimizer-step boundaries.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medalist.training.checkpoint import (
    checkpoints,
    clear_checkpoints,
    load_checkpoint,
    read_progress,
    save_checkpoint,
    set_rng_state,
)
from medalist.training.hooks import Hooks, TrainState
from medalist.training.weights import bare_model, load_state_into, saved_keys

log = logging.getLogger(__name__)


@dataclass
class Resumed:
    """What a checkpoint gives back beyond the weights, optimizer and counters it restored.

    Attributes:
        record: the checkpoint's ``progress.json``: the loop's counters and the owner's own
            entries (a fold's best scores, the history), as saved.
        best: the best weights so far (``model``, ``eval``) and their validation ``logits``.
        rng: the random states, for :func:`epoch_batches` to restore at the saved position.
    """

    record: dict
    best: dict
    rng: dict


@dataclass
class FoldResult:
    """The best epoch of a fold: its weights, its validation predictions and its scores.

    A fold's checkpoints hold its best epoch so far, so a resumed fold keeps the epoch an
    uninterrupted one keeps. Under ``saved_keys()`` (LoRA) the state dicts hold those keys alone
    (:func:`snapshot_weights`), the base never copied; they load through
    :func:`~medalist.training.weights.load_state_into`, which takes exactly those keys.
    """

    state_dict: dict
    eval_state_dict: dict | None  # the weights evaluated instead (EMA, SWA), when a hook has them
    best_epoch: int
    scores: dict
    valid_logits: np.ndarray | None
    history: list[dict]
    eval_name: str = "model"  # what scored the validation rows: "model", or the hook's "ema", "swa"

    def checkpoint_parts(self) -> tuple[dict, dict]:
        """What a checkpoint holds of it: tensors (weights, logits) and plain values."""
        weights = {
            "model": self.state_dict,
            "eval": self.eval_state_dict,
            "logits": self.valid_logits,
        }
        record = {
            "best_epoch": self.best_epoch,
            "best_scores": self.scores,
            "best_eval_name": self.eval_name,
            "history": self.history,
        }
        return weights, record

    @classmethod
    def from_checkpoint(cls, resumed: Resumed) -> FoldResult:
        """The best epoch a resumed fold had kept."""
        best, record = resumed.best, resumed.record
        return cls(
            best.get("model", {}),
            best.get("eval"),
            record["best_epoch"],
            record["best_scores"],
            best.get("logits"),
            record["history"],
            record.get("best_eval_name", "model"),
        )


class RunCheckpoints:
    """A run's checkpoints under ``folder``: saved on request and every ``every`` optimizer
    steps, resumed from the newest one saved with the same ``config_hash``.

    Args:
        folder: where ``checkpoint/step-<n>/`` goes; None: nothing is saved or resumed.
        config_hash: what a checkpoint must have been saved with to be resumed (another config's
            is discarded unread); needed with ``folder``.
        every: optimizer steps between checkpoints; 0: only when :meth:`save` is called (the
            owners call it at each epoch end).
        name: the run, for log lines ("fold 0", "pretrain-mlm").
    """

    def __init__(self, folder: Path | None, config_hash: str | None, every: int, name: str):
        if folder is not None and config_hash is None:
            raise ValueError(f"{name}: checkpoints under a folder need the config_hash")
        self.folder, self.config_hash, self.every, self.name = folder, config_hash, every, name

    def save(self, state: TrainState, hooks: Hooks, best: dict, record: dict) -> None:
        """Checkpoint the run at ``state.step`` (on the main process), with the owner's ``best``
        weights and ``record`` (plain values for ``progress.json``)."""
        accelerator = state.accelerator
        if self.folder is None or not accelerator.is_main_process:
            return
        progress = {
            "epoch": state.epoch,
            "step": state.step,
            "batch": state.batch_in_epoch,
            "loss_sum": float(state.loss_sum),
            "loss_count": state.loss_count,
            "bad_steps": state.bad_steps,
            **record,
            "training_hash": self.config_hash,
        }
        save_checkpoint(
            self.folder,
            step=state.step,
            model=bare_model(state.model),
            optimizer=state.optimizer,
            scheduler=state.scheduler,
            scaler=accelerator.scaler,
            hook_states=[h.state_dict() for h in hooks.hooks],
            best=best,
            progress=progress,
        )

    def on_step(self, state: TrainState, save: Callable[[], None]) -> Callable[[], None]:
        """The loop's ``on_step``: calls ``save()`` every ``every`` optimizer steps."""

        def maybe_save() -> None:
            if self.every and state.step % self.every == 0:
                save()

        return maybe_save

    def resume(self, state: TrainState, hooks: Hooks) -> Resumed | None:
        """Load the newest complete checkpoint into the prepared run; None when there is none."""
        found = checkpoints(self.folder) if self.folder is not None else []
        if not found:
            return None
        # The config's hash first: a checkpoint of another config is discarded unread (even if
        # its tensors are damaged); only one of this config is loaded, and checked.
        if read_progress(found[-1]).get("training_hash") != self.config_hash:
            # Made by another config (a changed key, new pseudo labels): resuming would mix runs.
            log.warning(
                "%s: %s was saved by a different training config; starting afresh",
                self.name,
                found[-1],
            )
            state.accelerator.wait_for_everyone()
            if state.accelerator.is_main_process:
                self.clear()
            return None
        ckpt = load_checkpoint(found[-1])
        _restore(state, hooks, ckpt, found[-1])
        log.info(
            "%s: resumed from %s (epoch %d, step %d)",
            self.name,
            found[-1].name,
            state.epoch,
            state.step,
        )
        return Resumed(ckpt["progress"], ckpt["best"], ckpt["trainer"]["rng"])

    def clear(self) -> None:
        """Remove the checkpoints (a finished run needs none)."""
        if self.folder is not None:
            clear_checkpoints(self.folder)


def _restore(state: TrainState, hooks: Hooks, ckpt: dict, source: Path) -> None:
    """Weights, hooks, optimizer, scheduler, grad scaler and counters from a checkpoint."""
    accelerator = state.accelerator
    # A checkpoint made for another model is refused whole, naming it, before anything is copied.
    load_state_into(bare_model(state.model), ckpt["model"], source)
    for index, hook in enumerate(hooks.hooks):
        hook.load_state_dict(ckpt["hooks"].get(index, {}))
    trainer = ckpt["trainer"]
    state.optimizer.load_state_dict(trainer["optimizer"])
    state.scheduler.load_state_dict(trainer["scheduler"])
    if trainer["scaler"] is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(trainer["scaler"])
    p = ckpt["progress"]
    state.epoch, state.step, state.batch_in_epoch = p["epoch"], p["step"], p["batch"]
    state.loss_sum = torch.tensor(p["loss_sum"], device=accelerator.device)
    state.loss_count, state.bad_steps = p["loss_count"], p["bad_steps"]
    accelerator.step = 0  # checkpoints are taken on optimizer-step boundaries


def epoch_batches(
    state: TrainState, loader, rng: dict | None, start_epoch: Callable[[int], None]
) -> Iterator:
    """This epoch's batches; after a resume mid-epoch, the rest of them in the same order.

    Args:
        state: the run; ``state.epoch`` begins, ``state.batch_in_epoch`` batches of it are done.
        loader: the prepared training loader.
        rng: the random states of a checkpoint just resumed from; None otherwise.
        start_epoch: tells the loader (and the dataset, the collate) which epoch begins.
    """
    start_epoch(state.epoch)
    if rng is not None and state.batch_in_epoch == 0:
        set_rng_state(rng)  # before the loader draws its per-epoch seed, as originally
    if state.batch_in_epoch:
        loader = state.accelerator.skip_first_batches(loader, state.batch_in_epoch)
    batches = iter(loader)
    if rng is None or not state.batch_in_epoch:
        return batches
    # The original run drew the epoch's loader seed before this point: draw it here too
    # (the first batch starts the iterator), then restore the random states.
    first = next(batches, None)
    set_rng_state(rng)
    return itertools.chain([] if first is None else [first], batches)


def snapshot_weights(accelerator, model, eval_model) -> tuple[dict, dict | None]:
    """CPU copies of the trained weights and, when they differ, of the evaluated ones: the best
    epoch's, kept through later epochs and saved in each checkpoint. Their keys are the bare
    model's, whether or not it is compiled (:func:`~medalist.training.weights.bare_model`).

    Under ``saved_keys()`` (LoRA) only those keys are copied, as the weight files hold them: the
    base is never copied, into memory or into a checkpoint.
    """

    def copy(module: torch.nn.Module) -> dict:
        unwrapped = bare_model(module)
        keep = saved_keys(unwrapped)
        return {
            k: v.detach().to("cpu", copy=True)
            for k, v in unwrapped.state_dict().items()
            if keep is None or k in keep
        }

    return copy(model), (copy(eval_model) if eval_model is not model else None)
