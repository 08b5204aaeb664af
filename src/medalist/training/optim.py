"""Optimizer and schedule: AdamW parameter groups (weight decay, layer-wise LR decay, head LR).

Layer-wise learning-rate decay (Clark et al., "ELECTRA", ICLR 2020; Bao et al., "BEiT", 2021):
the top layer learns at the full rate and each layer below at ``layer_decay`` times the one
above (0.7-0.95). A model says where its layers are through ``layer_groups(weight_decay,
layer_decay)`` (medalist's text models) or timm's layer grouping (timm backbones). The head can
learn at its own rate (``train.head_lr``), as a freshly initialised head usually should.

Weight decay applies to weight matrices and kernels, not to biases, norm scales or the
parameters a model names in ``no_weight_decay()`` (timm's ViT: ``pos_embed``, ``cls_token``),
as timm's own optimizer factory does, with or without layer decay. A model with its own
``layer_groups`` places weight decay itself.
"""

from __future__ import annotations

import math

import torch
from timm.optim._param_groups import param_groups_layer_decay, param_groups_weight_decay
from transformers import get_scheduler

from medalist.config import Config
from medalist.errors import ConfigError

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def _head_parameters(model: torch.nn.Module) -> set[int]:
    get_head = getattr(model, "get_classifier", None)
    head = get_head() if callable(get_head) else None
    return {id(p) for p in head.parameters()} if isinstance(head, torch.nn.Module) else set()


def _no_weight_decay(model: torch.nn.Module) -> set[str]:
    """The parameter names (fnmatch patterns) the model exempts from weight decay."""
    listed = getattr(model, "no_weight_decay", None)
    return set(listed()) if callable(listed) else set()


def _plain_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    return param_groups_weight_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=_no_weight_decay(model)
    )


def _layer_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    own = getattr(model, "layer_groups", None)
    if callable(own):
        return own(weight_decay, layer_decay)

    return param_groups_layer_decay(
        model,
        weight_decay=weight_decay,
        layer_decay=layer_decay,
        no_weight_decay_list=_no_weight_decay(model),
    )


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """Parameter groups with their own ``lr``; the head split off when ``head_lr`` is set."""
    train = cfg.train
    if train.layer_decay is None:
        groups = _plain_groups(model, train.weight_decay)
    else:
        groups = _layer_groups(model, train.weight_decay, train.layer_decay)
    head = _head_parameters(model) if train.head_lr is not None else set()
    if train.head_lr is not None and not head:
        raise ConfigError("train.head_lr: the model has no classifier head to give its own rate")
    out = []
    for group in groups:
        params = [p for p in group["params"] if p.requires_grad]
        body = [p for p in params if id(p) not in head]
        lr = train.lr * group.get("lr_scale", 1.0)
        for chosen, rate in ((body, lr), ([p for p in params if id(p) in head], train.head_lr)):
            if chosen:
                out.append({"params": chosen, "weight_decay": group["weight_decay"], "lr": rate})
    return out


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW through torch's fused kernel on CUDA, the foreach path elsewhere."""
    on_cuda = next(model.parameters()).is_cuda
    return torch.optim.AdamW(
        param_groups(model, cfg),
        lr=cfg.train.lr,
        fused=on_cuda or None,
        foreach=None if on_cuda else True,
    )


def build_scheduler(optimizer, cfg: Config, batches_per_epoch: int, num_processes: int = 1):
    """Warmup then the configured decay, over the optimizer steps of the run.

    ``batches_per_epoch`` is the unsharded loader's length. accelerate steps a prepared scheduler
    ``num_processes`` times per real optimizer step, so the warmup and the total are counted in
    optimizer steps and multiplied by it: the learning rate at every step is then the same for
    any number of processes (with the same global batch).
    """
    per_process = math.ceil(batches_per_epoch / num_processes)
    optimizer_steps = math.ceil(per_process / cfg.train.grad_accum) * cfg.train.epochs
    warmup = int(cfg.train.warmup_ratio * optimizer_steps) * num_processes
    steps = optimizer_steps * num_processes
    name, kwargs = SCHEDULERS[cfg.train.scheduler], {}
    if cfg.tricks.schedule.restarts:  # snapshot ensembles: cosine with hard restarts
        if cfg.train.scheduler != "cosine":
            raise ConfigError("tricks.schedule.restarts: needs train.scheduler cosine")
        name, kwargs = "cosine_with_restarts", {"num_cycles": cfg.tricks.schedule.restarts + 1}
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=steps,
        scheduler_specific_kwargs=kwargs,
    )
