"""A tiny text-like model and its token data, prepared for the loop as the train stage prepares
them: what the tricks' tests train on."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from medalist.config import Config, resolve_config
from medalist.tasks import Task, build_task
from medalist.training.hooks import TrainState
from medalist.training.optim import build_optimizer, build_scheduler
from medalist.training.runtime import make_accelerator, make_loader


class TextLike(nn.Module):
    """Embedding -> mean -> dropout -> linear, with the parameter names of a transformers model."""

    def __init__(self, vocab=20, dim=8, classes=3, dropout=0.0):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids):
        return self.head(self.dropout(self.embeddings.word_embeddings(ids).mean(1)))


class Tokens(Dataset):
    """``n`` rows of five token ids (of 20) and a class label, the same in every run."""

    def __init__(self, n=16, classes=3):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randint(0, 20, (n, 5), generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"index": i, "input": self.x[i], "target": self.y[i]}


def task_and_cfg(*overrides: str) -> tuple[Task, Config]:
    """A three-class task and its config: batches of 4, no gradient clipping, then ``overrides``."""
    cfg = resolve_config(overrides=["train.batch_size=4", "train.max_grad_norm=null", *overrides])
    return build_task(cfg, pd.DataFrame({"target": [0, 1, 2]})), cfg


def prepared(cfg: Config, task: Task, model: nn.Module, dataset: Dataset | None = None):
    """(state, loader): ``model`` with its optimizer, schedule and loader (``Tokens`` unless
    ``dataset``) through accelerate, seeded, as the train stage prepares a fold."""
    torch.manual_seed(0)
    accelerator = make_accelerator(cfg)
    loader = make_loader(dataset or Tokens(), cfg.train.batch_size, shuffle=False, cfg=cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainState(accelerator, model, optimizer, scheduler, task, fold=0, train_loader=loader)
    return state, loader
