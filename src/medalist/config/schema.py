"""The whole :class:`Config`: one section per stage or feature, and the checks across them.

Every key has a type and help text (``medalist config --describe`` lists them). The sections
live beside this module: :mod:`~medalist.config.data` (competition, task, folds, submission),
:mod:`~medalist.config.inputs` (image, model, text, mlm), :mod:`~medalist.config.stages` (train,
infer, pseudo, tracking), :mod:`~medalist.config.honest` (sanity, adversarial), :mod:`~medalist.config.sweep` (sweep), :mod:`~medalist.config.tabular` (tables), and the tricks, ensemble and
kaggle sections in their own modules.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import yaml
from pydantic import Field, model_validator

from medalist.config.data import CompetitionConfig, FoldsConfig, SubmissionConfig, TaskConfig
from medalist.config.distill import DistillConfig
from medalist.config.ensemble import EnsembleConfig
from medalist.config.honest import AdversarialConfig, SanityConfig
from medalist.config.inputs import ImageConfig, MlmConfig, ModelConfig, TextConfig
from medalist.config.kaggle import KaggleConfig
from medalist.config.section import Section
from medalist.config.segmentation import SegmentationConfig
from medalist.config.stages import InferConfig, PseudoConfig, TrackingConfig, TrainConfig
from medalist.config.sweep import SweepConfig
from medalist.config.tabular import TabularConfig
from medalist.config.tricks import TricksConfig
from medalist.errors import ConfigError
from medalist.modalities import MODALITIES
from medalist.modalities.text_views import expand_text_views

ModalityName = Literal[tuple(MODALITIES)]  # the registered modalities' names


def section(cls: type[Section], *, retrains: bool, added: bool = False):
    """A section of :class:`Config`; ``retrains``: whether changing it trains the folds again
    (the train stage's fingerprint, ``medalist.layout.training_hash``, covers it); ``added``:
    a retraining section added after folds were first fingerprinted, left out of the
    fingerprint while at its defaults (folds trained before it existed are not stale)."""
    return Field(default_factory=cls, json_schema_extra={"retrains": retrains, "added": added})


class Config(Section):
    """The whole resolved configuration of a competition project."""

    modality: ModalityName = Field(
        "image", description="Input modality.", json_schema_extra={"retrains": True}
    )
    competition: CompetitionConfig = section(CompetitionConfig, retrains=True)
    task: TaskConfig = section(TaskConfig, retrains=True)
    folds: FoldsConfig = section(FoldsConfig, retrains=True)
    image: ImageConfig = section(ImageConfig, retrains=True)
    model: ModelConfig = section(ModelConfig, retrains=True)
    text: TextConfig = section(TextConfig, retrains=True)
    mlm: MlmConfig = section(MlmConfig, retrains=False)
    tabular: TabularConfig = section(TabularConfig, retrains=True, added=True)
    segmentation: SegmentationConfig = section(SegmentationConfig, retrains=True, added=True)
    train: TrainConfig = section(TrainConfig, retrains=True)
    tricks: TricksConfig = section(TricksConfig, retrains=True)
    distill: DistillConfig = section(DistillConfig, retrains=True, added=True)
    infer: InferConfig = section(InferConfig, retrains=False)
    pseudo: PseudoConfig = section(PseudoConfig, retrains=False)
    submission: SubmissionConfig = section(SubmissionConfig, retrains=False)
    ensemble: EnsembleConfig = section(EnsembleConfig, retrains=False)
    kaggle: KaggleConfig = section(KaggleConfig, retrains=False)
    tracking: TrackingConfig = section(TrackingConfig, retrains=False)
    sanity: SanityConfig = section(SanityConfig, retrains=False)
    adversarial: AdversarialConfig = section(AdversarialConfig, retrains=False)
    sweep: SweepConfig = section(SweepConfig, retrains=False)
    stages: list[Literal["folds", "distill", "train", "infer", "pseudo", "submission"]] = Field(
        default_factory=lambda: ["folds", "train", "infer", "submission"],
        json_schema_extra={"retrains": False},
        description="Stages that `medalist run` runs, in order.",
    )

    @model_validator(mode="after")
    def _check_combinations(self) -> Config:
        task, scheme = self.task.type, self.folds.scheme
        targets = self.competition.target_columns
        if not targets:
            raise ValueError("competition.target_columns: at least one target column is needed")
        if scheme in ("group", "stratified_group") and not self.folds.group_column:
            raise ValueError(f"folds.group_column: scheme '{scheme}' needs a group column")
        if scheme == "multilabel_stratified" and task != "multilabel":
            raise ValueError("folds.scheme: 'multilabel_stratified' needs task.type multilabel")
        if scheme == "quantile" and task != "regression":
            raise ValueError("folds.scheme: 'quantile' bins a continuous target; use regression")
        if scheme in ("stratified", "stratified_group") and task in ("multilabel", "regression"):
            hint = "multilabel_stratified" if task == "multilabel" else "quantile"
            raise ValueError(
                f"folds.scheme: '{scheme}' cannot stratify a {task} target; use '{hint}'"
            )
        if task in ("binary", "multiclass") and len(targets) != 1:
            raise ValueError(f"competition.target_columns: a {task} task has exactly one target")
        if task == "multilabel" and len(targets) < 2:
            raise ValueError("competition.target_columns: a multilabel task needs >= 2 targets")
        if self.image.channels not in (1, 3):
            raise ValueError("image.channels: must be 1 or 3")
        if self.modality == "text":
            self._check_text()
        if self.modality == "tabular":
            self._check_tabular()
        if self.modality == "segmentation":
            self._check_segmentation()
        if self.train.pseudo_round is not None and not self.pseudo.allow_test:
            raise ValueError("train.pseudo_round: pseudo.allow_test is false (the rules forbid it)")
        if self.train.folds and -1 in self.train.folds and len(self.train.folds) > 1:
            raise ValueError("train.folds: [-1] (full fit) cannot be combined with other folds")
        return self

    def _check_text(self) -> None:
        if not self.text.backbone:
            raise ValueError("text.backbone: modality text needs a local model folder or a hub id")
        if self.tricks.mix.enabled:
            raise ValueError("tricks.mix: mixup and cutmix mix images; modality text has none")
        text_columns = {self.text.text_column, self.text.pair_column, *self.text.context_columns}
        clash = sorted(text_columns & set(self.competition.target_columns))
        if clash:
            raise ValueError(f"text: column(s) {clash} are also target columns")
        try:
            expand_text_views(self.infer.tta)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def _check_tabular(self) -> None:
        # A boosted model is fitted by its library, not by medalist's loop: the loop's tricks
        # would silently do nothing.
        changed = _changed_keys(self.tricks.model_dump(), TricksConfig().model_dump(), "tricks")
        if changed and self.tabular.boosted:
            raise ValueError(
                f"{changed[0]}: training tricks act in medalist's training loop; a "
                f"{self.tabular.model} model is fitted by its library (tabular.params)"
            )
        if self.tricks.mix.enabled:
            raise ValueError("tricks.mix: mixup and cutmix mix images; modality tabular has none")
        if self.infer.tta != ["identity"]:
            raise ValueError("infer.tta: a table has no test-time views; leave ['identity']")
        if self.train.pseudo_round is not None:
            raise ValueError(
                "train.pseudo_round: pseudo labels are not yet supported for tabular models"
            )
        targets = set(self.competition.target_columns)
        for key in ("features", "categorical", "text_columns"):
            clash = sorted(set(getattr(self.tabular, key) or ()) & targets)
            if clash:
                raise ValueError(f"tabular.{key}: {clash} are target columns")
        for key in ("features", "text_columns"):
            if self.competition.id_column in (getattr(self.tabular, key) or ()):
                raise ValueError(f"tabular.{key}: '{self.competition.id_column}' is the id column")

    def _check_segmentation(self) -> None:
        # What acts on table rows or class labels, or what masks do not flow through yet:
        # refused by key, never silently ignored.
        tricks = self.tricks
        refused = {
            "tricks.mix": (tricks.mix.enabled, "mixup and cutmix mix labels, not masks"),
            "tricks.rdrop": (tricks.rdrop.enabled, "R-Drop compares class distributions"),
            "tricks.loss.label_smoothing": (
                tricks.loss.label_smoothing != 0,
                "segmentation.loss is the loss of masks",
            ),
            "tricks.loss.focal_gamma": (
                tricks.loss.focal_gamma != 0,
                "segmentation.loss is the loss of masks (it has focal)",
            ),
            "tricks.loss.class_weights": (
                tricks.loss.class_weights is not None,
                "segmentation.loss is the loss of masks",
            ),
            "tricks.loss.ohem_ratio": (
                tricks.loss.ohem_ratio is not None,
                "a mask loss is one value per batch, not per row",
            ),
            "tricks.sampler.balanced": (tricks.sampler.balanced, "masks have no class per row"),
            "pseudo.balance": (self.pseudo.balance, "an image's mask has no single class"),
            "pseudo.threshold": (
                isinstance(self.pseudo.threshold, list),
                "one confidence per image (the mean over its pixels of max(p, 1 - p))",
            ),
        }
        for key, (used, why) in refused.items():
            if used:
                raise ValueError(f"{key}: not for modality segmentation ({why})")

    def hash(self) -> str:
        """A short, stable hash of the resolved config (key order independent)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def added_sections() -> tuple[str, ...]:
    """The retraining sections added since folds were first fingerprinted (see ``section``)."""
    return tuple(
        name
        for name, field in Config.model_fields.items()
        if (field.json_schema_extra or {}).get("added")
    )


def _changed_keys(value: dict, default: dict, path: str) -> list[str]:
    """The dotted keys under ``path`` whose value differs from the default."""
    if isinstance(value, dict) and isinstance(default, dict):
        return [
            found
            for key in value
            for found in _changed_keys(value[key], default.get(key), f"{path}.{key}")
        ]
    return [] if value == default else [path]


def training_sections() -> tuple[str, ...]:
    """The :class:`Config` fields whose change trains the folds again, in field order."""
    return tuple(
        name
        for name, field in Config.model_fields.items()
        if (field.json_schema_extra or {}).get("retrains")
    )
