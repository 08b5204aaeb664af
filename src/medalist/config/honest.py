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


class AdversarialConfig(Section):
    """``medalist adversarial``: the experiment's model trained to tell test rows from train
    rows; a CV ROC AUC of 0.5 means the test set looks like train."""

    epochs: int = Field(
        2, ge=1, description="Epochs per fold of a network (the last epoch's weights are kept)."
    )
    rounds: int = Field(
        300,
        ge=1,
        description="Boosting rounds per fold of a GBDT (at most tabular.rounds), without early "
        "stopping: stopping on the validation rows would pick the round that separates them "
        "best, an optimistic AUC.",
    )
    n_splits: int = Field(
        5,
        ge=2,
        description="Folds of the train-versus-test run (its own: stratified on the label, grouped "
        "when the project's folds are).",
    )
    seed: int = Field(0, description="Seed of those folds and of the run.")
    z: float = Field(
        3.0,
        gt=0,
        description="A shift is found when the AUC beats 0.5 by more than z standard errors "
        "(the AUC's spread when train and test come from one distribution).",
    )
    shift_auc: float = Field(
        0.6,
        gt=0.5,
        lt=1,
        description="A found shift at or above this AUC is a 'shift' (the CV may not track the "
        "leaderboard); below it a 'slight shift'.",
    )
    top: int = Field(
        20, ge=1, description="The most test-like train rows listed in adversarial.json."
    )
    max_weight: float = Field(
        10.0,
        ge=1,
        description="weights.csv: density-ratio weights p/(1-p), mean 1 over train rows, are "
        "clipped at this value.",
    )
    test_like_fraction: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="test_like.csv: the share of train rows flagged as the most test-like.",
    )
