"""The sections of the stages that run models: training, inference, pseudo labels, and the
experiment trackers that watch training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from medalist.config.section import Section


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
    seeds: list[int] = Field(
        default_factory=list,
        description="Train once per seed (same folds) into outputs/<experiment>@s<seed>/, then "
        "average them in outputs/<experiment>/ (CV mean, std and the averaged model's CV); "
        "empty: one run with train.seed.",
    )
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

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"train.seeds: each seed once, got {seeds}")
        return seeds


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
        False,
        description="Also predict the OOF rows with the views (oof_tta.parquet, tta.json; masks: "
        "oof_tta.masks.safetensors, and the post-processing the submission applies is searched "
        "on them).",
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
