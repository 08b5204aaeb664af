"""The training loop: one fold, built on accelerate, with hooks at named events.

The loop knows neither the task nor the modality nor any trick by name: it asks the task for the
loss and the activation, the modality for datasets and the model, and calls the hooks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from medalist.config import Config
from medalist.hooks import Hook, Hooks, TrainState, Tricks
from medalist.optim import build_optimizer, build_scheduler
from medalist.tasks import Task

log = logging.getLogger(__name__)


def make_accelerator(cfg: Config) -> Accelerator:
    """An Accelerator with seedable (resumable, process-independent) data order."""
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        cpu=cfg.train.cpu,
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=cfg.train.seed
        ),
    )


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, cfg: Config, sampler=None
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=cfg.train.num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.train.num_workers > 0,
    )


def _bar_off(show: bool) -> bool | None:
    """tqdm's ``disable``: off when not wanted; None hides it when output is not a terminal."""
    return None if show else True


@torch.no_grad()
def predict_logits(model, loader, accelerator: Accelerator, progress: bool = False):
    """Row indices and logits of every sample, gathered once each over all processes.

    Returns:
        (indices (n,), logits (n, outputs)) sorted by row index, as numpy arrays on the CPU.
    """
    model.eval()
    indices, outputs = [], []
    bar = tqdm(
        loader,
        desc="predict",
        leave=False,
        disable=_bar_off(progress and accelerator.is_main_process),
    )
    for batch in bar:
        logits = model(batch["input"])
        index, logits = accelerator.gather_for_metrics((batch["index"], logits.float()))
        indices.append(index.cpu())
        outputs.append(logits.cpu())
    index = torch.cat(indices).numpy()
    order = np.argsort(index, kind="stable")
    return index[order], torch.cat(outputs).numpy()[order]


@dataclass
class FoldResult:
    """The best epoch of a fold: its weights, its validation predictions and its scores."""

    state_dict: dict
    eval_state_dict: dict | None  # the weights evaluated instead (EMA, SWA), when a hook has them
    best_epoch: int
    scores: dict
    valid_logits: np.ndarray | None
    history: list[dict]


def train_one_epoch(state: TrainState, loader, hooks: Hook, cfg: Config, bar) -> float:
    """One pass over the training loader; returns the mean training loss of the epoch."""
    accelerator, model, optimizer = state.accelerator, state.model, state.optimizer
    model.train()
    total, count = torch.zeros((), device=accelerator.device), 0
    for batch in loader:
        batch = hooks.before_batch(state, batch)
        with accelerator.accumulate(model):
            outputs = model(batch["input"])
            losses = hooks.per_sample_loss(state, batch, outputs, state.sample_loss(outputs, batch))
            loss = hooks.compute_loss(state, batch, outputs, losses.mean())
            accelerator.backward(loss)
            hooks.after_backward(state, batch)
            if accelerator.sync_gradients and cfg.train.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
            optimizer.step()
            state.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:
            state.step += 1
            # A step the fp16 scaler skipped changed nothing; hooks must not count it.
            if not accelerator.optimizer_step_was_skipped:
                hooks.after_step(state)
        total += loss.detach()
        count += 1
        bar.update(1)
        if bar.n % 10 == 0:
            bar.set_postfix(loss=f"{(total / count).item():.4f}", refresh=False)
    return (total / max(count, 1)).item()


def _evaluate(state: TrainState, model, loader, targets: np.ndarray) -> tuple[dict, np.ndarray]:
    """Scores (with the plain task loss as ``valid_loss``) and logits on the validation rows."""
    _, logits = predict_logits(model, loader, state.accelerator)
    logits_t = torch.from_numpy(logits)
    scores = state.task.score(targets, state.task.activate(logits_t).numpy())
    valid_loss = state.task.loss(logits_t, torch.from_numpy(targets)).mean().item()
    return {"valid_loss": valid_loss, **scores}, logits


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
    extra: dict | None = None,
) -> FoldResult:
    """Train one fold and keep the epoch with the best main metric (the last for a full fit)."""
    tricks = tricks or Tricks(Hooks(), task.loss)
    hooks = tricks.hooks
    accelerator = accelerator or make_accelerator(cfg)
    train_loader = make_loader(
        train_set,
        cfg.train.batch_size,
        shuffle=True,
        cfg=cfg,
        sampler=tricks.make_sampler(cfg.train.seed),
    )
    optimizer = build_optimizer(model.to(accelerator.device), cfg)
    scheduler = build_scheduler(optimizer, cfg, len(train_loader))
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler
    )
    valid_loader = None
    if valid_set is not None:
        eval_batch = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        valid_loader = accelerator.prepare(
            make_loader(valid_set, eval_batch, shuffle=False, cfg=cfg)
        )
    state = TrainState(
        accelerator,
        model,
        optimizer,
        scheduler,
        task,
        fold,
        num_epochs=cfg.train.epochs,
        criterion=tricks.criterion,
        train_loader=train_loader,
        extra=dict(extra or {}),
    )
    hooks.on_fit_start(state)
    best = FoldResult({}, None, -1, {}, None, [])
    main = task.main_metric
    show = cfg.train.progress and accelerator.is_main_process
    for epoch in range(cfg.train.epochs):
        state.epoch = epoch
        train_set.set_epoch(epoch) if hasattr(train_set, "set_epoch") else None
        started = time.perf_counter()
        desc = f"fold {fold} epoch {epoch + 1}/{cfg.train.epochs}"
        with tqdm(total=len(train_loader), desc=desc, disable=_bar_off(show), leave=False) as bar:
            train_loss = train_one_epoch(state, train_loader, hooks, cfg, bar)
        hooks.on_epoch_end(state)
        row = {
            "fold": fold,
            "epoch": epoch,
            "step": state.step,
            "train_loss": train_loss,
            "lr": scheduler.get_last_lr()[0],
        }
        eval_model = hooks.eval_model(state) or model
        scores, logits = {}, None
        if valid_loader is not None:
            scores, logits = _evaluate(state, eval_model, valid_loader, valid_targets)
            row.update(scores)
        last = epoch == cfg.train.epochs - 1
        improved = valid_loader is not None and main.better(
            scores[main.name], best.scores.get(main.name)
        )
        if improved or (valid_loader is None and last):
            weights = _snapshots(accelerator, model, eval_model)
            best = FoldResult(*weights, epoch, scores, logits, best.history)
        row["seconds"] = time.perf_counter() - started
        best.history.append(row)
        if accelerator.is_main_process:
            log.info(_format_row(row))
    hooks.on_fit_end(state)
    return best


def _snapshots(accelerator: Accelerator, model, eval_model) -> tuple[dict, dict | None]:
    """CPU copies of the trained weights and, when they differ, of the evaluated ones."""

    def copy(module: torch.nn.Module) -> dict:
        unwrapped = accelerator.unwrap_model(module)
        return {k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items()}

    return copy(model), (copy(eval_model) if eval_model is not model else None)


def _format_row(row: dict) -> str:
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
    return " ".join(parts)


def seed_everything(seed: int) -> None:
    set_seed(seed, deterministic=False)
