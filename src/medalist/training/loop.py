"""The training loop: one fold, built on accelerate, with hooks at named events.

The loop knows neither the task nor the modality nor any trick by name: it asks the task for the
loss and the activation, the modality for datasets and the model, and calls the hooks.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medalist.config import Config
from medalist.errors import TrainingDivergedError
from medalist.tasks import Task
from medalist.training.checkpoint import (
    checkpoints,
    clear_checkpoints,
    load_checkpoint,
    read_progress,
    save_checkpoint,
    set_rng_state,
)
from medalist.training.hooks import Hook, Hooks, TrainState, Tricks
from medalist.training.optim import build_optimizer, build_scheduler
from medalist.training.runtime import bar_off, make_accelerator, make_loader, predict_logits
from medalist.training.syncbn import sync_batch_norm
from medalist.training.weights import load_state_into

log = logging.getLogger(__name__)


@dataclass
class FoldResult:
    """The best epoch of a fold: its weights, its validation predictions and its scores."""

    state_dict: dict
    eval_state_dict: dict | None  # the weights evaluated instead (EMA, SWA), when a hook has them
    best_epoch: int
    scores: dict
    valid_logits: np.ndarray | None
    history: list[dict]
    eval_name: str = "model"  # what scored the validation rows: "model", or the hook's "ema", "swa"


def _step_is_finite(state: TrainState, cfg: Config, bad_loss: torch.Tensor) -> bool:
    """Clip (or just measure) the gradient norm; False when the loss or the norm is not finite.

    The loop's one host sync per optimizer step, and a needed one: a step with a non-finite
    loss or gradient must be skipped whole (optimizer, scheduler, EMA), which the host decides.
    Under fp16 the grad scaler owns overflow handling (it skips the step and lowers the scale),
    so only a non-finite loss counts as bad there.
    """
    accelerator, params = state.accelerator, state.model.parameters()
    if cfg.train.max_grad_norm:
        norm = accelerator.clip_grad_norm_(params, cfg.train.max_grad_norm)
    else:
        accelerator.unscale_gradients()
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if cfg.train.mixed_precision == "fp16":
        return not bool(bad_loss)
    return bool(torch.isfinite(norm) & ~bad_loss)


def _count_bad_step(state: TrainState, cfg: Config) -> None:
    state.bad_steps += 1
    log.warning(
        "fold %s epoch %s: non-finite loss or gradient; step skipped (%d in a row)",
        state.fold,
        state.epoch,
        state.bad_steps,
    )
    if state.bad_steps >= cfg.train.max_bad_steps:
        raise TrainingDivergedError(
            f"{state.bad_steps} optimizer steps in a row had a non-finite loss or gradient "
            f"(train.max_bad_steps={cfg.train.max_bad_steps}); lower train.lr or check the data"
            + (
                f", or try train.mixed_precision=no (now {cfg.train.mixed_precision})"
                if cfg.train.mixed_precision != "no"
                else ""
            )
        )


def train_one_epoch(
    state: TrainState, loader, hooks: Hook, cfg: Config, bar, on_step=None
) -> float:
    """One pass over ``loader``; returns the mean training loss of the epoch.

    A step whose loss or gradient is not finite is skipped whole: no optimizer, scheduler or
    hook update (R5). ``on_step()`` runs after every real optimizer step (checkpoints). The only
    host sync of a micro-batch is the finiteness check on optimizer steps; the running loss
    shown on the bar is read (a sync) only when the bar is shown.
    """
    accelerator, model, optimizer = state.accelerator, state.model, state.optimizer
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
            finite = True
            if accelerator.sync_gradients:
                finite = _step_is_finite(state, cfg, bad_loss)
                bad_loss.zero_()
                if finite or cfg.train.mixed_precision == "fp16":
                    optimizer.step()  # under fp16 the scaler skips a step it finds non-finite
                if finite:
                    state.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += 1
        if finite:
            state.loss_sum += loss.detach().float()
            state.loss_count += 1
        if accelerator.sync_gradients:
            if not finite:
                _count_bad_step(state, cfg)
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


def _evaluate(state: TrainState, model, loader, targets: np.ndarray) -> tuple[dict, np.ndarray]:
    """Scores (with the plain task loss as ``valid_loss``) and logits on the validation rows."""
    _, logits = predict_logits(model, loader, state.accelerator)
    logits_t = torch.from_numpy(logits)
    scores = state.task.score(targets, state.task.activate(logits_t).numpy())
    valid_loss = state.task.loss(logits_t, torch.from_numpy(targets)).mean().item()
    return {"valid_loss": valid_loss, **scores}, logits


class FoldTrainer:
    """Trains one fold: prepares everything, resumes from a checkpoint, runs the epochs.

    Args:
        cfg: the resolved config.
        task: the task.
        model: a freshly built model (its initial weights are replaced on resume).
        train_set, valid_set, valid_targets: the fold's data (no validation for a full fit).
        fold: the fold number (-1: full fit).
        tricks: hooks, criterion and sampler of the enabled tricks.
        accelerator: shared between folds.
        folder: the fold's output folder; checkpoints go under it (None: no checkpoints).
        config_hash: what a checkpoint must have been saved with to be resumed (the train
            stage's :func:`medalist.training.stage.training_hash`); needed with ``folder``.
        on_epoch: called with each epoch's row (as in ``log.csv``) on the main process: the
            experiment trackers (:mod:`medalist.training.tracking`).
    """

    def __init__(
        self,
        cfg,
        task,
        model,
        train_set,
        valid_set,
        valid_targets,
        *,
        fold,
        tricks,
        accelerator,
        folder=None,
        config_hash: str | None = None,
        on_epoch=None,
    ):
        if folder is not None and config_hash is None:
            raise ValueError("FoldTrainer: checkpoints under a folder need the config_hash")
        self.cfg, self.task, self.fold, self.folder = cfg, task, fold, folder
        self.config_hash = config_hash
        self.on_epoch = on_epoch
        self.train_set, self.valid_targets = train_set, valid_targets
        self.hooks = tricks.hooks
        self.accelerator = accelerator
        loader = make_loader(
            train_set,
            cfg.train.batch_size,
            shuffle=True,
            cfg=cfg,
            sampler=tricks.make_sampler(cfg.train.seed),
        )
        if cfg.train.sync_bn and accelerator.num_processes > 1:
            model = sync_batch_norm(model, accelerator.device)  # same parameters, same keys
        optimizer = build_optimizer(model.to(accelerator.device), cfg)
        scheduler = build_scheduler(optimizer, cfg, len(loader), accelerator.num_processes)
        self.model, self.optimizer, self.loader, self.scheduler = accelerator.prepare(
            model, optimizer, loader, scheduler
        )
        self.valid_loader = None
        if valid_set is not None:
            eval_batch = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
            self.valid_loader = accelerator.prepare(
                make_loader(valid_set, eval_batch, shuffle=False, cfg=cfg)
            )
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

    # -- checkpoints ------------------------------------------------------------------------

    def save(self) -> None:
        if self.folder is None or not self.accelerator.is_main_process:
            return
        state = self.state
        save_checkpoint(
            self.folder,
            step=state.step,
            model=self.accelerator.unwrap_model(self.model),
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.accelerator.scaler,
            hook_states=[h.state_dict() for h in self.hooks.hooks],
            best={
                "model": self.best.state_dict,
                "eval": self.best.eval_state_dict,
                "logits": self.best.valid_logits,
            },
            progress={
                "epoch": state.epoch,
                "step": state.step,
                "batch": state.batch_in_epoch,
                "loss_sum": float(state.loss_sum),
                "loss_count": state.loss_count,
                "bad_steps": state.bad_steps,
                "best_epoch": self.best.best_epoch,
                "best_scores": self.best.scores,
                "best_eval_name": self.best.eval_name,
                "history": self.best.history,
                "training_hash": self.config_hash,
                "pseudo_round": self.cfg.train.pseudo_round,
            },
        )

    def maybe_save_step(self) -> None:
        every = self.cfg.train.checkpoint_every
        if every and self.state.step % every == 0:
            self.save()

    def resume(self) -> dict | None:
        """Load the newest complete checkpoint; returns its random states to restore later."""
        found = checkpoints(self.folder) if self.folder is not None else []
        if not found:
            return None
        # The config's hash first: a checkpoint of another config is discarded unread (even if
        # its tensors are damaged); only one of this config is loaded, and checked.
        if read_progress(found[-1]).get("training_hash") != self.config_hash:
            # Made by another config (a changed key, new pseudo labels): resuming would mix runs.
            log.warning(
                "fold %s: %s was saved by a different training config; training the fold afresh",
                self.fold,
                found[-1],
            )
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                clear_checkpoints(self.folder)
            return None
        ckpt = load_checkpoint(found[-1])
        load_weights_into(self.accelerator.unwrap_model(self.model), ckpt["model"], found[-1])
        for index, hook in enumerate(self.hooks.hooks):
            hook.load_state_dict(ckpt["hooks"].get(index, {}))
        trainer = ckpt["trainer"]
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        if trainer["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(trainer["scaler"])
        p, state = ckpt["progress"], self.state
        state.epoch, state.step, state.batch_in_epoch = p["epoch"], p["step"], p["batch"]
        state.loss_sum = torch.tensor(p["loss_sum"], device=self.accelerator.device)
        state.loss_count, state.bad_steps = p["loss_count"], p["bad_steps"]
        best = ckpt["best"]
        self.best = FoldResult(
            best.get("model", {}),
            best.get("eval"),
            p["best_epoch"],
            p["best_scores"],
            best.get("logits"),
            p["history"],
            p.get("best_eval_name", "model"),
        )
        self.accelerator.step = 0  # checkpoints are taken on optimizer-step boundaries
        log.info(
            "fold %s: resumed from %s (epoch %d, step %d)",
            self.fold,
            found[-1].name,
            state.epoch,
            state.step,
        )
        return trainer["rng"]

    # -- the epochs ---------------------------------------------------------------------------

    def _epoch_loader(self, rng: dict | None):
        """This epoch's batches; after a mid-epoch resume, the rest of them in the same order."""
        state = self.state
        self.loader.set_epoch(state.epoch)
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(state.epoch)
        if rng is not None and state.batch_in_epoch == 0:
            set_rng_state(rng)  # before the loader draws its per-epoch seed, as originally
        loader = self.loader
        if state.batch_in_epoch:
            loader = self.accelerator.skip_first_batches(self.loader, state.batch_in_epoch)
        batches = iter(loader)
        if rng is None or not state.batch_in_epoch:
            return batches
        # The original run drew the epoch's loader seed before this point: draw it here too
        # (the first batch starts the iterator), then restore the random states.
        first = next(batches, None)
        set_rng_state(rng)
        return itertools.chain([] if first is None else [first], batches)

    def fit(self) -> FoldResult:
        cfg, state, hooks, main = self.cfg, self.state, self.hooks, self.task.main_metric
        hooks.on_fit_start(state)
        rng = self.resume()
        show = cfg.train.progress and self.accelerator.is_main_process
        while state.epoch < cfg.train.epochs:
            started = time.perf_counter()
            batches = self._epoch_loader(rng)
            rng = None
            desc = f"fold {self.fold} epoch {state.epoch + 1}/{cfg.train.epochs}"
            with tqdm(
                total=len(self.loader),
                initial=state.batch_in_epoch,
                desc=desc,
                disable=bar_off(show),
                leave=False,
            ) as bar:
                train_loss = train_one_epoch(state, batches, hooks, cfg, bar, self.maybe_save_step)
            hooks.on_epoch_end(state)
            row = {
                "fold": self.fold,
                "epoch": state.epoch,
                "step": state.step,
                "train_loss": train_loss,
                "lr": self.scheduler.get_last_lr()[0],
            }
            eval_name, eval_model = hooks.evaluated(state) or ("model", self.model)
            scores, logits = {}, None
            if self.valid_loader is not None:
                scores, logits = _evaluate(state, eval_model, self.valid_loader, self.valid_targets)
                row.update(scores)
            last = state.epoch == cfg.train.epochs - 1
            improved = (
                self.valid_loader is not None
                and cfg.train.keep == "best"
                and main.better(scores[main.name], self.best.scores.get(main.name))
            )
            if improved or ((self.valid_loader is None or cfg.train.keep == "last") and last):
                weights = _snapshots(self.accelerator, self.model, eval_model)
                self.best = FoldResult(
                    *weights, state.epoch, scores, logits, self.best.history, eval_name
                )
            row["seconds"] = time.perf_counter() - started
            self.best.history.append(row)
            if self.accelerator.is_main_process:
                log.info(_format_row(row))
                if self.on_epoch is not None:
                    self.on_epoch(row)
            state.epoch += 1
            state.batch_in_epoch, state.loss_count = 0, 0
            state.loss_sum = torch.zeros((), device=self.accelerator.device)
            self.save()
        hooks.on_fit_end(state)
        return self.best


def fit_fold(
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
    folder=None,
    config_hash: str | None = None,
    on_epoch=None,
) -> FoldResult:
    """Train one fold and keep the epoch with the best main metric (the last for a full fit)."""
    trainer = FoldTrainer(
        cfg,
        task,
        model,
        train_set,
        valid_set,
        valid_targets,
        fold=fold,
        tricks=tricks or Tricks(Hooks(), task.loss),
        accelerator=accelerator or make_accelerator(cfg),
        folder=folder,
        config_hash=config_hash,
        on_epoch=on_epoch,
    )
    return trainer.fit()


def load_weights_into(model: torch.nn.Module, state: dict, source) -> None:
    """A checkpoint's weights into the model; one made for another model is refused whole
    (keys and shapes checked before anything is copied), naming the checkpoint."""
    load_state_into(model, state, source)


def _snapshots(accelerator: Accelerator, model, eval_model) -> tuple[dict, dict | None]:
    """CPU copies of the trained weights and, when they differ, of the evaluated ones."""

    def copy(module: torch.nn.Module) -> dict:
        unwrapped = accelerator.unwrap_model(module)
        return {k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items()}

    return copy(model), (copy(eval_model) if eval_model is not model else None)


def _format_row(row: dict) -> str:
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
    return " ".join(parts)
