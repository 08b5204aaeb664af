"""The config sections a stage reads, and the whole :class:`Config` with its cross-checks.

Every key has a type and help text (``medalist config --describe`` lists them); the sections of
the tricks, the ensemble and the offline bundle are in their own modules beside this one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal

import yaml
from pydantic import ConfigDict, Field, model_validator

from medalist.config.ensemble import EnsembleConfig
from medalist.config.kaggle import KaggleConfig
from medalist.config.section import Section
from medalist.config.tricks import TricksConfig
from medalist.errors import ConfigError
from medalist.modalities import MODALITIES
from medalist.modalities.text_views import expand_text_views

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


class Transform(Section):
    """One albumentations transform: its class name and keyword arguments."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description="albumentations class name, e.g. HorizontalFlip.")


class ImageConfig(Section):
    image_column: str = Field("image", description="Column with the image file name.")
    train_dir: str = Field("train_images", description="Train image folder, relative to data_dir.")
    test_dir: str = Field("test_images", description="Test image folder, relative to data_dir.")
    size: int = Field(224, ge=8, description="Images are resized to size x size.")
    channels: int = Field(3, description="1 (grayscale) or 3 (RGB).")
    train_transforms: list[Transform] = Field(
        default_factory=list, description="Augmentations applied after the resize, train only."
    )
    eval_transforms: list[Transform] = Field(
        default_factory=list, description="Deterministic transforms for validation and test."
    )
    mean: list[float] | None = Field(
        None, description="Normalisation mean per channel (0-1 scale)."
    )
    std: list[float] | None = Field(None, description="Normalisation std per channel (0-1 scale).")


class ModelConfig(Section):
    backbone: str = Field(
        "resnet18",
        description="timm model name, with a pretrained tag where wanted (convnext_small.fb_in22k).",
    )
    pretrained: bool = Field(
        False,
        description="Start from the backbone's pretrained weights (timm's, through the Hugging "
        "Face cache; `medalist weights` fetches them). Ignored with pretrained_path.",
    )
    pretrained_path: str | None = Field(
        None, description="Local weights file (safetensors) for the backbone; never downloaded."
    )
    grad_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass (timm's set_grad_checkpointing, "
        "transformers' gradient checkpointing): less memory, about 30% more compute.",
    )
    drop_rate: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier.")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="Stochastic depth rate.")


class TextConfig(Section):
    """Text columns, tokenisation, batching and the transformers backbone (modality: text)."""

    backbone: str | None = Field(
        None,
        description="A local folder of a transformers model (config.json, safetensors weights, "
        "tokenizer), e.g. outputs/mlm/<name>, or a Hugging Face hub id "
        "(microsoft/deberta-v3-base) read from the hub cache (`medalist weights` fetches it). "
        "Required when modality is text.",
    )
    text_column: str = Field("text", description="Column with the (first) text.")
    pair_column: str | None = Field(
        None, description="Column with a second text, encoded as a pair (e.g. anchor/target)."
    )
    context_columns: list[str] = Field(
        default_factory=list,
        description="Columns appended to the last segment, joined by the tokenizer's separator.",
    )
    max_length: int = Field(256, ge=8, description="Tokens per row, special tokens included.")
    truncation: Literal["head", "tail", "head_tail"] = Field(
        "head", description="Which tokens a long text keeps: the start, the end, or both."
    )
    head_fraction: float = Field(
        0.25, gt=0, lt=1, description="head_tail: share kept from the start (128 of 510 is usual)."
    )
    pooling: Literal["cls", "mean", "attention"] = Field(
        "mean",
        description="How token states become one vector: first token, masked mean, attention.",
    )
    concat_layers: int = Field(
        1, ge=1, description="Pool each of the last N hidden layers and concatenate (4 is usual)."
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the pooled vector.")
    multi_sample_dropout: int = Field(
        1, ge=1, description="Dropout masks whose logits are averaged in training (5 is usual)."
    )
    hidden_dropout: float | None = Field(
        None, ge=0, lt=1, description="Backbone hidden/attention dropout; null: the model's own."
    )
    reinit_layers: int = Field(0, ge=0, description="Re-initialise the top N transformer layers.")
    freeze_embeddings: bool = Field(False, description="Do not train the embedding layer.")
    freeze_layers: int = Field(0, ge=0, description="Do not train the bottom N transformer layers.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, about 30% slower."
    )
    dynamic_padding: bool = Field(
        True, description="Pad each batch to its longest row; false pads all to max_length."
    )
    bucket_size: int = Field(
        50,
        ge=0,
        description="Training batches per length bucket (rows shuffled, sorted within a bucket, "
        "batches shuffled); 0: no bucketing.",
    )
    pad_to_multiple_of: int | None = Field(
        8, ge=1, description="Round padded lengths up to a multiple of this (tensor cores)."
    )


class MlmConfig(Section):
    """Domain-adaptive masked-language-model pretraining (`medalist pretrain-mlm`)."""

    name: str = Field("mlm", description="Output folder: <outputs_dir>/mlm/<name>/.")
    backbone: str | None = Field(
        None, description="Local model folder to adapt; null: text.backbone."
    )
    include_test: bool = Field(
        True, description="Also learn from the test set's text (false where the rules forbid it)."
    )
    extra_files: list[str] = Field(
        default_factory=list,
        description="Unlabelled text, relative to data_dir: .txt (a document per non-empty line), "
        ".csv or .parquet (column extra_column).",
    )
    extra_column: str | None = Field(
        None, description="Text column of extra .csv/.parquet files; null: text.text_column."
    )
    max_length: int = Field(
        256, ge=8, description="Chunk length in tokens; longer documents are split into chunks."
    )
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Share of tokens masked.")
    whole_word_mask: bool = Field(
        True, description="Mask whole words (fast tokenizers); else single tokens."
    )
    epochs: int = Field(3, ge=1, description="Passes over the corpus.")
    batch_size: int = Field(32, ge=1, description="Chunks per batch and process.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases/norms).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps of warmup.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    freeze_layers: int = Field(
        0, ge=0, description="Keep the embeddings and the bottom N layers fixed (faster)."
    )
    valid_fraction: float = Field(
        0.1, gt=0, lt=1, description="Documents held out to measure perplexity before and after."
    )
    seed: int = Field(42, description="Seed of the split, the masks and the weights' updates.")


class TrainConfig(Section):
    experiment: str = Field("exp001", description="Experiment name: outputs/<experiment>/.")
    folds: list[int] | None = Field(
        None, description="Folds to train; null: all folds; [-1]: one full fit on every row."
    )
    epochs: int = Field(10, ge=1, description="Epochs per fold.")
    batch_size: int = Field(32, ge=1, description="Batch size per process and micro-step.")
    eval_batch_size: int | None = Field(None, description="Batch size for evaluation (default 2x).")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay (not on biases/norms).")
    layer_decay: float | None = Field(
        None, gt=0, le=1, description="Layer-wise LR decay per layer from the top (0.7-0.95)."
    )
    head_lr: float | None = Field(None, gt=0, description="Learning rate of the head; null: lr.")
    scheduler: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR schedule.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps of linear warmup.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping norm; null disables.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="accelerate precision."
    )
    sync_bn: bool = Field(
        False,
        description="Batch norm over the rows of every process (SyncBatchNorm) when several run; "
        "else each normalises its own batch_size rows. Matters for small per-process batches.",
    )
    seed: int = Field(42, description="Seed of weights, data order and augmentation.")
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="Also save a resumable checkpoint every N optimizer steps (0: epoch ends).",
    )
    max_bad_steps: int = Field(
        5, ge=1, description="Stop after this many optimizer steps in a row with a non-finite loss."
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    compile: bool = Field(
        False,
        description="torch.compile the model (saved weights carry no _orig_mod. prefix: a compiled "
        "and an uncompiled run load each other's).",
    )
    channels_last: bool = Field(
        False,
        description="Image models and their batches in channels_last memory format (faster convs "
        "on tensor-core GPUs under mixed precision).",
    )
    cpu: bool = Field(False, description="Force the CPU even when a GPU is present.")
    progress: bool = Field(True, description="Show progress bars.")
    keep: Literal["best", "last"] = Field(
        "best",
        description="Weights a fold keeps: best validation epoch (CV a little optimistic) or last.",
    )
    pseudo_round: int | None = Field(
        None, description="Add the pseudo labels of this round to each fold's training rows."
    )


class InferConfig(Section):
    batch_size: int = Field(64, ge=1, description="Inference batch size.")
    tta: list[str] = Field(
        default_factory=lambda: ["identity"],
        description="TTA views. Image: identity, hflip, vflip, transpose, rot90/180/270, d4, "
        "zoom_<percent>, scale_<size>. Text: identity, head, tail, head_tail, each optionally "
        "_<max_length>.",
    )
    tta_merge: Literal["mean", "geometric", "max"] = Field(
        "mean", description="How views merge: mean or max of probabilities, geometric (log space)."
    )
    tta_oof: bool = Field(
        False, description="Also predict the OOF rows with the views (oof_tta.parquet, tta.json)."
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: predict under bf16 autocast (infer and the offline notebook), about "
        "twice as fast on GPUs with bf16; probabilities move in the third decimal.",
    )


class PseudoConfig(Section):
    """Pseudo labels on the test set, made per fold so no student sees its own fold through them."""

    teachers: list[str] = Field(
        default_factory=list, description="Teacher experiments; empty: train.experiment."
    )
    round: int = Field(1, ge=1, description="Round number: outputs/pseudo/<round>/.")
    source: Literal["per_fold", "ensemble"] = Field(
        "per_fold",
        description="per_fold: fold k's students learn from fold k's teachers (no leak); "
        "ensemble: all-fold averages, for full-fit students only.",
    )
    mode: Literal["soft", "hard"] = Field("soft", description="Soft probabilities or hard labels.")
    threshold: float | list[float] | None = Field(
        None,
        description="Minimum confidence: one value, or one per predicted class (binary: "
        "[negative, positive]), or one per label (multilabel: every label passes its own); "
        "null: all rows.",
    )
    max_fraction: float = Field(1.0, gt=0, le=1, description="Keep at most this fraction of rows.")
    balance: bool = Field(
        False,
        description="Keep the same number of rows per predicted class (binary, multiclass; none "
        "when only one class is predicted); refused for multilabel and regression.",
    )
    weight: float = Field(1.0, gt=0, description="Loss weight of a pseudo-labelled row.")
    allow_test: bool = Field(
        True, description="false where the competition forbids pseudo-labelling the test set."
    )
    rounds: int = Field(1, ge=1, description="`medalist run`: pseudo -> train rounds at most.")


class SubmissionConfig(Section):
    name: str | None = Field(
        None, description="File name under submissions/ (default: experiment)."
    )
    kind: Literal["auto", "label", "probability"] = Field(
        "auto", description="Write class labels or probabilities; auto follows the sample file."
    )


class TrackingConfig(Section):
    trackers: list[Literal["wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Trackers the train stage also logs to (each when installed): wandb, mlflow. "
        "The CSV logs are always written: outputs/<experiment>/log.csv and outputs/ledger.csv.",
    )
    project: str = Field("medalist", description="The wandb project / mlflow experiment name.")
    offline: bool = Field(
        True,
        description="Write the tracker runs to files under tracking.dir, no server (wandb's "
        "offline mode, an mlflow file store); false: each tracker's own settings (WANDB_*, "
        "MLFLOW_TRACKING_URI).",
    )
    dir: str | None = Field(
        None, description="Where offline runs go (default: <outputs>/tracking)."
    )


ModalityName = Literal[tuple(MODALITIES)]  # the registered modalities' names


def section(cls: type[Section], *, retrains: bool):
    """A section of :class:`Config`; ``retrains``: whether changing it trains the folds again
    (the train stage's fingerprint, ``medalist.layout.training_hash``, covers it)."""
    return Field(default_factory=cls, json_schema_extra={"retrains": retrains})


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
    train: TrainConfig = section(TrainConfig, retrains=True)
    tricks: TricksConfig = section(TricksConfig, retrains=True)
    infer: InferConfig = section(InferConfig, retrains=False)
    pseudo: PseudoConfig = section(PseudoConfig, retrains=False)
    submission: SubmissionConfig = section(SubmissionConfig, retrains=False)
    ensemble: EnsembleConfig = section(EnsembleConfig, retrains=False)
    kaggle: KaggleConfig = section(KaggleConfig, retrains=False)
    tracking: TrackingConfig = section(TrackingConfig, retrains=False)
    stages: list[Literal["folds", "train", "infer", "pseudo", "submission"]] = Field(
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
        if self.train.pseudo_round is not None and not self.pseudo.allow_test:
            raise ValueError("train.pseudo_round: pseudo.allow_test is false (the rules forbid it)")
        if self.train.folds and -1 in self.train.folds and len(self.train.folds) > 1:
            raise ValueError("train.folds: [-1] (full fit) cannot be combined with other folds")
        return self

    def _check_text(self) -> None:
        if not self.text.backbone:
            raise ValueError("text.backbone: modality text needs a local model folder")
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

    def hash(self) -> str:
        """A short, stable hash of the resolved config (key order independent)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def training_sections() -> tuple[str, ...]:
    """The :class:`Config` fields whose change trains the folds again, in field order."""
    return tuple(
        name
        for name, field in Config.model_fields.items()
        if (field.json_schema_extra or {}).get("retrains")
    )
