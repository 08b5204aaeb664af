"""The ``distill`` section: a student trained on a teacher experiment's soft targets, per fold.

Fold k's soft targets come from the teacher's fold-k model, trained on exactly fold k's training
rows, never from the teacher's OOF predictions (whose values on the other folds' rows were made by
models that saw fold k's labels). A full-fit student (``train.folds: [-1]``) learns from the
teacher's full fit, which has no validation rows to leak into. ``medalist distill`` writes them;
``train`` mixes them with the labels, for any student that takes soft targets: a network (image,
text, the table MLP; in a pseudo round too), a binary, multilabel or regression GBDT, a ridge
regression. A multiclass GBDT and a logistic regression take class labels only and are refused.
"""

from __future__ import annotations

from pydantic import Field

from medalist.config.section import Section


class DistillConfig(Section):
    """Knowledge distillation from a teacher experiment's per-fold models (``medalist distill``)."""

    teacher: str | None = Field(
        None,
        description="The teacher experiment (outputs/<teacher>/, trained on this project's folds, "
        "with weights for every fold the student trains); null: no distillation.",
    )
    temperature: float = Field(
        2.0,
        ge=1,
        description="T: the teacher's logits / T through the task's activation (sigmoid for "
        "binary and multilabel, softmax for multiclass); ignored for regression.",
    )
    alpha: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The student's target: alpha * the teacher's soft target + (1 - alpha) * the "
        "label (classification: in probability space, the label smoothed by "
        "tricks.loss.label_smoothing first).",
    )
