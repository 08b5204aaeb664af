"""What a fold trains with: its loaders, optimizer and scheduler, prepared by accelerate."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from medalist.config import Config
from medalist.training.hooks import Tricks
from medalist.training.optim import build_optimizer, build_scheduler
from medalist.training.runtime import make_loader
from medalist.training.syncbn import sync_batch_norm


def prepare_fold(
    cfg: Config,
    model: torch.nn.Module,
    train_set: Dataset,
    valid_set: Dataset | None,
    tricks: Tricks,
    accelerator: Accelerator,
) -> tuple:
    """The fold's model, optimizer, training loader, scheduler and validation loader (None
    without validation rows), each prepared by ``accelerator``.

    The training loader takes a trick's sampler when one is enabled; batch norm is synchronised
    across processes when ``train.sync_bn`` asks for it and there are several.
    """
    sampler = tricks.make_sampler(cfg.train.seed)
    loader = make_loader(train_set, cfg.train.batch_size, shuffle=True, cfg=cfg, sampler=sampler)
    if cfg.train.sync_bn and accelerator.num_processes > 1:
        model = sync_batch_norm(model, accelerator.device)  # same parameters, same keys
    optimizer = build_optimizer(model.to(accelerator.device), cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader), accelerator.num_processes)
    prepared = accelerator.prepare(model, optimizer, loader, scheduler)
    valid_loader = None
    if valid_set is not None:
        eval_batch = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        valid_loader = accelerator.prepare(
            make_loader(valid_set, eval_batch, shuffle=False, cfg=cfg)
        )
    return (*prepared, valid_loader)
