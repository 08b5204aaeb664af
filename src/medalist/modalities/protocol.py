"""What a modality provides: the one interface the train, infer, pseudo and package stages use.

A modality is a module with these functions (``typing.Protocol`` checks modules structurally:
``isinstance(module, Modality)``). Rows arrive as a table (``pd.DataFrame``) with the targets
already encoded by the task; the task, not the modality, decides the head size, the loss and
the prediction columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medalist.config import Config
from medalist.tasks import Task


class FoldLearner(Protocol):
    """A fold's model that its own library fits (a GBDT), or that needs what the fold's training
    rows show before it can be built (a table MLP): the same fold contract as a network (fit on
    the fold's training rows, predict its validation rows and the test set, files in the fold's
    folder). Rows reach it as the ``frame`` of the modality's datasets."""

    name: str  # what fits it (lightgbm), in the log and the fold's scores.json

    def fit(
        self,
        train: pd.DataFrame,
        targets: np.ndarray,
        valid: pd.DataFrame | None,
        valid_targets: np.ndarray | None,
        folder: Path,
        source: str,
        fold: int = 0,
        distilled: np.ndarray | None = None,
    ):
        """Fit fold ``fold`` on ``train``, stop early on ``valid`` (None: a full fit), write its files
        into ``folder``; returns ``files`` (what it predicts with, in order), ``valid`` (the
        validation rows' predictions), ``best_rounds``, ``history`` and ``importance``.

        ``targets`` are the training rows' labels as the task encodes them. ``distilled``: what
        the model learns from instead (``distill.teacher``: float probabilities in the shape of
        the loss's soft targets, or values), while the labels still serve what needs labels (a
        target encoding); None: the labels. The validation rows always keep their labels."""

    def predict(self, frame: pd.DataFrame, paths: list[Path], source: str) -> np.ndarray:
        """The rows' predictions (rows x the task's prediction columns) from a fold's files."""

    def refuses_soft_targets(self) -> str | None:
        """Why this learner cannot learn from ``distilled`` targets (it fits class labels only),
        naming the config key to change; None: it can."""


@runtime_checkable
class Modality(Protocol):
    def check_inputs(self, cfg: Config, df: pd.DataFrame, split: str, source: str) -> object:
        """Check every row's inputs before any long work (files exist, text is text...).

        ``split`` is ``train`` or ``test``; ``source`` names the table in errors. Raises
        ``DataError`` or ``ConfigError`` naming the file, the row or the config key.
        """

    def build_dataset(
        self,
        cfg: Config,
        df: pd.DataFrame,
        targets: np.ndarray | None,
        *,
        split: str,
        train: bool,
        source: str,
        weights: np.ndarray | None = None,
        views: list[str] | None = None,
    ) -> Dataset:
        """The rows as a dataset of ``{"index", "input", ["target"], ["weight"]}`` samples.

        ``train``: training augmentation; ``weights``: a loss weight per row (pseudo labels);
        ``views``: the TTA views the dataset must prepare itself (text truncations). A dataset
        may bring ``collate`` and ``batch_sampler`` (see ``training.runtime.make_loader``) and
        ``set_epoch`` (augmentation seeded by epoch).
        """

    def combine(self, datasets: list[Dataset]) -> Dataset:
        """Labelled and pseudo-labelled rows as one training set; every sample has a weight."""

    def fold_learner(self, cfg: Config, task: Task) -> FoldLearner | None:
        """The learner of a fold when it is not trained by gradient steps (a boosted model),
        else None: the fold trains in medalist's loop on :meth:`build_model`."""

    def build_model(self, cfg: Config, task: Task) -> torch.nn.Module:
        """The model with the task's head (``task.num_outputs``), from local or cached weights
        only (never a download: :meth:`check_inputs` fetches for training)."""

    def backbone_names(self, cfg: Config) -> list[tuple[str, str]]:
        """The pretrained weights the config names, as (config key, name or path): what
        ``medalist weights`` resolves, fetches and verifies."""

    def expand_views(self, names: list[str], key: str = "infer.tta") -> list[str]:
        """The TTA view names checked (an unknown one is a ``ConfigError`` naming ``key``)
        and expanded (``d4`` -> its eight symmetries)."""

    def starting_weights(self, cfg: Config) -> list[Path]:
        """The local files the model starts from: their content is part of the fingerprint
        that decides whether a fold trains again."""

    def stacked_experiments(self, cfg: Config) -> list[str]:
        """The experiments whose test predictions this one's test rows need as inputs (a model
        stacked on others' predictions), in order: the bundle predicts them first."""

    def packaged_folder(self, cfg: Config) -> tuple[str, Path] | None:
        """A folder the offline bundle must carry besides the trained weights, and the config
        key that points to it (the text backbone's config and tokenizer), or None."""
