"""The ``ensemble`` config section: which experiments to blend, how, and how to score it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from medalist.config.section import Section

Method = Literal["mean", "weighted", "rank", "logit", "hill_climb", "stack"]


class EnsembleConfig(Section):
    """Blend or stack experiments' OOF and test predictions (medalist ensemble)."""

    name: str = Field("blend", description="Output folder: outputs/ensemble/<name>/.")
    experiments: list[str | list[str]] = Field(
        default_factory=list,
        description="Members: an experiment under outputs/ or a path to any folder holding "
        "oof.parquet + test.parquet; a list [exp_s1, exp_s2] or a glob 'exp@*' is one member "
        "run with several seeds (predictions averaged over seeds, never the best seed).",
    )
    method: Method = Field(
        "hill_climb",
        description="mean, weighted (weights optimised on OOF), rank (rank-only metrics such "
        "as roc_auc), logit (geometric/logit mean), hill_climb (Caruana) or stack (level 2).",
    )
    metric: str | None = Field(
        None, description="Metric the weights/selection optimise; null: the task's first metric."
    )
    hill_iterations: int = Field(
        100,
        ge=1,
        description="Hill climbing: at most this many models added (stops earlier "
        "when no candidate improves the OOF score).",
    )
    hill_patience: int = Field(
        10,
        ge=0,
        description="Hill climbing: steps to go on after the OOF score stops improving, "
        "keeping the best selection seen; lets a model be added again to make room for a "
        "small weight on another. 0: stop at the first step that does not improve.",
    )
    hill_replacement: bool = Field(
        True, description="Hill climbing: a model may be added more than once (Caruana)."
    )
    stacker: Literal["logistic", "ridge", "lightgbm"] = Field(
        "logistic",
        description="Level-2 model: logistic (classification), ridge (regression, binary, "
        "multilabel) or lightgbm (when installed).",
    )
    stacker_strength: float = Field(
        1.0, gt=0, description="Level-2 regularisation: C of logistic, alpha of ridge."
    )
    stack_test: Literal["fold_average", "refit"] = Field(
        "fold_average",
        description="Stack test predictions: the average of the per-fold level-2 models, or "
        "one level-2 model refitted on every OOF row.",
    )
    random_state: int = Field(42, description="Seed of the level-2 models that use one.")
    submit: bool = Field(
        True, description="Also write submissions/<name>.csv from the blended test table."
    )

    @model_validator(mode="after")
    def _check(self) -> EnsembleConfig:
        if "/" in self.name or self.name in ("", ".", ".."):
            raise ValueError(f"ensemble.name: '{self.name}' must be a plain folder name")
        for member in self.experiments:
            if isinstance(member, list) and not member:
                raise ValueError("ensemble.experiments: a seed group [] is empty")
        return self
