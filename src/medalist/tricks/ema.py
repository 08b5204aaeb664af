"""EMA: an exponential moving average of the weights, evaluated and saved instead of them.

Polyak and Juditsky, "Acceleration of stochastic approximation by averaging" (1992); the form
used in deep learning follows Tarvainen and Valpola, "Mean teachers are better role models"
(NeurIPS 2017). ``decay`` 0.99 for a few hundred steps per fold, 0.999 for thousands, 0.9999
for long runs; ``warmup`` ramps the decay up so the first steps do not freeze the average at
random initial weights.

The average lives in fp32 whatever the training precision, covers parameters and buffers (batch
norm statistics), and is updated in one batched ``foreach`` lerp with timm's ``ModelEmaV3``
decay, only after real optimizer steps: not on accumulation micro-steps, not on steps the fp16
scaler skipped (the loop calls ``after_step`` only then).

A model with ``saved_keys()`` (a LoRA text model) averages only those tensors (the adapters and
the head): the average module shares every other parameter and buffer, the frozen base, with the
trained model (:func:`copy_sharing_base`), so the base is never copied, cast or saved twice.
"""

from __future__ import annotations

import copy
import logging

import torch

from medalist.config.tricks import EMAConfig
from medalist.errors import CheckpointError
from medalist.training.hooks import Hook, TrainState
from medalist.training.weights import bare_model, saved_keys

log = logging.getLogger(__name__)


def frozen_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The parameters and buffers outside the model's :func:`saved_keys` (its fixed base); none
    when every key is saved. Non-persistent buffers (rotary frequencies) count as base."""
    keep = saved_keys(model)
    if keep is None:
        return []
    trained = {id(t) for key, t in model.state_dict(keep_vars=True).items() if key in keep}
    tensors = [*model.parameters(), *model.buffers()]
    return [t for t in tensors if id(t) not in trained]


def copy_sharing_base(
    model: torch.nn.Module, replace: dict[int, torch.Tensor] | None = None
) -> torch.nn.Module:
    """A deep copy of ``model`` whose :func:`frozen_tensors` are ``model``'s own, not copies.

    Without ``saved_keys()`` this is ``copy.deepcopy(model)``. ``replace`` maps the ``id`` of
    some of ``model``'s tensors to the tensors the copy holds in their place (SWA's averages).
    """
    memo: dict[int, torch.Tensor] = {id(t): t for t in frozen_tensors(model)}
    memo.update(replace or {})
    return copy.deepcopy(model, memo)


def average_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An average module's ``state_dict()``, only its saved keys when it has them."""
    keep = saved_keys(module)
    return {k: v for k, v in module.state_dict().items() if keep is None or k in keep}


def load_average(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load an average's ``state_dict()`` into ``module``: every key, or exactly its saved keys
    (the shared base is never written).

    Raises:
        CheckpointError: the state holds other keys than the saved ones (or, without saved
            keys, other keys or shapes than the module's: an average written in another
            layout), naming ``what``.
    """
    keep = saved_keys(module)
    if keep is None:
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:  # other keys or shapes: another model, or another layout
            raise CheckpointError(
                f"{what}: the checkpoint's average does not fit this model ({str(exc)[:300]}); "
                "delete the fold's checkpoint/ folder to train the fold afresh"
            ) from None
        return
    if set(state) != keep:
        extra, missing = sorted(set(state) - keep), sorted(keep - set(state))
        raise CheckpointError(
            f"{what}: the checkpoint's average does not hold the model's saved keys "
            f"(unexpected {extra[:3]}, missing {missing[:3]})"
        )
    module.load_state_dict(state, strict=False)


class SharedBaseEma:
    """timm ``ModelEmaV3``'s fp32 average and decay (``module``, ``get_decay``) over a copy of
    ``model`` that shares its frozen base (:func:`copy_sharing_base`).

    timm's copies the whole model and casts it all to fp32: on a LoRA model that would copy the
    base, and cast the tensors the copy shares with the model. Here the copy's own floating
    tensors alone are cast. ``get_decay`` is ``ModelEmaV3.get_decay`` with its defaults
    (``warmup_gamma`` 1, ``warmup_power`` 2/3, ``min_decay`` 0).
    """

    def __init__(self, model: torch.nn.Module, decay: float, start_step: int, warmup: bool):
        self.decay, self.start_step, self.warmup = decay, start_step, warmup
        self.module = copy_sharing_base(model)
        self.module.eval()
        _own_to_float32(self.module, {id(t) for t in frozen_tensors(model)})

    def get_decay(self, step: int) -> float:
        """0 up to step ``start_step + 1`` (the average copies the weights), then ``decay``;
        with ``warmup``, ``1 - (1 + t) ** (-2/3)`` capped at ``decay``, t the steps since."""
        step = max(0, step - self.start_step - 1)
        if step <= 0:
            return 0.0
        if not self.warmup:
            return self.decay
        return max(min(1 - (1 + step) ** -(2 / 3), self.decay), 0.0)


class EMA(Hook):
    """Track ``state.model``'s weights; evaluate, predict and save with the average."""

    def __init__(self, cfg: EMAConfig):
        self.cfg = cfg
        self.ema: SharedBaseEma | None = None

    def on_fit_start(self, state: TrainState) -> None:
        model = bare_model(state.model)
        cfg = self.cfg
        self.ema = SharedBaseEma(model, cfg.decay, cfg.start_step, cfg.warmup)
        state.extra["ema_module"] = self.ema.module  # SWA averages this when both are on
        self._pairs = _update_lists(self.ema.module, model, saved_keys(model))
        self._same_dtype = all(
            e.dtype == m.dtype for e, m in zip(self._pairs[0], self._pairs[1], strict=True)
        )
        self._warn_if_too_slow(state)

    def _warn_if_too_slow(self, state: TrainState) -> None:
        if state.train_loader is None or self.cfg.warmup:
            return
        accumulation = state.accelerator.gradient_accumulation_steps
        total = len(state.train_loader) * state.num_epochs // accumulation
        horizon = 1 / (1 - self.cfg.decay)
        if total < horizon:
            log.warning(
                "tricks.ema: decay %.4g averages over ~%d steps but the fold trains ~%d; the "
                "average stays near the initial weights. Lower the decay or set warmup: true",
                self.cfg.decay,
                horizon,
                total,
            )

    def after_step(self, state: TrainState) -> None:
        # The tensors are collected once in on_fit_start (ModelEmaV3.update builds both state
        # dicts on every call, about 1 ms per 300 tensors); the update is ModelEmaV3's.
        ema_float, model_float, ema_other, model_other = self._pairs
        weight = 1.0 - self.ema.get_decay(state.step)
        with torch.no_grad():
            if ema_float and self._same_dtype:
                torch._foreach_lerp_(ema_float, model_float, weight=weight)
            elif ema_float:  # e.g. a bf16 model: add_ promotes in the kernel, as timm does
                torch._foreach_mul_(ema_float, 1.0 - weight)
                torch._foreach_add_(ema_float, model_float, alpha=weight)
            if ema_other:
                torch._foreach_copy_(ema_other, model_other)

    def eval_model(self, state: TrainState) -> torch.nn.Module:
        return self.ema.module

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average's tensors: the model's saved keys (every key without ``saved_keys()``)."""
        return average_state(self.ema.module)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            load_average(self.ema.module, state, "tricks.ema")


def _own_to_float32(module: torch.nn.Module, shared: set[int]) -> None:
    """Cast the copy's own floating tensors to fp32, as ``Module.to(torch.float32)`` would; the
    ``shared`` ones (the model's base) are left as they are."""
    for param in module.parameters():
        if id(param) not in shared and param.is_floating_point():
            param.data = param.data.to(torch.float32)
    for name, buffer in module.named_buffers(remove_duplicate=False):
        if id(buffer) not in shared and buffer.is_floating_point():
            owner, _, leaf = name.rpartition(".")
            setattr(module.get_submodule(owner), leaf, buffer.to(torch.float32))


def _update_lists(ema: torch.nn.Module, model: torch.nn.Module, keep: frozenset[str] | None):
    """The tensors of one EMA update: (ema floats, model floats, ema others, model others), of
    the ``keep`` keys (every key when None).

    The model's own parameters and buffers (``keep_vars``), so the lists stay valid while they
    are updated in place (optimizer steps, batch-norm statistics, ``load_state_dict``); the loop
    does not move the model after ``on_fit_start``.
    """
    pairs: tuple[list, list, list, list] = ([], [], [], [])
    ema_state, model_state = ema.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    for key, ema_v in ema_state.items():
        if keep is not None and key not in keep:
            continue
        model_v = model_state[key]
        first = 0 if ema_v.is_floating_point() else 2
        pairs[first].append(ema_v)
        pairs[first + 1].append(model_v)
    return pairs
