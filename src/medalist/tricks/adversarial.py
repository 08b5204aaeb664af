"""Adversarial training after backward: AWP on weights, FGM and PGD on embeddings.

- AWP: Wu, Xia and Wang, "Adversarial weight perturbation helps robust generalization"
  (NeurIPS 2020). Each selected weight moves by ``adv_lr * |w| * g / |g|`` (per tensor), clamped
  to ``|delta| <= adv_eps * |w|`` element-wise; the micro-batch's gradient is then the gradient
  at the perturbed weights (min over w of the max over the perturbation), so ``adv_eps=0`` is
  exactly a plain step. Gradients of earlier accumulation micro-batches are kept. Usual values:
  adv_lr 1e-4-1, adv_eps 1e-3-1e-2, from the second or third epoch.
- FGM: Miyato, Dai and Goodfellow, "Adversarial training methods for semi-supervised text
  classification" (ICLR 2017): the embedding moves by ``epsilon * g / |g|`` and the adversarial
  gradient is added to the clean one. epsilon 0.1-1.
- PGD: Madry et al., "Towards deep learning models resistant to adversarial attacks"
  (ICLR 2018): ``steps`` moves of ``alpha * g / |g|`` projected onto the ``epsilon`` ball; the
  last adversarial gradient is added to the clean one. steps 2-5, alpha about epsilon / 3.

Each adversarial pass computes the step's own training loss at the perturbed weights
(:meth:`~medalist.training.hooks.TrainState.forward_loss`: R-Drop, OHEM, flooding and custom loss hooks
included); under gradient accumulation the attack follows this micro-batch's own gradient. All
three restore the weights they touch exactly (the saved tensors are copied back), and none syncs
with the host.
"""

from __future__ import annotations

import re

import torch

from medalist.config.tricks import AWPConfig, FGMConfig, PGDConfig
from medalist.errors import ConfigError
from medalist.training.hooks import Hook, TrainState
from medalist.training.weights import bare_model

# The input embedding of common transformers and timm models, most specific first.
EMBEDDING_PATTERNS = (
    r"word_embeddings\.weight$",  # BERT, RoBERTa, DeBERTa, ELECTRA, MiniLM
    r"embed_tokens\.weight$",  # LLaMA, Mistral, T5-style decoders
    r"wte\.weight$",  # GPT-2
    r"patch_embed\.proj\.weight$",  # timm ViT, Swin, DeiT
    r"conv_stem\.weight$",  # timm EfficientNet, MobileNet
    r"stem\.0\.weight$",  # timm ConvNeXt
    r"^conv1(\.0)?\.weight$",  # timm ResNet (and its deep-stem variants)
    r"stem\.conv\d?\.weight$",
)


def named_parameters(state: TrainState):
    return bare_model(state.model).named_parameters()


def select(state: TrainState, pattern: str, key: str) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters whose name matches ``pattern``; none is an error."""
    regex = re.compile(pattern)
    chosen = {n: p for n, p in named_parameters(state) if p.requires_grad and regex.search(n)}
    if not chosen:
        raise ConfigError(f"{key}: '{pattern}' matches no trainable parameter of the model")
    return chosen


def embedding(state: TrainState, pattern: str | None, key: str) -> dict[str, torch.nn.Parameter]:
    """The embedding parameter: the configured pattern, or the first usual name that matches."""
    if pattern is not None:
        return select(state, pattern, key)
    names = [n for n, _ in named_parameters(state)]
    for candidate in EMBEDDING_PATTERNS:
        if any(re.search(candidate, n) for n in names):
            return select(state, candidate, key)
    raise ConfigError(
        f"{key}: no embedding parameter found by the usual names; set it "
        f"(parameters start with {names[:3]})"
    )


def _unit(grad: torch.Tensor) -> torch.Tensor:
    """``grad / |grad|``, zero for a zero gradient, without a host sync (a non-finite gradient
    gives a non-finite direction: that step is skipped by the loop and the weights restored)."""
    norm = grad.norm()
    return grad * torch.where(norm > 0, norm.reciprocal(), 0.0)


class _Adversarial(Hook):
    """What the three share: this micro-batch's own gradient under gradient accumulation.

    Gradients that earlier accumulation micro-batches left are read in ``before_batch`` (before
    this micro-batch's backward adds to them), so the attack direction comes from this
    micro-batch's loss alone.
    """

    def __init__(self):
        self._earlier: dict[str, torch.Tensor] = {}

    def watched(self) -> dict[str, torch.nn.Parameter]:
        raise NotImplementedError

    def active(self, state: TrainState) -> bool:
        return True

    def before_batch(self, state, batch):
        self._earlier = {}
        if self.active(state):
            self._earlier = {
                n: p.grad.clone() for n, p in self.watched().items() if p.grad is not None
            }
        return batch

    def own_grad(self, name: str, param: torch.nn.Parameter) -> torch.Tensor | None:
        earlier = self._earlier.get(name)
        return param.grad if earlier is None or param.grad is None else param.grad - earlier


class AWP(_Adversarial):
    """Adversarial weight perturbation of the parameters matching ``cfg.params``.

    The micro-batch's gradient (of every parameter) becomes the gradient of its training loss
    (loss tricks included) at the perturbed weights. Gradients that earlier accumulation
    micro-batches left are put back before the adversarial backward, so autograd adds to them
    exactly as in a plain step (and, under DDP, the synchronising backward reduces the whole sum).
    """

    def __init__(self, cfg: AWPConfig):
        super().__init__()
        self.cfg = cfg
        self.params: dict[str, torch.nn.Parameter] = {}
        self.trainable: dict[str, torch.nn.Parameter] = {}

    def on_fit_start(self, state):
        self.params = select(state, self.cfg.params, "tricks.awp.params")
        self.trainable = {n: p for n, p in named_parameters(state) if p.requires_grad}

    def watched(self):
        return self.trainable

    def active(self, state) -> bool:
        return state.epoch >= self.cfg.start_epoch

    @torch.no_grad()
    def _perturb(self, backup: dict[str, torch.Tensor]) -> None:
        # In place with two temporaries per tensor: each out-of-place product, minimum and
        # maximum allocates a weight-sized tensor, which made this step 7x slower on CPU. No
        # host sync: a zero gradient moves nothing through a zero factor.
        for name, param in self.params.items():
            grad = self.own_grad(name, param)
            if grad is None:
                continue
            saved = backup[name]
            norm = grad.norm()
            scale = torch.where(norm > 0, self.cfg.adv_lr * saved.norm() / norm, 0.0)
            step = grad * scale  # adv_lr |w| g / |g|
            bound = saved.abs().mul_(self.cfg.adv_eps)
            offset = param.sub_(saved).add_(step)  # the perturbation so far, plus this step
            torch.minimum(offset, bound, out=offset)
            torch.maximum(offset, bound.neg_(), out=offset)
            param.add_(saved)

    @torch.no_grad()
    def _reset_grads(self) -> None:
        for name, param in self.trainable.items():
            earlier = self._earlier.get(name)
            param.grad = None if earlier is None else earlier.clone()

    def after_backward(self, state, batch):
        if not self.active(state):
            return
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        for _ in range(self.cfg.steps):
            self._perturb(backup)
            self._reset_grads()
            state.accelerator.backward(state.forward_loss(batch))
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(backup[name])
        self._earlier = {}


class FGM(_Adversarial):
    """One adversarial step on the embedding; the adversarial gradient is added."""

    def __init__(self, cfg: FGMConfig):
        super().__init__()
        self.cfg = cfg
        self.params: dict[str, torch.nn.Parameter] = {}

    def on_fit_start(self, state):
        self.params = embedding(state, self.cfg.param, "tricks.fgm.param")

    def watched(self):
        return self.params

    def after_backward(self, state, batch):
        backup = {}
        with torch.no_grad():
            for name, param in self.params.items():
                grad = self.own_grad(name, param)
                if grad is not None:
                    backup[name] = param.detach().clone()
                    param.add_(self.cfg.epsilon * _unit(grad))  # epsilon g / |g|
        if not backup:
            return
        state.accelerator.backward(state.forward_loss(batch))
        with torch.no_grad():
            for name, saved in backup.items():
                self.params[name].copy_(saved)


class PGD(_Adversarial):
    """``steps`` projected steps on the embedding; the last adversarial gradient is added."""

    def __init__(self, cfg: PGDConfig):
        super().__init__()
        self.cfg = cfg
        self.params: dict[str, torch.nn.Parameter] = {}

    def on_fit_start(self, state):
        self.params = embedding(state, self.cfg.param, "tricks.pgd.param")

    def watched(self):
        return self.params

    @torch.no_grad()
    def _attack(self, backup: dict[str, torch.Tensor], first: bool) -> None:
        """One step of ``alpha g / |g|``, projected back onto the ``epsilon`` ball."""
        for name, param in self.params.items():
            # The first step follows this micro-batch's clean gradient; later ones the gradient
            # of the adversarial pass alone (the others were zeroed for it).
            grad = self.own_grad(name, param) if first else param.grad
            if grad is None:
                continue
            param.add_(self.cfg.alpha * _unit(grad))
            delta = param.sub_(backup[name])  # in place: param holds the offset for a moment
            # Inside the ball the factor is 1; no host sync either way.
            delta.mul_((self.cfg.epsilon / delta.norm()).clamp(max=1.0))
            param.add_(backup[name])

    def after_backward(self, state, batch):
        trainable = [p for _, p in named_parameters(state) if p.grad is not None]
        clean_grads = [p.grad.clone() for p in trainable]
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        for step in range(self.cfg.steps):
            self._attack(backup, first=step == 0)
            last = step == self.cfg.steps - 1
            with torch.no_grad():
                for param, clean in zip(trainable, clean_grads, strict=True):
                    if last:  # the last pass adds its gradient to the clean one
                        param.grad.copy_(clean)
                    else:  # the others need the adversarial gradient alone
                        param.grad.zero_()
            state.accelerator.backward(state.forward_loss(batch))
        with torch.no_grad():
            for name, saved in backup.items():
                self.params[name].copy_(saved)
