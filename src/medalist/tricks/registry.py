"""Build the hooks of a run from the ``tricks:`` config section; disabled tricks cost nothing."""

from __future__ import annotations

from medalist.config import Config
from medalist.hooks import Hooks


def build_hooks(cfg: Config) -> Hooks:
    """One hook per enabled trick, in the order their events must compose."""
    hooks = []
    tricks = cfg.tricks
    if tricks.ema.enabled:
        from medalist.tricks.ema import EMA

        hooks.append(EMA(tricks.ema))
    return Hooks(hooks)
