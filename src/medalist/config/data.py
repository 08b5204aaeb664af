"""The sections of what the competition gives and takes: its files, the task, the folds, the
submission format.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from medalist.config.section import Section

TaskType = Literal["binary", "multiclass", "multilabel", "regression"]
Scheme = Literal[
    "kfold", "stratified", "group", "stratified_group", "multilabel_stratified", "quantile"
]


class CompetitionConfig(Section):
    name: str = Field("competition", description="Competition slug; names the Kaggle dataset.")
    data_dir: str = Field("data", description="Folder with the competition files.")
    train_csv: str = Field("train.csv", description="Training table, relative to data_dir.")
    test_csv: str = Field("test.csv", description="Test table, relative to data_dir.")
    sample_submission: str = Field(
        "sample_submission.csv", description="Kaggle's sample submission, relative to data_dir."
    )
    id_column: str = Field(
        "id", description="Column with the row id, shared by train, test and submission."
    )
    target_columns: list[str] = Field(
        default_factory=lambda: ["target"], description="Target column(s) in train.csv."
    )
    folds_dir: str = Field("folds", description="Where folds.csv and folds.json live.")
    outputs_dir: str = Field("outputs", description="Where experiments write their artifacts.")
    submissions_dir: str = Field("submissions", description="Where submission files are written.")


class TaskConfig(Section):
    type: TaskType = Field(
        "multiclass", description="binary, multiclass, multilabel or regression."
    )
    classes: list[str | int] | None = Field(
        None, description="Class labels (multiclass/binary); read from train.csv when null."
    )
    metrics: list[str] = Field(
        default_factory=list,
        description="Metric names (or 'package.module:function'); the first selects the best "
        "epoch and is the CV score. Empty: the task's default.",
    )
    metric_direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Direction of a custom metric given by import path."
    )


class FoldsConfig(Section):
    scheme: Scheme = Field("stratified", description="How rows are split into folds.")
    n_splits: int = Field(5, ge=2, description="Number of folds.")
    random_state: int = Field(42, description="Seed of the shuffling splitters.")
    group_column: str | None = Field(None, description="Column whose groups never cross folds.")
    n_bins: int = Field(10, ge=2, description="Quantile bins for the 'quantile' scheme.")
    test_like: str | None = Field(
        None,
        description="A test_like.csv written by `medalist adversarial` (the id column and "
        "test_like 0/1): the folds spread its flagged train rows, the ones most like the test set, "
        "evenly over the folds and record them in folds.csv, and every experiment also scores its "
        "CV on those rows alone (cv_test_like). Null: folds as before.",
    )


class SubmissionConfig(Section):
    name: str | None = Field(
        None, description="File name under submissions/ (default: experiment)."
    )
    kind: Literal["auto", "label", "probability"] = Field(
        "auto", description="Write class labels or probabilities; auto follows the sample file."
    )
