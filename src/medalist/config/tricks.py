"""The ``tricks:`` config section: one sub-section per trick, each off until ``enabled: true``.

Every trick's paper and sensible ranges are in its module's docstring and in
``configs/tricks.yaml``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from medalist.config.section import Section


class EMAConfig(Section):
    enabled: bool = Field(False, description="Keep an exponential moving average of the weights.")
    decay: float = Field(0.999, gt=0, lt=1, description="Decay per optimizer step (0.99-0.9999).")
    warmup: bool = Field(False, description="Ramp the decay up over the first steps (timm).")
    start_step: int = Field(0, ge=0, description="Optimizer steps before the EMA starts tracking.")


class AWPConfig(Section):
    enabled: bool = Field(False, description="Adversarial weight perturbation.")
    adv_lr: float = Field(1e-4, gt=0, description="Step size of the perturbation (1e-5 to 1).")
    adv_eps: float = Field(
        1e-2, ge=0, description="Relative bound of the perturbation (1e-3-1e-1)."
    )
    start_epoch: int = Field(1, ge=0, description="First epoch (0-based) with AWP.")
    steps: int = Field(1, ge=1, description="Perturbation steps per optimizer step.")
    params: str = Field("weight", description="Regex: parameters whose name matches are perturbed.")


class FGMConfig(Section):
    enabled: bool = Field(False, description="Fast gradient method on the embedding weights.")
    epsilon: float = Field(1.0, gt=0, description="Norm of the perturbation (0.1-1 for text).")
    param: str | None = Field(
        None, description="Regex of the embedding parameter; null: the model's usual name."
    )


class PGDConfig(Section):
    enabled: bool = Field(False, description="Projected gradient descent on the embedding weights.")
    epsilon: float = Field(1.0, gt=0, description="Radius of the perturbation ball.")
    alpha: float = Field(0.3, gt=0, description="Step size of each attack step.")
    steps: int = Field(3, ge=1, description="Attack steps (2-5).")
    param: str | None = Field(
        None, description="Regex of the embedding parameter; null: the model's usual name."
    )


class SWAConfig(Section):
    enabled: bool = Field(False, description="Stochastic weight averaging (torch swa_utils).")
    start_epoch: int = Field(1, ge=0, description="First epoch (0-based) averaged.")
    lr: float | None = Field(
        None, gt=0, description="Constant SWA learning rate; null: keep the schedule."
    )


class RDropConfig(Section):
    enabled: bool = Field(False, description="R-Drop: KL between two dropout passes.")
    alpha: float = Field(1.0, ge=0, description="Weight of the KL term (0.1-5).")


class LossConfig(Section):
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Label smoothing (0.05-0.2).")
    focal_gamma: float = Field(0.0, ge=0, description="Focal loss gamma; 0 is cross entropy (1-3).")
    class_weights: list[float] | Literal["balanced"] | None = Field(
        None, description="Per-class loss weights, 'balanced' (inverse frequency) or null."
    )
    flooding: float | None = Field(
        None,
        ge=0,
        description="Flooding level b: loss becomes |loss - b| + b (about the val loss).",
    )
    ohem_ratio: float | None = Field(
        None, gt=0, le=1, description="Online hard example mining: keep this fraction of a batch."
    )


class SamplerConfig(Section):
    balanced: bool = Field(False, description="Draw classes equally often (weighted sampling).")


class MixConfig(Section):
    enabled: bool = Field(False, description="mixup / cutmix (timm's Mixup).")
    mixup_alpha: float = Field(0.2, ge=0, description="Beta(alpha, alpha) of mixup (0.1-0.4).")
    cutmix_alpha: float = Field(0.0, ge=0, description="Beta(alpha, alpha) of cutmix (0.5-1).")
    prob: float = Field(1.0, ge=0, le=1, description="Probability of mixing a batch.")
    switch_prob: float = Field(
        0.5, ge=0, le=1, description="Cutmix instead of mixup, when both on."
    )
    stop_epoch: int | None = Field(None, ge=0, description="No mixing from this epoch on.")


class ScheduleConfig(Section):
    restarts: int = Field(
        0, ge=0, description="Cosine restarts: restarts + 1 cycles (snapshot ensembles)."
    )
    snapshot_ensemble: bool = Field(
        True,
        description=(
            "With restarts: the evaluated weights (EMA, SWA or model) at each cycle's end are "
            "saved as fold{k}/snapshot{c}.safetensors, and the fold's OOF and test predictions "
            "are the mean of theirs. false: restarts only shape the learning rate."
        ),
    )
    sgd_epoch: int | None = Field(
        None, ge=1, description="Switch from AdamW to SGD (momentum 0.9) at this epoch."
    )
    sgd_lr: float | None = Field(
        None, gt=0, description="SGD learning rate; null: the AdamW lr x 10."
    )


class CustomHook(Section):
    """A hook from your own code: its import path and keyword arguments."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(
        description="'package.module:Class' of a medalist.training.hooks.Hook subclass."
    )


class TricksConfig(Section):
    """Training tricks; any subset can be combined."""

    ema: EMAConfig = Field(default_factory=EMAConfig)
    awp: AWPConfig = Field(default_factory=AWPConfig)
    fgm: FGMConfig = Field(default_factory=FGMConfig)
    pgd: PGDConfig = Field(default_factory=PGDConfig)
    swa: SWAConfig = Field(default_factory=SWAConfig)
    rdrop: RDropConfig = Field(default_factory=RDropConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    mix: MixConfig = Field(default_factory=MixConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    custom: list[CustomHook] = Field(
        default_factory=list, description="Your own hooks, called after the built-in ones."
    )
