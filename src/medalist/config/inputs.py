"""The sections of the modalities' inputs and models: images and their timm model, text and its
transformers backbone, masked-LM pretraining.
"""

from __future__ import annotations

from string import Formatter
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

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

    QLoRA (Dettmers et al., "QLoRA", 2023; ``quantize``) keeps the fixed backbone quantized in
    GPU memory through bitsandbytes (4-bit NF4 with double quantisation: about half a byte per
    weight of its linear layers) while the adapters and the head train in float32.
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
    quantize: Literal["4bit", "8bit"] | None = Field(
        None,
        description="QLoRA: load the fixed backbone quantized by bitsandbytes, 4bit (NF4, double "
        "quantisation, bf16 compute) or 8bit (LLM.int8); the adapters and the head stay float32. "
        "Needs a CUDA device and bitsandbytes (pip install 'medalist[llm]'), in infer and the "
        "offline bundle too; null: the backbone in its own dtype.",
    )

    @model_validator(mode="after")
    def _check(self) -> LoraConfig:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("text.lora.target_modules: empty; name layers, all-linear or null")
        if self.quantize is not None and not self.enabled:
            raise ValueError(
                f"text.lora.quantize: {self.quantize} quantizes a backbone that stays fixed, which "
                "only LoRA trains around; set text.lora.enabled=true or text.lora.quantize=null"
            )
        return self


class TemplateConfig(Section):
    """A prompt built from several columns of a row, each column cut to its own token budget.

    ``format`` is a Python format string whose named fields are the row's columns
    (``"Prompt: {prompt}\\nA: {response_a}\\nB: {response_b}"``; ``{{`` and ``}}`` are literal
    braces). The fixed text between the fields is tokenised once, each column on its own, and
    each column is truncated to its share before the pieces are joined, so that a long first
    column cannot push the later ones out of ``text.max_length``.

    Shares: a column with a budget is given its budget; the columns without one share equally
    what is left of ``text.max_length`` after the special tokens, the fixed text and the budgets.
    A row's column that is shorter than its share gives the rest away: the columns that are still
    cut share it equally (max-min fair water-filling; a remainder of single tokens goes to them
    in template order), and so does what the budgets leave unclaimed when every column has one.
    A row never exceeds ``text.max_length``. Each column is cut as ``text.truncation`` says
    (``head``, ``tail``, ``head_tail``), or as a TTA truncation view says.
    """

    format: str | None = Field(
        None,
        description="Python format string over the row's columns, e.g. 'Prompt: {prompt}\\nA: "
        "{response_a}\\nB: {response_b}' ({{ and }}: literal braces; no conversions or format "
        "specs); null: text_column (+ pair_column, context_columns).",
    )
    budgets: dict[str, Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict,
        description="Tokens per column, e.g. {prompt: 256, response_a: 512, response_b: 512}; "
        "the columns without one share the rest of max_length equally; what a short column "
        "leaves goes to the columns still cut.",
    )

    def parts(self) -> list[tuple[str, str | None]]:
        """``(fixed text, column)`` pairs in order; the last column is None (the text after
        the last field). Raises ValueError naming ``text.template.format``."""
        if self.format is None:
            return []
        try:
            parsed = list(Formatter().parse(self.format))
        except ValueError as exc:
            raise ValueError(f"text.template.format: not a format string ({exc})") from None
        parts, text = [], ""
        for literal, field, spec, conversion in parsed:
            text += literal  # "{{" comes as a piece of its own
            if field is None:
                continue
            if not field.strip() or field.isdigit():
                raise ValueError(
                    f"text.template.format: {{{field}}} is positional; name a column, e.g. "
                    "{prompt}"
                )
            if conversion is not None or spec:
                raise ValueError(
                    f"text.template.format: the field {field} has a conversion or a format "
                    f"spec, which a template of token ids cannot apply; write {{{field}}}"
                )
            parts.append((text, field))
            text = ""
        parts.append((text, None))
        return parts

    @property
    def fields(self) -> list[str]:
        """The columns the template names, in order."""
        return [field for _, field in self.parts() if field is not None]

    @model_validator(mode="after")
    def _check(self) -> TemplateConfig:
        if self.format is None:
            if self.budgets:
                raise ValueError("text.template.budgets: set text.template.format first")
            return self
        fields = self.fields
        if not fields:
            raise ValueError("text.template.format: names no column; write fields such as {prompt}")
        twice = sorted({f for f in fields if fields.count(f) > 1})
        if twice:
            raise ValueError(
                f"text.template.format: {{{twice[0]}}} appears more than once; name each column "
                "once"
            )
        unknown = [c for c in self.budgets if c not in fields]
        if unknown:
            raise ValueError(
                f"text.template.budgets: '{unknown[0]}' is not a field of text.template.format "
                f"(its fields: {fields})"
            )
        return self


class SwapConfig(Section):
    """The ``swap`` TTA view of a pairwise task: two columns exchanged, the classes permuted back.

    In a preference task (prompt, response_a, response_b -> winner_model_a, winner_model_b,
    winner_tie) the model sees each row again with the responses exchanged, and its prediction
    for winner_model_a is read from its output for winner_model_b (and the reverse, a tie stays
    a tie); merged with the other views as any view is (``infer.tta: [identity, swap]``).

    What the swap does to the outputs, by task: multiclass, the named class pairs exchange
    places; multilabel, the named target columns (the outputs' names) exchange places; binary,
    the two classes exchange (``{0: 1}``: the logit is negated, p becomes 1 - p) or, with
    ``{}``, the prediction stands as it is; regression is refused (a value has no classes to
    exchange).
    """

    columns: list[str] = Field(
        default_factory=list,
        description="The two columns the swap view exchanges, e.g. [response_a, response_b]: "
        "fields of text.template.format, or among text_column, pair_column, context_columns; "
        "empty: no swap view.",
    )
    classes: dict[str, str] | None = Field(
        None,
        description="Class pairs the swap exchanges, e.g. {winner_model_a: winner_model_b} "
        "(each pair once or both ways; classes not named stay); multilabel: target columns; {}: "
        "the outputs do not change. Required with columns.",
    )

    @field_validator("classes", mode="before")
    @classmethod
    def _as_text(cls, value):
        # Classes are compared as text, as the task encodes them (YAML reads {0: 1} as ints).
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _check(self) -> SwapConfig:
        if self.columns and (len(self.columns) != 2 or self.columns[0] == self.columns[1]):
            raise ValueError(
                f"text.swap.columns: {self.columns}; name two different columns, e.g. "
                "[response_a, response_b]"
            )
        if self.columns and self.classes is None:
            raise ValueError(
                "text.swap.classes: name the class pairs the swap exchanges, e.g. "
                "{winner_model_a: winner_model_b}, or {} when the outputs do not change"
            )
        if self.classes is not None and not self.columns:
            raise ValueError("text.swap.classes: set text.swap.columns (the two columns) first")
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
    template: TemplateConfig = Field(
        default_factory=TemplateConfig,
        description="A prompt over several columns with per-column token budgets.",
    )
    swap: SwapConfig = Field(
        default_factory=SwapConfig,
        description="The swap TTA view of a pairwise task (two columns exchanged).",
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
        self._check_template()
        self._check_swap()
        return self

    def _check_template(self) -> None:
        if self.template.format is None:
            return
        # A template names every column of the row; a pair or context would be a second way.
        for key in ("pair_column", "context_columns"):
            if getattr(self, key):
                raise ValueError(
                    f"text.{key}: not with text.template.format (the template names every "
                    "column and where it goes); write its column(s) into the template as fields"
                )
        budgets = sum(self.template.budgets.values())
        if budgets >= self.max_length:
            raise ValueError(
                f"text.template.budgets: {budgets} tokens in all leave none of text.max_length "
                f"{self.max_length} for the template's fixed text and special tokens"
            )

    def _check_swap(self) -> None:
        if not self.swap.columns:
            return
        if self.template.format is not None:
            where, columns = "the fields of text.template.format", self.template.fields
        else:
            where = "text.text_column, text.pair_column, text.context_columns"
            columns = [self.text_column, self.pair_column, *self.context_columns]
        missing = [c for c in self.swap.columns if c not in columns]
        if missing:
            raise ValueError(
                f"text.swap.columns: '{missing[0]}' is not among {where} ({columns}); the swap "
                "view exchanges two of the model's input columns"
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
