"""EMA: equals its formula on real optimizer steps only (not micro-steps, not steps the fp16
scaler skipped); predictions come from ema.safetensors."""

import json

import pandas as pd
import pytest
import timm
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from medalist.config import resolve_config
from medalist.tasks import build_task
from medalist.training.hooks import Hook, Hooks, TrainState
from medalist.training.loop import train_one_epoch
from medalist.training.optim import build_optimizer, build_scheduler
from medalist.training.runtime import make_accelerator, make_loader
from medalist.tricks.ema import EMA
from support.text_like import TextLike, prepared, task_and_cfg


class Tensors(Dataset):
    def __init__(self, n=16):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=generator)
        self.y = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"index": i, "input": self.x[i], "target": self.y[i]}


class Recorder(Hook):
    """Copies the weights after every real optimizer step."""

    def __init__(self):
        self.weights = []

    def after_step(self, state):
        model = state.accelerator.unwrap_model(state.model)
        self.weights.append({k: v.detach().clone().float() for k, v in model.state_dict().items()})


def test_ema_matches_formula_and_ignores_micro_steps():
    decay = 0.9
    cfg = resolve_config(
        overrides=[
            "train.grad_accum=2",
            "train.batch_size=4",
            f"tricks.ema.decay={decay}",
            "tricks.ema.enabled=true",
        ]
    )
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3, in_chans=1)
    accelerator = make_accelerator(cfg)
    loader = make_loader(Tensors(16), 4, shuffle=True, cfg=cfg)  # 4 micro-batches = 2 real steps
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    task = build_task(cfg, pd.DataFrame({"target": [0, 1, 2]}))
    state = TrainState(accelerator, model, optimizer, scheduler, task, fold=0)
    ema, recorder = EMA(cfg.tricks.ema), Recorder()
    hooks = Hooks([ema, recorder])
    hooks.on_fit_start(state)
    with tqdm(disable=True) as bar:
        train_one_epoch(state, loader, hooks, cfg, bar)
    assert state.step == 2 and len(recorder.weights) == 2
    first, second = recorder.weights
    for key, value in ema.eval_model(state).state_dict().items():
        if not value.is_floating_point():
            continue
        expected = decay * first[key] + (1 - decay) * second[key]  # step 1 copies the weights
        assert value.dtype == torch.float32
        assert torch.allclose(value, expected, atol=1e-6), key


def test_ema_ignores_steps_the_scaler_skipped(monkeypatch):
    task, cfg = task_and_cfg("tricks.ema.enabled=true", "tricks.ema.decay=0.5")
    ema = EMA(cfg.tricks.ema)
    model = TextLike()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    state, loader = prepared(cfg, task, model)
    ema.on_fit_start(state)
    # Every optimizer step reports itself skipped, as the fp16 scaler does on an overflow.
    monkeypatch.setattr(
        type(state.accelerator), "optimizer_step_was_skipped", property(lambda s: True)
    )
    with tqdm(disable=True) as bar:
        train_one_epoch(state, loader, Hooks([ema]), cfg, bar)
    assert state.step == 0  # skipped steps are not counted
    assert any(not torch.equal(p, initial[n]) for n, p in model.state_dict().items())
    # No update happened: the EMA still holds the weights it was created from.
    for key, value in ema.eval_model(state).state_dict().items():
        assert torch.equal(value, initial[key]), key


def test_ema_weights_saved_and_used_for_predictions(tiny_project):
    from medalist.cli import main

    args = [
        "-c",
        "configs/tiny.yaml",
        "train.epochs=1",
        "train.folds=[0]",
        "tricks.ema.enabled=true",
        "tricks.ema.decay=0.5",
    ]
    assert main(["folds", *args]) == 0
    assert main(["train", *args]) == 0
    fold = tiny_project / "outputs" / "tiny" / "fold0"
    assert (fold / "ema.safetensors").is_file() and (fold / "model.safetensors").is_file()
    from safetensors.torch import load_file

    raw, averaged = load_file(fold / "model.safetensors"), load_file(fold / "ema.safetensors")
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())
    assert json.loads((fold / "scores.json").read_text())["prediction_weights"] == [
        "ema.safetensors"
    ]
    assert main(["infer", *args]) == 0
    # Removing the EMA file must break inference: predictions come from it, not model.safetensors.
    (fold / "ema.safetensors").unlink()
    assert main(["infer", *args]) == 2
    assert json.loads((fold / "scores.json").read_text())["best_epoch"] == 0


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_ema_decay_out_of_range_refused(decay):
    from medalist.errors import ConfigError

    with pytest.raises(ConfigError, match="tricks.ema.decay"):
        resolve_config(overrides=[f"tricks.ema.decay={decay}"])
