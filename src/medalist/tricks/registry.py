"""Build the tricks of a run from the ``tricks:`` config section; a disabled trick costs nothing.

The order of the hooks is the order their events compose in: batch rewriting (mixup, then
R-Drop's doubling), loss changes (OHEM on per-sample losses, then R-Drop's KL, then flooding),
adversarial passes after backward (AWP, FGM, PGD), weight averaging after steps (EMA, then SWA,
which averages the EMA when both are on), then schedule snapshots.
"""

from __future__ import annotations

import numpy as np

from medalist.config import Config
from medalist.errors import ConfigError
from medalist.metrics import import_object
from medalist.tasks import Task
from medalist.training.hooks import Hook, Hooks, Tricks
from medalist.tricks.adversarial import AWP, FGM, PGD
from medalist.tricks.ema import EMA
from medalist.tricks.losses import OHEM, Criterion, Flooding, class_weights
from medalist.tricks.mix import Mix
from medalist.tricks.rdrop import RDrop
from medalist.tricks.schedule import ScheduleTricks
from medalist.tricks.swa import SWA


def _adversarial(cfg: Config) -> list[Hook]:
    tricks, hooks = cfg.tricks, []
    if sum((tricks.awp.enabled, tricks.fgm.enabled, tricks.pgd.enabled)) > 1:
        raise ConfigError("tricks: AWP, FGM and PGD each add an adversarial pass; enable one")
    if tricks.awp.enabled:
        hooks.append(AWP(tricks.awp))
    if tricks.fgm.enabled:
        hooks.append(FGM(tricks.fgm))
    if tricks.pgd.enabled:
        hooks.append(PGD(tricks.pgd))
    return hooks


def build_hooks(cfg: Config, task: Task | None = None) -> Hooks:
    """One hook per enabled trick, in the order described in the module docstring."""
    tricks, hooks = cfg.tricks, []
    if tricks.mix.enabled:
        hooks.append(Mix(tricks.mix, task, tricks.loss.label_smoothing))
    if tricks.rdrop.enabled:
        hooks.append(RDrop(tricks.rdrop))
    if tricks.loss.ohem_ratio is not None:
        hooks.append(OHEM(tricks.loss.ohem_ratio))
    if tricks.loss.flooding is not None:
        hooks.append(Flooding(tricks.loss.flooding))
    hooks += _adversarial(cfg)
    if tricks.ema.enabled:
        hooks.append(EMA(tricks.ema))
    if tricks.swa.enabled:
        hooks.append(SWA(tricks.swa))
    if tricks.schedule.restarts or tricks.schedule.sgd_epoch:
        hooks.append(ScheduleTricks(cfg))
    hooks += [_custom(spec, index) for index, spec in enumerate(tricks.custom)]
    return Hooks(hooks)


def _custom(spec, index: int) -> Hook:
    key = f"tricks.custom[{index}]"
    cls = import_object(spec.name, key)
    if not (isinstance(cls, type) and issubclass(cls, Hook)):
        raise ConfigError(f"{key}: '{spec.name}' is not a medalist.training.hooks.Hook subclass")
    kwargs = spec.model_dump(exclude={"name"})
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{key}: {spec.name}({kwargs}): {exc}") from exc


def build_tricks(cfg: Config, task: Task, train_targets: np.ndarray) -> Tricks:
    """Hooks, criterion and sampler of a fold, from its training targets."""

    criterion = Criterion(
        task, cfg.tricks.loss, class_weights(cfg.tricks.loss, task, train_targets)
    )
    sample_weights = None
    if cfg.tricks.sampler.balanced:
        if cfg.train.pseudo_round is not None:
            raise ConfigError(
                "tricks.sampler.balanced: cannot weigh pseudo-labelled rows; "
                "use pseudo.balance instead"
            )
        if task.type not in ("binary", "multiclass"):
            raise ConfigError("tricks.sampler.balanced: needs a binary or multiclass task")
        counts = np.bincount(train_targets, minlength=len(task.classes)).clip(min=1)
        sample_weights = 1.0 / counts[train_targets]
    return Tricks(build_hooks(cfg, task), criterion, sample_weights)
