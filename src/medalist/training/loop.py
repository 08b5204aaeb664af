"""The training loop: one fold, built on accelerate, with hooks at named events.

The loop knows neither the task nor the modality nor any trick by name: it asks the task for the
loss and the activation, the modality for datasets and the model, and calls the hooks. A step
whose loss or gradient is not finite is skipped (:mod:`~medalist.training.guard`); a fold saves
its progress and resumes through :mod:`~medalist.training.resume`.

What a fold costs is in its log: its trainable and total parameter counts when it starts (LoRA
trains a small share), and in every epoch's row (``log.csv``) ``trainable_params`` and
``peak_memory_mb``: on CUDA the most memory allocated in the fold so far, on the CPU the
process's peak resident size so far (:func:`~medalist.training.fold_setup.peak_memory_mb`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medalist.config import Config
from medalist.tasks import Task
from medalist.training.fold_setup import (
    memory_scope,
    parameter_counts,
    peak_memory_mb,
    prepare_fold,
    reset_peak_memory,
)
from medalist.training.guard import StepGuard
from medalist.training.hooks import Hook, Hooks, TrainState, Tricks
from medalist.training.resume import FoldResult, RunCheckpoints, epoch_batches, snapshot_weights
from medalist.training.runtime import bar_off, evaluate, make_accelerator
from medalist.training.tracking import format_row

log = logging.getLogger(__name__)


def train_one_epoch(
    state: TrainState,
    loader,
    hooks: Hook,
    cfg: Config,
    bar,
    on_step: Callable[[], None] | None = None,
    guard: StepGuard | None = None,
) -> float:
    """One pass over ``loader``; returns the mean training loss of the epoch.

    A step whose loss or gradient is not finite is skipped whole: no optimizer, scheduler or hook
    update, as if its batches had never been seen (``guard``, a :class:`StepGuard`; None: the one
    ``cfg.train`` configures). ``on_step()`` runs after every real optimizer step (checkpoints).
    The only host sync of a micro-batch is the finiteness check on optimizer steps; the running
    loss shown on the bar is read (a sync) only when the bar is shown.
    """
    accelerator, model, optimizer = state.accelerator, state.model, state.optimizer
    guard = guard or StepGuard.of(cfg, f"fold {state.fold}")
    model.train()
    state.hooks = hooks  # forward_loss runs their loss events, for the step and adversarial passes
    bad_loss = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    shown = not bar.disable
    for batch in loader:
        batch = hooks.before_batch(state, batch)
        with accelerator.accumulate(model):
            loss = state.forward_loss(batch)
            bad_loss |= ~torch.isfinite(loss.detach())
            accelerator.backward(loss)
            hooks.after_backward(state, batch)
            finite = guard.step(state, bad_loss) if accelerator.sync_gradients else True
            optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += 1
        if finite:
            state.loss_sum += loss.detach().float()
            state.loss_count += 1
        if accelerator.sync_gradients:
            if not finite:
                guard.count_bad(state)
            elif not accelerator.optimizer_step_was_skipped:
                state.bad_steps = 0
                state.step += 1
                hooks.after_step(state)
                if on_step is not None:
                    on_step()
        bar.update(1)
        if shown and bar.n % 10 == 0 and state.loss_count:
            bar.set_postfix(loss=f"{(state.loss_sum / state.loss_count).item():.4f}", refresh=False)
    return (state.loss_sum / max(state.loss_count, 1)).item()


class FoldTrainer:
    """Trains one fold: prepares everything, resumes from a checkpoint, runs the epochs.

    Args:
        cfg: the resolved config.
        task: the task.
        model: a freshly built model (its initial weights are replaced on resume).
        train_set, valid_set, valid_targets: the fold's data (no validation for a full fit).
        fold: the fold number (-1: full fit).
        tricks: hooks, criterion and sampler of the enabled tricks (None: none).
        accelerator: shared between folds (None: one is made).
        folder: the fold's output folder; checkpoints go under it (None: no checkpoints).
        config_hash: what a checkpoint must have been saved with to be resumed (the train
            stage's :func:`medalist.layout.training_hash`); needed with ``folder``.
        on_epoch: called with each epoch's row (as in ``log.csv``) on the main process: the
            experiment trackers (:mod:`medalist.training.tracking`).
    """

    def __init__(
        self,
        cfg: Config,
        task: Task,
        model: torch.nn.Module,
        train_set: Dataset,
        valid_set: Dataset | None,
        valid_targets: np.ndarray | None,
        *,
        fold: int,
        tricks: Tricks | None = None,
        accelerator: Accelerator | None = None,
        folder: Path | None = None,
        config_hash: str | None = None,
        on_epoch: Callable[[dict], None] | None = None,
    ):
        every = cfg.train.checkpoint_every
        self.checkpoints = RunCheckpoints(folder, config_hash, every, f"fold {fold}")
        self.cfg, self.task, self.fold, self.on_epoch = cfg, task, fold, on_epoch
        self.train_set, self.valid_targets = train_set, valid_targets
        tricks = tricks or Tricks(Hooks(), task.loss)
        self.hooks = tricks.hooks
        self.accelerator = accelerator = accelerator or make_accelerator(cfg)
        reset_peak_memory(accelerator.device)  # the fold's peak, its model and batches included
        prepared = prepare_fold(cfg, model, train_set, valid_set, tricks, accelerator)
        self.model, self.optimizer, self.loader, self.scheduler, self.valid_loader = prepared
        self.trainable, self.total = parameter_counts(self.model)
        self.state = TrainState(
            accelerator,
            self.model,
            self.optimizer,
            self.scheduler,
            task,
            fold,
            num_epochs=cfg.train.epochs,
            criterion=tricks.criterion,
            train_loader=self.loader,
            extra={"fold_dir": folder},
        )
        self.best = FoldResult({}, None, -1, {}, None, [])

    def save(self) -> None:
        """Checkpoint the fold as it is now, its best epoch so far included."""
        weights, record = self.best.checkpoint_parts()
        record["pseudo_round"] = self.cfg.train.pseudo_round
        self.checkpoints.save(self.state, self.hooks, weights, record)

    def resume(self) -> dict | None:
        """Load the newest complete checkpoint; returns its random states to restore later."""
        resumed = self.checkpoints.resume(self.state, self.hooks)
        if resumed is None:
            return None
        self.best = FoldResult.from_checkpoint(resumed)
        return resumed.rng

    def _start_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)

    def fit(self) -> FoldResult:
        cfg, state, hooks = self.cfg, self.state, self.hooks
        if self.accelerator.is_main_process:
            log.info(
                "fold %s: %s of %s parameters train (%.2f%%)",
                self.fold,
                f"{self.trainable:,}",
                f"{self.total:,}",
                100 * self.trainable / max(self.total, 1),
            )
        hooks.on_fit_start(state)
        rng = self.resume()
        on_step = self.checkpoints.on_step(state, self.save)
        show = cfg.train.progress and self.accelerator.is_main_process
        while state.epoch < cfg.train.epochs:
            started = time.perf_counter()
            batches = epoch_batches(state, self.loader, rng, self._start_epoch)
            rng = None
            desc = f"fold {self.fold} epoch {state.epoch + 1}/{cfg.train.epochs}"
            total, done = len(self.loader), state.batch_in_epoch
            with tqdm(
                total=total, initial=done, desc=desc, disable=bar_off(show), leave=False
            ) as bar:
                train_loss = train_one_epoch(state, batches, hooks, cfg, bar, on_step)
            hooks.on_epoch_end(state)
            self._end_epoch(train_loss, started)
            state.next_epoch()
            self.save()
        hooks.on_fit_end(state)
        peak = peak_memory_mb(self.accelerator.device)
        if self.accelerator.is_main_process and peak is not None:
            scope = memory_scope(self.accelerator.device)
            log.info("fold %s: peak memory %.0f MiB (%s)", self.fold, peak, scope)
        return self.best

    def _end_epoch(self, train_loss: float, started: float) -> None:
        """Evaluate the epoch, keep it if it is the best (or the last one kept), log its row."""
        cfg, state, main = self.cfg, self.state, self.task.main_metric
        row = {
            "fold": self.fold,
            "epoch": state.epoch,
            "step": state.step,
            "train_loss": train_loss,
            "lr": self.scheduler.get_last_lr()[0],
        }
        eval_name, eval_model = self.hooks.evaluated(state) or ("model", self.model)
        scores, logits = {}, None
        if self.valid_loader is not None:
            scores, logits = evaluate(
                self.task, eval_model, self.valid_loader, self.valid_targets, self.accelerator
            )
            row.update(scores)
        last = state.epoch == cfg.train.epochs - 1
        improved = (
            self.valid_loader is not None
            and cfg.train.keep == "best"
            and main.better(scores[main.name], self.best.scores.get(main.name))
        )
        if improved or ((self.valid_loader is None or cfg.train.keep == "last") and last):
            weights = snapshot_weights(self.accelerator, self.model, eval_model)
            self.best = FoldResult(
                *weights, state.epoch, scores, logits, self.best.history, eval_name
            )
        row["seconds"] = time.perf_counter() - started
        peak = peak_memory_mb(self.accelerator.device)
        row["peak_memory_mb"] = None if peak is None else round(peak)  # whole MiB
        row["trainable_params"] = self.trainable
        self.best.history.append(row)
        if self.accelerator.is_main_process:
            # The trainable count is the fold's, printed when it starts: log.csv alone repeats it.
            log.info(format_row({k: v for k, v in row.items() if k != "trainable_params"}))
            if self.on_epoch is not None:
                self.on_epoch(row)


def fit_fold(
    cfg: Config, task: Task, model, train_set, valid_set, valid_targets, **options
) -> FoldResult:
    """Train one fold and keep the epoch with the best main metric (the last for a full fit).

    ``options`` are :class:`FoldTrainer`'s keyword arguments (``fold`` is required).
    """
    return FoldTrainer(cfg, task, model, train_set, valid_set, valid_targets, **options).fit()
