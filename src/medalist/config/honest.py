"""The sections of the tools that keep the CV honest: the leak alarm (``medalist sanity``) and the
train-versus-test classifier (``medalist adversarial``).
"""

from __future__ import annotations

from pydantic import Field

from medalist.config.section import Section


class SanityConfig(Section):
    """``medalist sanity``: the experiment trained on labels that carry no signal, whose CV must
    then be at chance; above chance means something leaks."""

    epochs: int = Field(
        3,
        ge=1,
        description="Epochs per fold of the shuffled-label run (short: memorised leaks show early).",
    )
    rounds: int = Field(
        300,
        ge=1,
        description="Boosting rounds per fold of the shuffled-label run of a GBDT (tabular), "
        "without early stopping: stopping on shuffled validation labels would pick the round that "
        "fits their noise best, a small leak of its own.",
    )
    folds: list[int] | None = Field(
        None, description="Folds to train (null: all); the CV is scored on their OOF rows."
    )
    seed: int = Field(0, description="Seed of the label shuffle and of the short run.")
    permutations: int = Field(
        200,
        ge=20,
        description="Label permutations scored against the fixed OOF predictions: their mean is "
        "chance, their standard deviation the standard error.",
    )
    z: float = Field(
        3.0,
        gt=0,
        description="Alarm when the CV beats chance by more than z standard errors.",
    )
    duplicates: bool = Field(
        True,
        description="Find rows whose model inputs are identical (one pass over the data): they "
        "share a shuffled label, so copies across folds show up as a leak, and are listed.",
    )
