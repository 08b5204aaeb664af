"""Tasks decide the head size, the loss, the activation, the prediction columns and the metrics.

The training loop asks a task for these and never branches on the task's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medalist.config import Config
from medalist.errors import DataError, show_value
from medalist.metrics import Metric, get_metric
from medalist.modalities import OWN_TASKS

DEFAULT_METRICS = {
    "binary": ["roc_auc", "log_loss", "accuracy"],
    "multiclass": ["accuracy", "log_loss", "macro_f1"],
    "multilabel": ["roc_auc", "log_loss"],
    "regression": ["rmse", "mae"],
}


@dataclass
class Task:
    """What a competition asks for, independent of the modality.

    Attributes:
        type: binary, multiclass, multilabel or regression.
        target_columns: the target column(s) of train.csv.
        classes: class labels (binary, multiclass), in the order of the model's outputs.
        metrics: the configured metrics; the first one selects checkpoints and is the CV score.
    """

    type: str
    target_columns: list[str]
    classes: list = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)

    # None: the predictions are table rows, which the stages write, join and score themselves.
    # A task whose predictions are not rows (segmentation masks) brings the object that does
    # (:class:`medalist.modalities.segmentation.predictions.MaskPredictions`).
    own_predictions = None

    @property
    def num_outputs(self) -> int:
        if self.type == "multiclass":
            return len(self.classes)
        if self.type == "binary":
            return 1
        return len(self.target_columns)

    @property
    def main_metric(self) -> Metric:
        return self.metrics[0]

    @property
    def pred_columns(self) -> list[str]:
        """Prediction table columns: ``p_<class>`` for classification, ``pred_<target>`` else."""
        if self.type == "multiclass":
            return [f"p_{c}" for c in self.classes]
        if self.type == "binary":
            return [f"p_{self.classes[1]}"]
        if self.type == "multilabel":
            return [f"p_{c}" for c in self.target_columns]
        return [f"pred_{c}" for c in self.target_columns]

    def encode_targets(self, df: pd.DataFrame, source: str = "train.csv") -> np.ndarray:
        """Targets as the array the loss and the metrics take; bad values name their row."""
        missing = [c for c in self.target_columns if c not in df.columns]
        if missing:
            raise DataError(f"{source}: missing target column(s) {missing}")
        if self.type in ("binary", "multiclass"):
            column = self.target_columns[0]
            lookup = {str(c): i for i, c in enumerate(self.classes)}
            values = df[column].astype(str)
            bad = ~values.isin(list(lookup))
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{source}: row {row} ({column}={show_value(df[column].iloc[row])}) is not one of the "
                    f"classes {self.classes}"
                )
            return values.map(lookup).to_numpy(dtype=np.int64)
        values = df[self.target_columns].apply(pd.to_numeric, errors="coerce")
        bad = values.isna().any(axis=1).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: row {row} has a missing or non-numeric target")
        array = values.to_numpy(dtype=np.float32)
        if self.type == "multilabel" and not np.isin(array, (0.0, 1.0)).all():
            row = int(np.flatnonzero(~np.isin(array, (0.0, 1.0)).all(axis=1))[0])
            raise DataError(f"{source}: row {row} has a multilabel target that is not 0 or 1")
        return array

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-sample loss, shape (batch,); reduce it where the loop needs to."""
        logits = logits.float()
        if self.type == "multiclass":
            return F.cross_entropy(logits, target, reduction="none")
        if self.type == "binary":
            return F.binary_cross_entropy_with_logits(
                logits[:, 0], target.float(), reduction="none"
            )
        if self.type == "multilabel":  # hard 0/1 labels come as integers in training
            return F.binary_cross_entropy_with_logits(
                logits, target.float(), reduction="none"
            ).mean(1)
        return F.mse_loss(logits, target, reduction="none").mean(1)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits to what the prediction table stores (probabilities or values)."""
        logits = logits.float()
        if self.type == "multiclass":
            return logits.softmax(-1)
        if self.type in ("binary", "multilabel"):
            return logits.sigmoid()
        return logits

    def score(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        return {m.name: m(y_true, y_pred) for m in self.metrics}


def infer_classes(cfg: Config, train: pd.DataFrame) -> list:
    """The configured classes, or the sorted distinct values of the target column."""
    if cfg.task.type not in ("binary", "multiclass"):
        return []
    if cfg.task.classes is not None:
        return list(cfg.task.classes)
    column = cfg.competition.target_columns[0]
    if column not in train.columns:
        raise DataError(f"train.csv: missing target column '{column}'")
    values = train[column].dropna().unique().tolist()
    classes = sorted(values, key=lambda v: (isinstance(v, str), v))
    if cfg.task.type == "binary" and len(classes) != 2:
        raise DataError(f"train.csv: a binary target has 2 values, '{column}' has {classes[:10]}")
    return classes


def build_task(cfg: Config, train: pd.DataFrame) -> Task:
    """The config's task: one of this module's, or the one a modality brings
    (:data:`medalist.modalities.OWN_TASKS`: segmentation's masks)."""
    own = own_task(cfg)
    if own is not None:
        return own
    names = cfg.task.metrics or DEFAULT_METRICS[cfg.task.type]
    metrics = [get_metric(name, cfg.task.metric_direction) for name in names]
    return Task(
        cfg.task.type, list(cfg.competition.target_columns), infer_classes(cfg, train), metrics
    )


def own_task(cfg: Config):
    """The task a modality brings (:data:`medalist.modalities.OWN_TASKS`), built from the config
    alone; None when the task is one of this module's (built with train.csv's classes)."""
    module = OWN_TASKS.get(cfg.modality)
    return None if module is None else import_module(module).build_task(cfg, None)
