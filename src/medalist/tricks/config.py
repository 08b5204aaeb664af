"""The ``tricks:`` config section: one sub-section per trick, each off until ``enabled: true``.

Every trick's paper and sensible ranges are in its module's docstring and in
``configs/tricks.yaml``.
"""

from __future__ import annotations

from pydantic import Field

from medalist.configbase import Section


class EMAConfig(Section):
    enabled: bool = Field(False, description="Keep an exponential moving average of the weights.")
    decay: float = Field(
        0.999, gt=0, lt=1, description="EMA decay per optimizer step (0.99-0.9999)."
    )
    warmup: bool = Field(
        False, description="Ramp the decay up over the first steps (timm's warmup)."
    )
    start_step: int = Field(0, ge=0, description="Optimizer steps before the EMA starts tracking.")


class TricksConfig(Section):
    """Training tricks; any subset can be combined."""

    ema: EMAConfig = Field(default_factory=EMAConfig)
