"""Each trick changes training the way it claims, alone and combined, checked through the loop.

The loop's own ``train_one_epoch`` runs the tricks; a recording hook placed last sees the weights
each loss is computed at (``compute_loss`` runs once per pass, the adversarial ones included) and
the gradients the optimizer is about to use (``after_backward``, after the tricks' passes). Every
expected value is computed here by hand, from the formula, on a copy of the model.
"""

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from tqdm import tqdm

from medalist.config import resolve_config
from medalist.tasks import Task
from medalist.training.hooks import Hook, Hooks, TrainState
from medalist.training.loop import train_one_epoch
from medalist.tricks.adversarial import AWP, FGM, PGD
from medalist.tricks.losses import OHEM, Flooding
from medalist.tricks.mix import Mix
from medalist.tricks.rdrop import RDrop
from support.text_like import TextLike, prepared, task_and_cfg

EMBEDDING = "embeddings.word_embeddings.weight"


class Recorder(Hook):
    """Records the embedding at every loss computation and the gradients after backward."""

    def __init__(self):
        self.embeddings: list[torch.Tensor] = []
        self.losses: list[float] = []
        self.grads: dict[str, torch.Tensor] = {}

    def compute_loss(self, state, batch, outputs, loss):
        model = state.accelerator.unwrap_model(state.model)
        self.embeddings.append(model.embeddings.word_embeddings.weight.detach().clone())
        self.losses.append(float(loss.detach()))
        return loss

    def after_backward(self, state, batch):
        model = state.accelerator.unwrap_model(state.model)
        self.grads = {n: p.grad.clone() for n, p in model.named_parameters()}


def run_loop(hooks: list[Hook], *overrides, model=None, batches=1, seed=7):
    """``batches`` batches of 4 rows through ``train_one_epoch`` with ``hooks`` then a recorder.

    The batches are taken from the loader first, so that the only random numbers drawn after
    ``seed`` are the model's dropout masks (as in :func:`reference_grads`).
    """
    task, cfg = task_and_cfg(*overrides)
    model = model or TextLike()
    start = copy.deepcopy(model)
    state, loader = prepared(cfg, task, model)
    data = list(loader)[:batches]
    recorder = Recorder()
    chain = Hooks([*hooks, recorder])
    chain.on_fit_start(state)
    torch.manual_seed(seed)
    with tqdm(disable=True) as bar:
        train_one_epoch(state, data, chain, cfg, bar)
    return recorder, start, data


def cross_entropy(model, batch):
    return F.cross_entropy(model(batch["input"]), batch["target"], reduction="none")


def rdrop_loss(alpha):
    def loss(model, batch):
        inputs, target = batch["input"], batch["target"]
        logits = model(torch.cat([inputs, inputs]))
        ce = F.cross_entropy(logits, torch.cat([target, target]))
        log_p, log_q = logits[: len(inputs)].log_softmax(-1), logits[len(inputs) :].log_softmax(-1)
        kl_pq = F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)  # KL(p || q)
        kl_qp = F.kl_div(log_p, log_q, log_target=True, reduction="none").sum(-1)
        return ce + alpha * (0.5 * (kl_pq + kl_qp)).mean()

    return loss


LOSSES = {
    "plain": lambda model, batch: cross_entropy(model, batch).mean(),
    "rdrop": rdrop_loss(2.0),
    "ohem": lambda model, batch: cross_entropy(model, batch).topk(2).values.mean(),
    "flooding": lambda model, batch: (cross_entropy(model, batch).mean() - 5.0).abs() + 5.0,
}
TRICKS = {
    "rdrop": (lambda: RDrop(resolve_config().tricks.rdrop.model_copy(update={"alpha": 2.0}))),
    "ohem": (lambda: OHEM(0.5)),
    "flooding": (lambda: Flooding(5.0)),
}


def awp_reference(model, batch, loss_fn, adv_lr, adv_eps, seed=7):
    """The gradient AWP must leave: ``loss_fn``'s gradient at the weights moved by
    ``adv_lr |w| g / |g|`` (g: ``loss_fn``'s gradient at the clean weights), clamped to
    ``adv_eps |w|`` element-wise, on the parameters named ``*weight*``."""
    model = copy.deepcopy(model)
    model.train()
    torch.manual_seed(seed)
    loss_fn(model, batch).backward()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "weight" in name:
                clean, grad = param.detach().clone(), param.grad
                step = adv_lr * clean.norm() * grad / grad.norm()
                bound = adv_eps * clean.abs()
                param.add_(torch.maximum(torch.minimum(step, bound), -bound))
    model.zero_grad(set_to_none=True)
    loss_fn(model, batch).backward()
    return {n: p.grad for n, p in model.named_parameters()}


AWP_SETTINGS = ["tricks.awp.start_epoch=0", "tricks.awp.adv_lr=0.5", "tricks.awp.adv_eps=0.05"]


@pytest.mark.parametrize("trick", ["rdrop", "ohem", "flooding"])
def test_awp_computes_the_adversarial_loss_with_the_loss_tricks(trick):
    """AWP + a loss trick: the gradient is that of the trick's loss at the perturbed weights,
    perturbed along the trick's loss gradient, and differs from AWP alone by the trick's part."""
    awp = AWP(resolve_config(overrides=AWP_SETTINGS).tricks.awp)
    dropout = 0.3 if trick == "rdrop" else 0.0
    recorder, start, data = run_loop(
        [TRICKS[trick](), awp], *AWP_SETTINGS, model=TextLike(dropout=dropout)
    )
    batch = {k: v for k, v in data[0].items() if k in ("input", "target")}
    expected = awp_reference(start, batch, LOSSES[trick], adv_lr=0.5, adv_eps=0.05)
    awp_alone = awp_reference(start, batch, LOSSES["plain"], adv_lr=0.5, adv_eps=0.05)
    assert len(recorder.losses) == 2  # the clean pass and the adversarial one, both with the trick
    for name, grad in recorder.grads.items():
        assert torch.allclose(grad, expected[name], atol=1e-6), name
    assert any(not torch.allclose(recorder.grads[n], awp_alone[n], atol=1e-4) for n in awp_alone)


def test_fgm_with_rdrop_computes_the_adversarial_loss_with_the_kl():
    fgm = FGM(resolve_config(overrides=["tricks.fgm.epsilon=0.5"]).tricks.fgm)
    recorder, start, data = run_loop([TRICKS["rdrop"](), fgm], model=TextLike(dropout=0.3))
    batch = {k: v for k, v in data[0].items() if k in ("input", "target")}
    model = copy.deepcopy(start)
    torch.manual_seed(7)
    LOSSES["rdrop"](model, batch).backward()
    clean = {n: p.grad.clone() for n, p in model.named_parameters()}
    embedding = dict(model.named_parameters())[EMBEDDING]
    with torch.no_grad():
        embedding.add_(0.5 * clean[EMBEDDING] / clean[EMBEDDING].norm())
    model.zero_grad(set_to_none=True)
    LOSSES["rdrop"](model, batch).backward()
    for name, param in model.named_parameters():  # FGM adds the adversarial gradient
        assert torch.allclose(recorder.grads[name], clean[name] + param.grad, atol=1e-6), name


@pytest.mark.parametrize("accumulation", [1, 2])
def test_fgm_moves_the_embedding_by_epsilon_along_the_micro_batch_gradient(accumulation):
    epsilon = 0.7
    fgm = FGM(resolve_config(overrides=[f"tricks.fgm.epsilon={epsilon}"]).tricks.fgm)
    recorder, start, data = run_loop(
        [fgm], f"train.grad_accum={accumulation}", batches=accumulation
    )
    # Two loss computations per micro-batch: clean, then at the moved embedding.
    assert len(recorder.embeddings) == 2 * accumulation
    clean, moved = recorder.embeddings[-2], recorder.embeddings[-1]
    # The gradient of this micro-batch alone, at the weights it saw (the first micro-batch of
    # an accumulation window does not step the optimizer, so they are the starting ones).
    model = copy.deepcopy(start)
    cross_entropy(model, data[-1]).mean().backward()
    g = dict(model.named_parameters())[EMBEDDING].grad
    assert torch.equal(clean, dict(start.named_parameters())[EMBEDDING].detach())
    assert torch.allclose(moved - clean, epsilon * g / g.norm(), atol=1e-6)


def test_pgd_stays_within_the_epsilon_ball():
    epsilon, alpha = 0.5, 0.6  # one step alone leaves the ball: every step is projected
    pgd = PGD(
        resolve_config(
            overrides=[f"tricks.pgd.epsilon={epsilon}", f"tricks.pgd.alpha={alpha}"]
        ).tricks.pgd
    )
    recorder, start, data = run_loop([pgd])
    clean, *attacked = recorder.embeddings
    assert len(attacked) == 3
    for moved in attacked:
        assert (moved - clean).norm() <= epsilon * (1 + 1e-5)
    model = copy.deepcopy(start)
    cross_entropy(model, data[0]).mean().backward()
    g = dict(model.named_parameters())[EMBEDDING].grad
    # The first step, alpha g / |g| with alpha > epsilon, lands on the ball's surface.
    assert torch.allclose(attacked[0] - clean, epsilon * g / g.norm(), atol=1e-6)


def test_flooding_flips_the_gradient_below_the_flood_level():
    below, _, _ = run_loop([Flooding(5.0)])  # the loss (about 1.1) is below the level
    plain, _, _ = run_loop([])
    assert below.losses[0] > 5.0
    for name, grad in plain.grads.items():
        assert torch.allclose(below.grads[name], -grad, atol=1e-7), name
    above, _, _ = run_loop([Flooding(0.01)])  # above the level: the plain gradient
    for name, grad in plain.grads.items():
        assert torch.allclose(above.grads[name], grad, atol=1e-7), name


def test_ohem_back_propagates_exactly_the_hardest_fraction():
    recorder, start, data = run_loop([OHEM(0.5)])
    model = copy.deepcopy(start)
    losses = cross_entropy(model, data[0])
    hardest = losses.argsort(descending=True)[:2]
    losses[hardest].mean().backward()
    for name, param in model.named_parameters():
        assert torch.allclose(recorder.grads[name], param.grad, atol=1e-7), name


def test_rdrop_adds_alpha_times_the_batch_mean_of_the_per_sample_kl():
    """The KL is per sample (summed over classes, softmax; averaged over outputs, sigmoid),
    half of both directions, then averaged over the batch like the main loss."""
    torch.manual_seed(0)
    for task_type, outputs in (("multiclass", 3), ("multilabel", 4), ("binary", 1)):
        columns = ["a", "b", "c", "d"] if task_type == "multilabel" else ["y"]
        task = Task(task_type, columns, classes=[0, 1, 2][: max(outputs, 2)])
        rdrop = RDrop(resolve_config().tricks.rdrop.model_copy(update={"alpha": 0.7}))
        state = TrainState(None, None, None, None, task, fold=0)
        batch = rdrop.before_batch(state, {"input": torch.zeros(5, 2), "target": torch.zeros(5)})
        logits = torch.randn(10, outputs)
        total = rdrop.compute_loss(state, batch, logits, torch.tensor(0.25))
        first, second = logits[:5], logits[5:]
        if task_type == "multiclass":
            p, q = first.softmax(-1), second.softmax(-1)
            per_sample = 0.5 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1))
        else:
            p, q = first.sigmoid(), second.sigmoid()

            def bernoulli(a, b):
                return a * (a / b).log() + (1 - a) * ((1 - a) / (1 - b)).log()

            per_sample = (0.5 * (bernoulli(p, q) + bernoulli(q, p))).mean(-1)
        assert total.item() == pytest.approx(0.25 + 0.7 * per_sample.mean().item(), rel=1e-5)


@pytest.mark.parametrize("task_type", ["binary", "multilabel"])
@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_mix_targets_are_the_mixed_targets_for_sigmoid_tasks(task_type, kind):
    """The targets mix in the proportion the images did (lam: the share of the original)."""
    columns = ["y"] if task_type == "binary" else ["a", "b", "c"]
    labels = len(columns)
    task = Task(task_type, columns, classes=[0, 1])
    alphas = ["tricks.mix.mixup_alpha=0.4", "tricks.mix.cutmix_alpha=0"]
    if kind == "cutmix":
        alphas = ["tricks.mix.mixup_alpha=0", "tricks.mix.cutmix_alpha=1.0"]
    cfg = resolve_config(overrides=["tricks.mix.enabled=true", *alphas])
    mix = Mix(cfg.tricks.mix, task)
    state = TrainState(None, None, None, None, task, fold=0)
    generator = torch.Generator().manual_seed(3)
    images = torch.rand(6, 1, 16, 16, generator=generator)
    target = torch.randint(0, 2, (6, labels), generator=generator).float()
    target = target[:, 0].long() if task_type == "binary" else target
    for _ in range(5):
        mixed = mix.before_batch(state, {"input": images, "target": target})
        lam = mixed["mix_lam"]
        if kind == "mixup":
            assert torch.allclose(mixed["input"], lam * images + (1 - lam) * images.flip(0))
        else:  # the share of pixels kept from each image is lam
            kept = (mixed["input"] == images).all(1).float().mean((1, 2))
            assert torch.allclose(kept, torch.full((6,), lam), atol=1e-6)
        dense = target.float()
        assert torch.allclose(mixed["target"], lam * dense + (1 - lam) * dense.flip(0))


class HostSyncs:
    """Counts the tensor-to-host reads (``item``, ``bool``, ``float``, ``tolist``) that
    medalist's own code makes; torch's internals are not counted."""

    NAMES = ("item", "__bool__", "__float__", "__int__", "tolist")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, original))

    def _counting(self, name, original):
        def call(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if "/medalist/" in caller.co_filename:
                self.calls.append(f"{name} in {caller.co_name}")
            return original(tensor, *args, **kwargs)

        return call


@pytest.mark.parametrize(
    "tricks",
    [
        ["tricks.awp.enabled=true", "tricks.awp.start_epoch=0", "tricks.ema.enabled=true"],
        ["tricks.fgm.enabled=true", "tricks.rdrop.enabled=true"],
        ["tricks.pgd.enabled=true", "tricks.loss.ohem_ratio=0.5", "tricks.loss.flooding=0.1"],
    ],
    ids=["awp-ema", "fgm-rdrop", "pgd-ohem-flooding"],
)
def test_one_host_sync_per_optimizer_step_when_the_bar_is_off(tricks, monkeypatch):
    """Eight micro-batches, accumulation 2: four optimizer steps, so four finiteness checks and
    the epoch's mean loss; no per-micro-batch reads (the progress bar is off)."""
    from medalist.tricks.registry import build_hooks

    task, cfg = task_and_cfg("train.grad_accum=2", *tricks)
    model = TextLike(dropout=0.1)
    state, loader = prepared(cfg, task, model, dataset=None)
    data = [batch for _ in range(2) for batch in loader]  # 8 micro-batches of 4 rows
    hooks = build_hooks(cfg, task)
    hooks.on_fit_start(state)
    syncs = HostSyncs(monkeypatch)
    with tqdm(disable=True) as bar:
        train_one_epoch(state, data, hooks, cfg, bar)
    assert state.step == 4
    assert syncs.calls == ["__bool__ in _step_is_finite"] * 4 + ["item in train_one_epoch"]
