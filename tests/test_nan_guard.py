"""The NaN guard: a NaN or infinite loss (or gradient) is caught in the optimizer step it happens
in; that step changes nothing (weights, optimizer moments, learning-rate schedule, EMA, step
count), so the run equals one that never saw those batches; training stops after
``train.max_bad_steps`` bad steps in a row; a non-finite model is never saved. The last tests
see the guard from the train stage, with NaN losses injected through the public
``tricks.custom`` hook (tests/support/faults.py)."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medalist.config import resolve_config
from medalist.errors import CheckpointError, TrainingDivergedError
from medalist.folds import run as folds
from medalist.training.checkpoint import checkpoints, save_checkpoint
from medalist.training.hooks import Hook, Hooks, TrainState
from medalist.training.loop import train_one_epoch
from medalist.training.optim import build_optimizer, build_scheduler
from medalist.training.runtime import make_accelerator
from medalist.training.stage import run as train_stage
from medalist.tricks.ema import EMA
from support.configs import cfg as stage_cfg

BATCH, ACCUM = 4, 2  # a window of two micro-batches of four rows per optimizer step
WINDOW = BATCH * ACCUM


class Fault(Hook):
    """Make micro-batches ``bad`` non-finite: the loss (NaN or inf) or, with a finite loss, one
    parameter's gradient (inf)."""

    def __init__(self, bad: set[int], kind: str):
        self.bad, self.kind, self.seen = bad, kind, -1

    def compute_loss(self, state, batch, outputs, loss):
        self.seen += 1
        if self.seen in self.bad and self.kind in ("nan", "inf"):
            return loss * float(self.kind)
        return loss

    def after_backward(self, state, batch):
        if self.seen in self.bad and self.kind == "inf_grad":
            next(state.model.parameters()).grad.view(-1)[0] = float("inf")


def data(windows: list[int]) -> list[dict]:
    """Rows of the given windows (fixed random features and labels, the same in every run)."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(4 * WINDOW, 5, generator=generator), torch.arange(4 * WINDOW) % 3
    return [
        {"input": x[i], "target": y[i]}
        for w in windows
        for i in range(w * WINDOW, (w + 1) * WINDOW)
    ]


def train(windows: list[int], bad_windows=(), kind="nan", max_bad_steps=5):
    """One epoch over ``windows``; micro-batches of ``bad_windows`` (indices into ``windows``)
    are made non-finite. Returns the state and the EMA hook."""
    cfg = resolve_config(
        overrides=[
            f"train.grad_accum={ACCUM}",
            f"train.max_bad_steps={max_bad_steps}",
            "train.lr=0.05",
            "train.warmup_ratio=0.3",
            "train.epochs=1",
            "train.cpu=true",
            "tricks.ema.enabled=true",
            "tricks.ema.decay=0.5",
        ]
    )
    accelerator = make_accelerator(cfg)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, batches_per_epoch=6 * ACCUM)  # same in every run
    loader = DataLoader(data(windows), batch_size=BATCH, shuffle=False)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainState(
        accelerator,
        model,
        optimizer,
        scheduler,
        task=None,
        fold=0,
        criterion=lambda out, target: nn.functional.cross_entropy(out, target, reduction="none"),
    )
    bad = {ACCUM * w + i for w in bad_windows for i in range(ACCUM)}
    ema = EMA(cfg.tricks.ema)
    hooks = Hooks([Fault(bad if kind != "inf_grad" else {min(bad, default=-1)}, kind), ema])
    hooks.on_fit_start(state)
    with tqdm(total=len(loader), disable=True) as bar:
        try:
            train_one_epoch(state, loader, hooks, cfg, bar)
        finally:
            state.ema = ema
    return state


def snapshot(state) -> dict:
    return {
        "model": {k: v.clone() for k, v in state.model.state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "lr": state.scheduler.get_last_lr(),
        "ema": {k: v.clone() for k, v in state.ema.state_dict().items()},
        "step": state.step,
    }


def assert_same(got, want, path="") -> None:
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), path
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), path
        for key in want:
            assert_same(got[key], want[key], f"{path}/{key}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same(a, b, f"{path}/{i}")
    else:
        assert got == want, path


@pytest.mark.parametrize("kind", ["nan", "inf", "inf_grad"])
def test_a_bad_step_changes_nothing(kind):
    """A bad third window (only its first micro-batch, for a gradient) leaves the run exactly where
    a run without that window would be: weights, Adam moments, schedule, EMA, step count. (The
    EMA copies the weights on its first step; from the second on it averages.)"""
    faulty = snapshot(train([0, 1, 2, 3], bad_windows=[2], kind=kind))
    without = snapshot(train([0, 1, 3]))
    assert faulty["step"] == 3 and faulty["scheduler"]["last_epoch"] == 3
    assert_same(faulty, without)
    # The comparison can tell: a run with that window trained is different everywhere.
    clean = snapshot(train([0, 1, 2, 3]))
    for part in ("model", "ema"):
        assert all(not clean[part][k].equal(without[part][k]) for k in without[part])
    assert clean["lr"] != without["lr"] and clean["step"] == 4


def test_stops_after_max_bad_steps_in_a_row_not_after_scattered_ones():
    scattered = train([0, 1, 2, 3], bad_windows=[1, 3], max_bad_steps=2)
    assert scattered.step == 2 and scattered.bad_steps == 1
    with pytest.raises(TrainingDivergedError, match="2 optimizer steps in a row"):
        train([0, 1, 2, 3], bad_windows=[1, 2], max_bad_steps=2)


def test_a_non_finite_model_or_ema_never_reaches_a_checkpoint(tmp_path):
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = {"optimizer": optimizer, "scheduler": scheduler, "scaler": None, "best": {}}
    save_checkpoint(tmp_path, step=1, model=model, hook_states=[], progress={}, **args)
    nan_ema = [{"weight": torch.full((2, 3), float("nan"))}]
    with pytest.raises(CheckpointError, match=r"hook-0.safetensors: tensor 'weight' is not finite"):
        save_checkpoint(tmp_path, step=2, model=model, hook_states=nan_ema, progress={}, **args)
    with torch.no_grad():
        model.bias[0] = float("inf")
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'bias' is not finite"):
        save_checkpoint(tmp_path, step=3, model=model, hook_states=[], progress={}, **args)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-00000001"]  # the last good one


# The train stage

NAN = "tricks.custom=[{name: 'faults:NaNLoss', batches: %s}]"


@pytest.fixture
def faults_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "support"))


def test_nan_step_skipped_not_applied(tiny_project, faults_on_path):
    folds(stage_cfg())
    train_stage(stage_cfg())
    weights = tiny_project / "outputs/tiny/fold0/model.safetensors"
    reference = load_file(weights)
    shutil.rmtree(tiny_project / "outputs")
    # A NaN loss on micro-batch 1 (the second): training finishes and saves finite weights.
    train_stage(stage_cfg(NAN % "[1]", "train.max_bad_steps=2"))
    got = load_file(weights)
    assert all(torch.isfinite(t).all() for t in got.values() if t.is_floating_point())
    assert any(not got[k].equal(reference[k]) for k in got if got[k].is_floating_point())
    log = pd.read_csv(tiny_project / "outputs/tiny/log.csv")
    assert log["step"].iloc[-1] == 4  # 5 batches, one skipped: 4 optimizer steps


def test_nan_steps_in_a_row_stop_training(tiny_project, faults_on_path):
    folds(stage_cfg())
    with pytest.raises(TrainingDivergedError, match="3 optimizer steps in a row"):
        train_stage(stage_cfg(NAN % "[0, 1, 2, 3]", "train.max_bad_steps=3"))
    assert not (tiny_project / "outputs/tiny/fold0/model.safetensors").exists()
