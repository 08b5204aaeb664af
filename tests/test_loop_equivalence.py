"""The medalist loop with no tricks is the plain accelerate loop: bitwise the same weights on CPU.

The reference is written here the way the accelerate documentation writes a training loop, with
the optimizer and schedule spelled out from the config (not through medalist's builders), so a
change in any of medalist's pieces (parameter groups, schedule length, warmup, accumulation,
clipping, data order) shows up as a weight that differs.
"""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset
from transformers import get_cosine_schedule_with_warmup

from medalist.config import resolve_config
from medalist.tasks import build_task
from medalist.training.loop import fit_fold
from medalist.training.runtime import make_accelerator
from medalist.tricks.registry import build_tricks

ROWS, CLASSES, SIZE = 36, 3, 16  # 36 rows of batch 8: the last batch is partial


class Tensors(Dataset):
    def __init__(self, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(ROWS, 1, SIZE, SIZE, generator=generator)
        self.targets = torch.randint(0, CLASSES, (ROWS,), generator=generator)

    def __len__(self) -> int:
        return ROWS

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "input": self.inputs[index], "target": self.targets[index]}


def make_cfg(grad_accum: int):
    return resolve_config(
        overrides=[
            "train.cpu=true",
            "train.progress=false",
            "train.mixed_precision='no'",
            "train.epochs=2",
            "train.batch_size=8",
            "train.lr=3.0e-3",
            "train.weight_decay=0.05",
            "train.warmup_ratio=0.2",
            "train.scheduler=cosine",
            "train.max_grad_norm=0.5",  # small enough that clipping is active
            f"train.grad_accum={grad_accum}",
            "train.seed=7",
            "train.num_workers=0",
            "image.channels=1",
            f"image.size={SIZE}",
        ]
    )


def fresh_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=CLASSES, in_chans=1)


def medalist_weights(cfg, model) -> dict:
    """Train through fit_fold with the tricks the train stage builds (none are enabled here)."""
    task = build_task(cfg, pd.DataFrame({"target": list(range(CLASSES))}))
    data = Tensors()
    tricks = build_tricks(cfg, task, data.targets.numpy())
    assert not tricks.hooks.hooks
    set_seed(cfg.train.seed)
    result = fit_fold(
        cfg,
        task,
        model,
        data,
        None,
        None,
        fold=-1,
        tricks=tricks,
        accelerator=make_accelerator(cfg),
    )
    return result.state_dict


def raw_weights(
    cfg,
    model,
    *,
    lr_factor: float = 1.0,
    clip: bool = True,
    warmup: bool = True,
    shuffle: bool = True,
    decay_norms: bool = False,
) -> dict:
    """The plain accelerate loop: prepare, accumulate, backward, clip, step, schedule, zero.

    The keyword arguments each change one thing, for the tests that show the check sees it.
    """
    train = cfg.train
    set_seed(train.seed)
    accelerator = Accelerator(
        cpu=True,
        mixed_precision="no",
        gradient_accumulation_steps=train.grad_accum,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=train.seed),
    )
    loader = DataLoader(Tensors(), batch_size=train.batch_size, shuffle=shuffle)
    decay = [p for p in model.parameters() if p.ndim > 1 or decay_norms]
    no_decay = [p for p in model.parameters() if p.ndim <= 1 and not decay_norms]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": train.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=train.lr * lr_factor,
        foreach=True,
    )
    steps = math.ceil(len(loader) / train.grad_accum) * train.epochs
    warmup_steps = int(train.warmup_ratio * steps) if warmup else 0
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps, steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    for _ in range(train.epochs):
        model.train()
        for batch in loader:
            with accelerator.accumulate(model):
                loss = F.cross_entropy(model(batch["input"]), batch["target"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and clip:
                    accelerator.clip_grad_norm_(model.parameters(), train.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def differing(ours: dict, theirs: dict) -> list[str]:
    assert ours.keys() == theirs.keys()
    return [key for key in ours if not torch.equal(ours[key], theirs[key])]


@pytest.fixture(scope="module")
def trained():
    """(initial model, medalist's weights) for grad_accum 1 and 2, trained once for the module."""
    out = {}
    for grad_accum in (1, 2):
        initial = fresh_model()
        out[grad_accum] = initial, medalist_weights(make_cfg(grad_accum), copy.deepcopy(initial))
    return out


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_medalist_loop_is_bitwise_the_raw_accelerate_loop(trained, grad_accum):
    initial, ours = trained[grad_accum]
    theirs = raw_weights(make_cfg(grad_accum), copy.deepcopy(initial))
    changed = differing(ours, initial.state_dict())
    assert len(changed) > len(ours) // 2, "the loop did not train"
    assert differing(ours, theirs) == []


@pytest.mark.parametrize(
    "change",
    [
        {"lr_factor": 1.001},  # a learning rate 0.1% higher
        {"clip": False},  # no gradient clipping (train.max_grad_norm is small enough to bite)
        {"warmup": False},  # no warmup steps
        {"shuffle": False},  # another data order
        {"decay_norms": True},  # weight decay on biases and norm scales too
    ],
    ids=lambda change: next(iter(change)),
)
def test_the_comparison_sees_each_piece_of_the_loop(trained, change):
    """The raw loop with one piece changed gives other weights: the check can fail on each."""
    initial, ours = trained[2]
    theirs = raw_weights(make_cfg(2), copy.deepcopy(initial), **change)
    assert differing(ours, theirs), f"{change} went unnoticed"
