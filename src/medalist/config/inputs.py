"""The sections of the modalities' inputs and models: images and their timm model, text and its
transformers backbone, masked-LM pretraining.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from medalist.config.section import Section


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
        description="Recompute activations in the backward pass (timm's set_grad_checkpointing): "
        "less memory, about 30% more compute (text models: text.gradient_checkpointing).",
    )
    drop_rate: float = Field(0.0, ge=0, lt=1, description="Dropout before the classifier.")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="Stochastic depth rate.")


class LoraConfig(Section):
    """Low-rank adapters (Hu et al., "LoRA", 2021) on the text backbone, through peft.

    The backbone's own weights stay fixed; each targeted linear layer W gets W + (alpha / r) B A
    with A (r x in) and B (out x r) trained (B starts at zero, so training starts from the
    backbone as it is). The head outside the backbone trains in full. r 8-64 and alpha 2r are
    usual for 2B-9B decoders; dropout 0.05-0.1.
    """

    enabled: bool = Field(
        False,
        description="Train adapters instead of the backbone (needs peft: pip install "
        "'medalist[llm]'); fold weight files then hold only the adapters and the head.",
    )
    r: int = Field(16, ge=1, description="Rank of each adapter (8-64 is usual).")
    alpha: float = Field(
        32.0, gt=0, description="Scale numerator: the update is (alpha / r) B A (2r is usual)."
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Names (or name suffixes) of the linear layers to adapt, e.g. [q_proj, k_proj, "
        "v_proj, o_proj]; all-linear: every linear layer of the backbone; null: peft's default "
        "for the architecture (the query and value projections for Llama, Qwen2, Gemma, Mistral, "
        "BERT).",
    )

    @model_validator(mode="after")
    def _check(self) -> LoraConfig:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("text.lora.target_modules: empty; name layers, all-linear or null")
        return self


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
    pooling: Literal["cls", "mean", "attention", "last"] = Field(
        "mean",
        description="How token states become one vector: first token, masked mean, attention, or "
        "the last real token (decoder models: the only one that has seen the whole text; cls is "
        "refused for them).",
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
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="Low-rank adapters instead of full fine-tuning."
    )

    @model_validator(mode="after")
    def _check(self) -> TextConfig:
        if self.lora.enabled:
            # Under LoRA every backbone weight is fixed: a re-initialised layer would stay random,
            # and freezing the bottom layers is already done (adapters are placed by target_modules).
            for key in ("reinit_layers", "freeze_layers"):
                if getattr(self, key):
                    raise ValueError(
                        f"text.{key}: not with text.lora.enabled (the backbone is frozen and "
                        f"only its adapters train); set text.{key}=0"
                    )
        return self


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
