"""The section of ``medalist sweep``: which config keys a hyperparameter sweep varies, over what
ranges, and how each trial trains (few folds, few epochs) so that many trials stay cheap.

``space`` maps dotted config keys to a distribution; nested mappings are read as dotted keys, so
``{tabular: {params: {num_leaves: {...}}}}`` and ``sweep.space.tabular.params.num_leaves=...`` on
the command line name the same key as ``tabular.params.num_leaves``.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from medalist.config.section import Section


class FloatRange(Section):
    """A float drawn between ``low`` and ``high`` (on a log scale with ``log``)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = Field(False, description="Draw on a log scale (learning rates, regularisation).")

    def problem(self) -> str | None:
        """What makes the range empty or impossible, if anything."""
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            return f"needs finite low < high, got {self.low}, {self.high}"
        if self.log and self.low <= 0:
            return f"log needs low > 0, got {self.low}"
        return None


class IntRange(Section):
    """An integer drawn from ``low``, ``low + step``, ... up to ``high``."""

    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1, description="Spacing of the values.")
    log: bool = Field(False, description="Draw on a log scale (step must then be 1).")

    def problem(self) -> str | None:
        if self.low >= self.high:
            return f"needs low < high, got {self.low}, {self.high}"
        if self.log and (self.low <= 0 or self.step != 1):
            return "log needs low > 0 and step 1"
        return None


class Choice(Section):
    """One of ``choices`` (numbers, strings, booleans or null)."""

    type: Literal["categorical"]
    choices: list[bool | int | float | str | None] = Field(min_length=1)

    def problem(self) -> str | None:
        if len({repr(c) for c in self.choices}) != len(self.choices):
            return f"{self.choices} lists a choice twice"
        return None


Distribution = Annotated[FloatRange | IntRange | Choice, Field(discriminator="type")]


def flatten_space(space: object, prefix: str = "") -> object:
    """``{a: {b: {type: ...}}}`` as ``{'a.b': {type: ...}}``: a mapping with a ``type`` key is a
    distribution, any other mapping a level of the key's path."""
    if not isinstance(space, dict):
        return space
    flat: dict = {}
    for key, value in space.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and "type" not in value:
            flat.update(flatten_space(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


class SweepConfig(Section):
    """``medalist sweep``: a hyperparameter search whose trials are experiments of their own
    (``outputs/sweep/<name>/``), resumable, with its best score marked as optimistic."""

    space: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Dotted config key -> {type: float, low, high, log} | {type: int, low, high, "
        "step, log} | {type: categorical, choices: [...]}; keys inside tabular.params reach the "
        "library unchecked.",
    )
    trials: int = Field(20, ge=1, description="Trials of the study (finished ones count).")
    folds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="Folds each trial trains; its score is their mean. Few folds: short trials; "
        "the others stay unseen by the search.",
    )
    epochs: int | None = Field(
        None, ge=1, description="Epochs per fold of a network's trial; null: train.epochs."
    )
    sampler: Literal["tpe", "random"] = Field(
        "tpe", description="tpe (optuna's Tree-structured Parzen Estimator) or random."
    )
    pruner: Literal["median", "none"] = Field(
        "median",
        description="median: a trial whose score after a fold is worse than the median of the "
        "finished trials' at that fold stops there (needs two or more folds); none.",
    )
    startup_trials: int = Field(
        5,
        ge=0,
        description="Trials drawn at random before TPE models the space, and finished before "
        "the median pruner stops any.",
    )
    seed: int = Field(0, description="Seed of the sampler.")
    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The study's name and folder, outputs/sweep/<name>/; null: the experiment.",
    )
    metric: str | None = Field(
        None,
        description="The metric trials are ranked by (a name or 'package.module:function'); "
        "null: the task's main metric. Its direction comes from medalist.metrics.",
    )

    @field_validator("space", mode="before")
    @classmethod
    def _dotted(cls, space: object) -> object:
        return flatten_space(space)

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        for key, distribution in self.space.items():
            problem = distribution.problem()
            if problem:
                raise ValueError(f"sweep.space: {key}: {distribution.type}: {problem}")
        if any(fold < 0 for fold in self.folds):
            raise ValueError(f"sweep.folds: {self.folds}: a full fit (-1) has no rows to score")
        if len(set(self.folds)) != len(self.folds):
            raise ValueError(f"sweep.folds: {self.folds} lists a fold twice")
        return self
