"""The maths of each trick on tiny modules, and their composition against a reference loop."""

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from medalist.config import resolve_config
from medalist.config.tricks import LossConfig
from medalist.errors import ConfigError
from medalist.tasks import build_task
from medalist.training.hooks import Hooks, TrainState
from medalist.training.loop import train_one_epoch
from medalist.tricks.adversarial import AWP, FGM, PGD
from medalist.tricks.ema import EMA
from medalist.tricks.losses import OHEM, Criterion, Flooding
from medalist.tricks.mix import Mix, mix_targets
from medalist.tricks.rdrop import RDrop, symmetric_kl
from medalist.tricks.swa import SWA
from support.text_like import TextLike, Tokens, prepared, task_and_cfg


def one_backward(hook, *overrides, model=None):
    """Weights before/after and gradients with and without ``hook`` after one backward."""
    task, cfg = task_and_cfg(*overrides)
    model = model or TextLike()
    state, loader = prepared(cfg, task, model)
    batch = next(iter(loader))
    hook.on_fit_start(state)
    before = copy.deepcopy(model.state_dict())
    batch = hook.before_batch(state, batch)
    state.accelerator.backward(state.forward_loss(batch))
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    hook.after_backward(state, batch)
    after = model.state_dict()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return before, after, plain, grads


@pytest.mark.parametrize(
    "hook",
    [
        AWP(
            resolve_config(
                overrides=["tricks.awp.start_epoch=0", "tricks.awp.adv_lr=0.5"]
            ).tricks.awp
        ),
        FGM(resolve_config().tricks.fgm),
        PGD(resolve_config().tricks.pgd),
    ],
    ids=["awp", "fgm", "pgd"],
)
def test_adversarial_restores_weights_and_changes_gradients(hook):
    before, after, plain, grads = one_backward(hook)
    for key, value in before.items():
        assert torch.equal(value, after[key]), key  # restored bit for bit
    assert any(not torch.equal(plain[n], grads[n]) for n in plain)


def test_awp_with_zero_eps_equals_plain_step():
    awp = AWP(
        resolve_config(overrides=["tricks.awp.start_epoch=0", "tricks.awp.adv_eps=0"]).tricks.awp
    )
    _, _, plain, grads = one_backward(awp)
    for name in plain:
        assert torch.equal(plain[name], grads[name]), name


def test_awp_keeps_gradients_of_earlier_micro_batches():
    """AWP on the second micro-batch: gradient = first's clean + second's adversarial."""
    cfg_awp = resolve_config(
        overrides=["tricks.awp.start_epoch=0", "tricks.awp.adv_eps=0"]
    ).tricks.awp
    task, cfg = task_and_cfg("train.grad_accum=2")
    model = TextLike()
    reference = copy.deepcopy(model)
    state, loader = prepared(cfg, task, model)
    first, second = list(loader)[:2]
    awp = AWP(cfg_awp)
    awp.on_fit_start(state)
    for batch in (first, second):
        batch = awp.before_batch(state, batch)
        state.accelerator.backward(state.forward_loss(batch))
        awp.after_backward(state, batch)
    for batch in (first, second):  # accelerate divides each micro-batch's loss by grad_accum
        F.cross_entropy(reference(batch["input"]), batch["target"]).div(2).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-7), name


def test_adversarial_name_matching_nothing_is_refused():
    awp = AWP(resolve_config(overrides=["tricks.awp.params=nothing_like_this"]).tricks.awp)
    with pytest.raises(ConfigError, match="tricks.awp.params"):
        one_backward(awp)
    fgm = FGM(resolve_config(overrides=["tricks.fgm.param=nope"]).tricks.fgm)
    with pytest.raises(ConfigError, match="tricks.fgm.param"):
        one_backward(fgm)
    unnamed = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(20, 3))
    with pytest.raises(ConfigError, match="no embedding parameter"):
        one_backward(FGM(resolve_config().tricks.fgm), model=unnamed)


def test_rdrop_kl_is_zero_without_dropout_and_matches_reference():
    task, cfg = task_and_cfg()
    rdrop = RDrop(cfg.tricks.rdrop)
    state, loader = prepared(cfg, task, TextLike(dropout=0.0))
    batch = rdrop.before_batch(state, next(iter(loader)))
    outputs = state.model(batch["input"])
    loss = torch.tensor(1.0)
    assert rdrop.compute_loss(state, batch, outputs, loss) == loss  # KL exactly zero
    p, q = torch.randn(6, 3), torch.randn(6, 3)
    reference = 0.5 * (
        F.kl_div(q.log_softmax(-1), p.log_softmax(-1), log_target=True, reduction="none").sum(-1)
        + F.kl_div(p.log_softmax(-1), q.log_softmax(-1), log_target=True, reduction="none").sum(-1)
    )
    assert torch.allclose(symmetric_kl("multiclass", p, q), reference, atol=1e-6)


def test_rdrop_doubles_the_batch_in_one_forward():
    task, cfg = task_and_cfg("tricks.rdrop.alpha=2")
    rdrop = RDrop(cfg.tricks.rdrop)
    state, loader = prepared(cfg, task, TextLike(dropout=0.5))
    batch = next(iter(loader))
    doubled = rdrop.before_batch(state, batch)
    assert len(doubled["input"]) == 2 * len(batch["input"])
    outputs = state.model(doubled["input"])
    total = rdrop.compute_loss(state, doubled, outputs, torch.tensor(0.0))
    assert total > 0  # two dropout masks disagree


def test_mixup_targets_sum_to_one():
    task, cfg = task_and_cfg("tricks.mix.enabled=true", "tricks.mix.cutmix_alpha=1.0")
    target = torch.tensor([0, 1, 2, 1])
    for lam in (0.0, 0.3, 1.0):
        mixed = mix_targets(task, target, lam, smoothing=0.1)
        assert torch.allclose(mixed.sum(1), torch.ones(4))
    mix = Mix(cfg.tricks.mix, task)
    batch = {"input": torch.randn(4, 1, 8, 8), "target": target, "index": torch.arange(4)}
    state = TrainState(None, None, None, None, task, fold=0)
    for _ in range(5):
        mixed = mix.before_batch(state, batch)
        assert torch.allclose(mixed["target"].sum(1), torch.ones(4))
    with pytest.raises(ConfigError, match="image batches"):
        mix.before_batch(state, {"input": torch.zeros(4, 5, dtype=torch.long), "target": target})


def test_focal_gamma_zero_is_cross_entropy_and_loss_options():
    task, _ = task_and_cfg()
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    plain = F.cross_entropy(logits, target, reduction="none")
    assert torch.allclose(Criterion(task, LossConfig(focal_gamma=0.0))(logits, target), plain)
    focal = Criterion(task, LossConfig(focal_gamma=2.0))(logits, target)
    assert (focal <= plain + 1e-7).all() and (focal < plain).any()
    smooth = Criterion(task, LossConfig(label_smoothing=0.1))(logits, target)
    assert torch.allclose(
        smooth, F.cross_entropy(logits, target, label_smoothing=0.1, reduction="none")
    )
    weights = torch.tensor([1.0, 2.0, 3.0])
    weighted = Criterion(task, LossConfig(class_weights=[1.0, 2.0, 3.0]), weights)(logits, target)
    assert torch.allclose(weighted, plain * weights[target])


def test_flooding_and_ohem():
    loss = torch.tensor(0.3)
    assert Flooding(0.0).compute_loss(None, None, None, loss) == loss
    assert Flooding(0.5).compute_loss(None, None, None, loss) == pytest.approx(0.7)
    losses = torch.tensor([0.1, 0.9, 0.5, 0.2])
    kept = OHEM(0.5).per_sample_loss(None, None, None, losses)
    assert sorted(kept.tolist()) == pytest.approx([0.5, 0.9])


def _run_epoch(cfg, task, model, hooks):
    state, loader = prepared(cfg, task, model)
    hooks.on_fit_start(state)
    with tqdm(disable=True) as bar:
        train_one_epoch(state, loader, hooks, cfg, bar)
    return state


def test_composition_ema_awp_accumulation_matches_reference_loop():
    """EMA + AWP + gradient accumulation 2 through the medalist loop vs a plain loop here."""
    decay, adv_lr, adv_eps = 0.8, 0.1, 0.01
    task, cfg = task_and_cfg(
        "train.grad_accum=2",
        "train.lr=0.01",
        "train.scheduler=constant",
        "train.warmup_ratio=0",
        "train.weight_decay=0",
        f"tricks.ema.decay={decay}",
        "tricks.awp.start_epoch=0",
        f"tricks.awp.adv_lr={adv_lr}",
        f"tricks.awp.adv_eps={adv_eps}",
    )
    torch.manual_seed(0)
    model = TextLike()
    reference = copy.deepcopy(model)
    ema, awp = EMA(cfg.tricks.ema), AWP(cfg.tricks.awp)
    _run_epoch(cfg, task, model, Hooks([awp, ema]))

    optimizer = torch.optim.AdamW(reference.parameters(), lr=0.01, weight_decay=0.0)
    averaged, steps = None, 0
    batches = [Tokens()[i : i + 4] for i in range(0, 16, 4)]
    for micro, batch in enumerate(batches):
        earlier = {n: p.grad.clone() for n, p in reference.named_parameters() if p.grad is not None}
        F.cross_entropy(reference(batch["input"]), batch["target"]).div(2).backward()
        backup = {n: p.detach().clone() for n, p in reference.named_parameters()}
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if "weight" not in name:
                    continue
                g = p.grad - earlier.get(name, 0)
                p.add_(adv_lr * backup[name].norm() * g / g.norm())
                bound = adv_eps * backup[name].abs()
                p.copy_(torch.clamp(p, backup[name] - bound, backup[name] + bound))
        for name, p in reference.named_parameters():
            p.grad = earlier[name].clone() if name in earlier else None
        F.cross_entropy(reference(batch["input"]), batch["target"]).div(2).backward()
        with torch.no_grad():
            for name, p in reference.named_parameters():
                p.copy_(backup[name])
        if micro % 2 == 1:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            weights = {k: v.detach().clone() for k, v in reference.state_dict().items()}
            averaged = (
                weights
                if averaged is None
                else {k: decay * averaged[k] + (1 - decay) * weights[k] for k in weights}
            )
    for key, value in model.state_dict().items():
        assert torch.allclose(value, reference.state_dict()[key], atol=1e-6), key
    for key, value in ema.ema.module.state_dict().items():
        assert torch.allclose(value, averaged[key], atol=1e-6), key


def test_swa_averages_epoch_end_weights():
    task, cfg = task_and_cfg("tricks.swa.enabled=true", "tricks.swa.start_epoch=0")
    swa = SWA(cfg.tricks.swa)
    model = TextLike()
    state, loader = prepared(cfg, task, model)
    swa.on_fit_start(state)
    assert swa.eval_model(state) is None  # nothing averaged yet
    snapshots = []
    for epoch in range(2):
        state.epoch = epoch
        with tqdm(disable=True) as bar:
            train_one_epoch(state, loader, Hooks([swa]), cfg, bar)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        swa.on_epoch_end(state)
    averaged = swa.eval_model(state).state_dict()
    for key in snapshots[0]:
        assert torch.allclose(averaged[key], (snapshots[0][key] + snapshots[1][key]) / 2, atol=1e-6)


def test_loss_tricks_refused_for_regression():
    cfg = resolve_config(
        overrides=[
            "task.type=regression",
            "competition.target_columns=[y]",
            "folds.scheme=quantile",
            "tricks.loss.label_smoothing=0.1",
        ]
    )
    task = build_task(cfg, pd.DataFrame({"y": [0.5]}))
    with pytest.raises(ConfigError, match="tricks.loss"):
        Criterion(task, cfg.tricks.loss)
