"""Training steps for P1, P2 and P3: medalist's loop and the plainest accelerate loop.

Both sides get the same model (each its own copy of one initialisation), the same pre-built
batches, the same optimizer (AdamW, decay on weight matrices only, foreach), the same schedule,
the same precision and the same gradient clipping. A call runs ``steps`` optimizer steps.

- :func:`medalist_steps`: :func:`medalist.training.loop.train_one_epoch` as :class:`FoldTrainer` sets it
  up (accelerate's prepared loader, optimizer and scheduler, the tricks of the config built by
  :func:`medalist.tricks.registry.build_tricks`, hook dispatch, ``accelerator.accumulate``, the
  finite-step guard, loss bookkeeping).
- :func:`raw_steps`: forward, cross entropy, ``accelerator.backward``, clip, step, schedule, zero.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

CLASSES = 10


class Tensors(Dataset):
    """Pre-built tensors served as medalist samples ``{'index', 'input', 'target'}``."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "input": self.inputs[index], "target": self.targets[index]}


@dataclass
class Workload:
    """One training workload: its config, task, data and one freshly initialised model."""

    cfg: object
    task: object
    dataset: Tensors
    model: torch.nn.Module
    steps: int

    def model_copy(self) -> torch.nn.Module:
        return copy.deepcopy(self.model)


def make_config(batch: int, size: int, *overrides: str):
    from medalist.config import resolve_config

    return resolve_config(
        overrides=[
            "train.cpu=true",
            "train.progress=false",
            "train.mixed_precision='no'",
            f"train.batch_size={batch}",
            "train.epochs=1000",  # the schedule stays away from zero however long the timing runs
            "train.max_grad_norm=1.0",
            "train.num_workers=0",
            "image.channels=1",
            f"image.size={size}",
            *overrides,
        ]
    )


def workload(
    backbone: str, *, batch: int, size: int, steps: int, overrides=(), drop_rate: float = 0.0
) -> Workload:
    """A timm ``backbone`` (1 channel, 10 classes) on random ``size`` px images."""
    import pandas as pd
    import timm

    from medalist.tasks import build_task

    cfg = make_config(batch, size, *overrides)
    task = build_task(cfg, pd.DataFrame({"target": list(range(CLASSES))}))
    generator = torch.Generator().manual_seed(0)
    rows = batch * steps
    inputs = torch.randn(rows, 1, size, size, generator=generator)
    targets = torch.randint(0, CLASSES, (rows,), generator=generator)
    torch.manual_seed(0)
    model = timm.create_model(backbone, num_classes=CLASSES, in_chans=1, drop_rate=drop_rate)
    return Workload(cfg, task, Tensors(inputs, targets), model, steps)


def medalist_steps(work: Workload, model: torch.nn.Module, cfg=None):
    """A callable running ``work.steps`` steps through medalist's loop with ``cfg``'s tricks."""
    from medalist.tricks.registry import build_tricks

    cfg = cfg or work.cfg
    tricks = build_tricks(cfg, work.task, work.dataset.targets.numpy())
    return loop_steps(cfg, work.task, work.dataset, model, tricks, work.steps)


def loop_steps(cfg, task, dataset, model: torch.nn.Module, tricks, steps: int):
    """A callable running ``steps`` steps over ``dataset`` through medalist's loop with
    ``tricks`` (their hooks and criterion), set up as :class:`FoldTrainer` sets a fold up."""
    from tqdm.auto import tqdm

    from medalist.training.hooks import TrainState
    from medalist.training.loop import train_one_epoch
    from medalist.training.optim import build_optimizer, build_scheduler
    from medalist.training.runtime import make_accelerator, make_loader

    accelerator = make_accelerator(cfg)
    loader = make_loader(dataset, cfg.train.batch_size, shuffle=True, cfg=cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainState(
        accelerator,
        model,
        optimizer,
        scheduler,
        task,
        fold=0,
        num_epochs=cfg.train.epochs,
        criterion=tricks.criterion,
        train_loader=loader,
    )
    state.epoch = 1  # past the usual start epoch of AWP, as in the epochs where it runs
    tricks.hooks.on_fit_start(state)
    batches = list(loader)  # the same batches every call, already collated and on the device
    assert len(batches) == steps

    def run() -> None:
        with tqdm(total=len(batches), disable=True) as bar:  # as FoldTrainer.fit without a bar
            train_one_epoch(state, batches, tricks.hooks, cfg, bar)

    run.hooks = tricks.hooks  # for the benchmarks' checks
    run.batches = batches
    return run


def raw_steps(work: Workload, model: torch.nn.Module, batches: list[dict]):
    """A callable running the same steps written as the plainest accelerate loop."""
    from accelerate import Accelerator

    from medalist.training.optim import build_optimizer, build_scheduler

    cfg = work.cfg
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(batches))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    max_norm = cfg.train.max_grad_norm

    def run() -> None:
        model.train()
        for batch in batches:
            loss = F.cross_entropy(model(batch["input"]), batch["target"])
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

    return run
